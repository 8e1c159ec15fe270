// normspec/engine/odometer.hpp
// Walks a range of a loop nest's flat index, keeping the offsets into x, y, the statistics and
// the parameters current without a division per step.
#ifndef NORMSPEC_ENGINE_ODOMETER_HPP
#define NORMSPEC_ENGINE_ODOMETER_HPP

#include "plan.hpp"

#include <algorithm>
#include <vector>

namespace normspec::engine {

struct offsets {
    index_t x = 0, y = 0, stat = 0, param = 0, dy = 0;
};

inline index_t count_of(const loop_dims& dims) {
    index_t n = 1;
    for (auto& d : dims) n *= d.extent;
    return n;
}

/// The loops outside the `inner` innermost ones of dims, sorted into kept (K) and reduced (R),
/// each in loop order.
struct outer_loops {
    loop_dims K, R;
};
inline outer_loops outer_of(const loop_dims& dims, std::size_t inner) {
    outer_loops o;
    for (std::size_t i = 0; i + inner < dims.size(); ++i) (dims[i].reduced ? o.R : o.K).push_back(dims[i]);
    return o;
}

/// Calls f(offsets) for flat indices [begin, end) of dims (row-major, last dim fastest).
template <class F>
void for_range(const loop_dims& dims, index_t begin, index_t end, F&& f) {
    if (begin >= end) return;
    const int n = static_cast<int>(dims.size());
    std::array<index_t, max_rank + 1> idx{};
    offsets o;
    index_t rest = begin;
    for (int d = n - 1; d >= 0; --d) {
        idx[d] = rest % dims[d].extent;
        rest /= dims[d].extent;
        o.x += idx[d] * dims[d].sx;
        o.y += idx[d] * dims[d].sy;
        o.stat += idx[d] * dims[d].sstat;
        o.param += idx[d] * dims[d].sparam;
        o.dy += idx[d] * dims[d].sdy;
    }
    for (index_t i = begin; i < end; ++i) {
        f(o);
        for (int d = n - 1; d >= 0; --d) {
            const loop_dim& L = dims[d];
            if (++idx[d] < L.extent) {
                o.x += L.sx;
                o.y += L.sy;
                o.stat += L.sstat;
                o.param += L.sparam;
                o.dy += L.sdy;
                break;
            }
            idx[d] = 0;
            o.x -= (L.extent - 1) * L.sx;
            o.y -= (L.extent - 1) * L.sy;
            o.stat -= (L.extent - 1) * L.sstat;
            o.param -= (L.extent - 1) * L.sparam;
            o.dy -= (L.extent - 1) * L.sdy;
        }
    }
}

/// Rows of n values to a block of a column sweep: 64, fewer (down to 8) past 2048 values a row,
/// so that a block of float stays within 512 KiB (L2); a column group's share of it (64 rows of
/// four vectors) stays in L1 for a second pass. (At most 16 K values a block, as before the
/// statistics took one pass: BatchNorm NHWC 50x2048x7x7 at one thread, 8 rows a block, measured
/// 1.4-1.6x the time of 64 forward and 1.05x backward, same run.)
inline index_t column_block_rows(index_t n) { return std::clamp<index_t>(131072 / std::max<index_t>(n, 1), 8, 64); }

/// Flat indices [begin, end) of dims in blocks of `per`: f(block, count) with item(offsets) of
/// each index. buf is reused storage.
template <class Item, class Make, class F>
void for_blocks(const loop_dims& dims, index_t begin, index_t end, index_t per, std::vector<Item>& buf, Make&& item, F&& f) {
    buf.resize(std::size_t(per));
    index_t c = 0;
    for_range(dims, begin, end, [&](const offsets& o) {
        buf[std::size_t(c++)] = item(o);
        if (c == per) f(static_cast<const Item*>(buf.data()), per), c = 0;
    });
    if (c > 0) f(static_cast<const Item*>(buf.data()), c);
}

/// [begin, end) of part t of n equal parts of a range of size total.
inline std::pair<index_t, index_t> split(index_t total, int t, int n) {
    return {total * t / n, total * (t + 1) / n};
}

}  // namespace normspec::engine

#endif  // NORMSPEC_ENGINE_ODOMETER_HPP

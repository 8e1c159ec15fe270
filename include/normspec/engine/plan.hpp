// normspec/engine/plan.hpp
// From a spec and a tensor's names, extents and strides to loops:
//   bind():      each tensor axis is reduced or kept (a grouped axis splits into a kept group index
//                and a reduced member index); statistic and parameter layouts; run-time checks;
//   make_plan(): loop dims ordered by stride, adjacent dims of the same role coalesced, separately
//                for the statistics sweep and the normalize sweep. Every norm on every layout becomes
//                a short pattern such as [keep, reduce] (rows) or [reduce, keep, reduce] (planes).
#ifndef NORMSPEC_ENGINE_PLAN_HPP
#define NORMSPEC_ENGINE_PLAN_HPP

#include "../spec.hpp"
#include "strided.hpp"

#include <algorithm>
#include <cstdlib>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace normspec::engine {

/// the axis names a tensor is bound with, in layout order
using axis_views = fixed_vector<std::string_view, max_rank>;

/// How one spec meets one tensor's names and extents.
struct binding {
    int rank = 0;
    axis_views names;
    std::array<index_t, max_rank> shape{};
    std::array<bool, max_rank> reduced{};
    int group_dim = -1;  // tensor dim split by groups<>, or -1
    index_t groups = 1;
    fixed_vector<int, max_rank> stat_dims;  // tensor dims indexing the statistics, layout order
    extents stat_shape;
    axis_names stat_names;
    fixed_vector<int, max_rank> param_dims;  // tensor dim of each parameter axis, canonical order
    extents param_shape;
    index_t reduction_count = 1, stat_count = 1, param_count = 1;
};

inline std::string tensor_names(const axis_views& names) {
    std::string s = "<";
    for (auto& n : names) s += (s.size() > 1 ? "," : "") + std::string(n);
    return s + ">";
}

[[noreturn]] inline void fail(const std::string& what) { throw std::invalid_argument("normspec: " + what); }

inline binding bind(const spec_desc& spec, const axis_views& names, const index_t* shape,
                    int rank, index_t runtime_groups = 0) {
    binding b;
    if (static_cast<int>(names.size()) != rank)
        fail("the names " + tensor_names(names) + " give " + std::to_string(names.size()) + " names to a tensor of rank " +
             std::to_string(rank));
    if (rank > max_rank) fail("tensors of rank > 8 are not supported");
    b.rank = rank;
    b.names = names;
    for (int d = 0; d < rank; ++d) {
        b.shape[d] = shape[d];
        for (int e = 0; e < d; ++e)
            if (names[e] == names[d]) fail("the names " + tensor_names(names) + " give axis " + std::string(names[d]) + " twice");
    }
    auto dim_of = [&](std::string_view axis, const char* clause) {
        for (int d = 0; d < rank; ++d)
            if (names[d] == axis) return d;
        fail(std::string(clause) + "<" + std::string(axis) + "> names an axis that the tensor " + tensor_names(names) +
             " does not have");
    };
    for (auto a : spec.reduce) b.reduced[dim_of(a, "reduce")] = true;
    const char* pclause = spec.kind == param_kind::scale ? "scale" : "affine";
    for (auto a : spec.params) {
        int d = dim_of(a, pclause);
        b.param_dims.push_back(d);
        b.param_shape.push_back(shape[d]);
        b.param_count *= shape[d];
    }
    if (!spec.group_axis.empty()) {
        b.group_dim = dim_of(spec.group_axis, "groups");
        const std::string clause = "groups<" + std::string(spec.group_axis) + ", " +
                                   (spec.static_groups ? std::to_string(spec.static_groups) : std::string("dynamic")) + ">";
        index_t g = spec.static_groups ? index_t(spec.static_groups) : runtime_groups;
        if (spec.static_groups && runtime_groups && runtime_groups != g)
            fail(clause + " fixes G = " + std::to_string(g) + " but the call gives " + std::to_string(runtime_groups) + " groups");
        if (g <= 0) fail(clause + " needs the number of groups at run time (num_groups(G), or --groups G), got " + std::to_string(g));
        const index_t e = shape[b.group_dim];
        if (e % g != 0)
            fail(clause + ": G = " + std::to_string(g) + " does not divide axis " + std::string(spec.group_axis) + " of extent " +
                 std::to_string(e));
        b.groups = g;
    } else if (runtime_groups) {
        fail("a number of groups (" + std::to_string(runtime_groups) + ") was given to a norm without groups<A, G>");
    }
    for (int d = 0; d < rank; ++d) {
        if (b.reduced[d]) {
            const index_t e = d == b.group_dim ? shape[d] / b.groups : shape[d];
            b.reduction_count *= e;
        }
        if (!b.reduced[d] || d == b.group_dim) {
            const index_t e = d == b.group_dim ? b.groups : shape[d];
            b.stat_dims.push_back(d);
            b.stat_shape.push_back(e);
            b.stat_names.push_back(d == b.group_dim ? std::string_view("G") : names[d]);
            b.stat_count *= e;
        }
    }
    if (b.reduction_count == 0) {
        std::string zero;
        for (int d = 0; d < rank; ++d)
            if (b.reduced[d] && shape[d] == 0) zero = std::string(names[d]);
        std::string across;
        for (auto a : spec.reduce) across += (across.empty() ? "" : ",") + std::string(a);
        fail("empty reduction: reduce<" + across + "> spans no element (axis " + zero + " has extent 0)");
    }
    return b;
}

/// The same for names in a std::vector (the dynamic front end, the CLI)
inline binding bind(const spec_desc& spec, const std::vector<std::string_view>& names, const index_t* shape, int rank,
                    index_t runtime_groups = 0) {
    if (names.size() > std::size_t(max_rank))
        fail(std::to_string(names.size()) + " axis names: tensors of rank > 8 are not supported");
    return engine::bind(spec, axis_views(names.begin(), names.end()), shape, rank, runtime_groups);
}

/// Throws unless `actual` (rank `actual_rank`) has the extents `expected` on the axes `axes`:
/// "gamma axis C has extent 32 but the tensor's axis C has extent 64".
inline void check_extents(std::string_view what, const axis_names& axes, const extents& expected, const index_t* actual,
                          int actual_rank, std::string_view whose) {
    auto want = [&] {
        std::string w;
        for (auto& a : axes) (w += w.empty() ? "" : ",") += a;
        return w;
    };
    if (actual_rank != static_cast<int>(expected.size()))
        fail(std::string(what) + " has " + std::to_string(actual_rank) + " dimensions but must have " +
             std::to_string(expected.size()) + " (axes <" + want() + ">)");
    for (std::size_t i = 0; i < expected.size(); ++i)
        if (actual[i] != expected[i]) {
            const std::string axis(axes[i]);
            fail(std::string(what) + " axis " + axis + " has extent " + std::to_string(actual[i]) + " but " + std::string(whose) +
                 " axis " + axis + " has extent " + std::to_string(expected[i]));
        }
}

inline axis_names param_axis_names(const binding& b) {
    axis_names v;
    for (int d : b.param_dims) v.push_back(b.names[d]);
    return v;
}

/// A loop's name in a printed plan ("N*H*W", "G(C)"), held in place so that loop dims copy
/// without allocating; past 63 characters it ends in "...".
class loop_label {
public:
    loop_label() = default;
    loop_label(std::string_view s) { *this += s; }
    loop_label(const std::string& s) : loop_label(std::string_view(s)) {}
    loop_label(const char* s) : loop_label(std::string_view(s)) {}
    loop_label& operator+=(std::string_view s) {
        for (char c : s) {
            if (n_ == cap) {
                s_[cap - 3] = s_[cap - 2] = s_[cap - 1] = '.';
                break;
            }
            s_[n_++] = c;
        }
        return *this;
    }
    std::string_view view() const { return {s_, n_}; }
    std::string str() const { return std::string(view()); }

private:
    static constexpr std::size_t cap = 63;
    char s_[cap] = {};
    unsigned char n_ = 0;
};

/// One loop of a nest: extent and the step it makes in x, y, the statistics and the parameters.
struct loop_dim {
    index_t extent = 1, sx = 0, sy = 0, sstat = 0, sparam = 0;
    bool reduced = false;
    loop_label name;
    index_t sdy = 0;  // the step in dy (backward); x's step when there is no dy
};

/// A loop nest: at most one loop per tensor dim, plus one where groups split a dim
using loop_dims = fixed_vector<loop_dim, max_rank + 1>;

struct plan {
    loop_dims stats;  // statistics sweep, outer to inner
    loop_dims apply;  // normalize sweep, outer to inner
    loop_dims fused;  // both sweeps per kept index: every stride consistent
    loop_dims kept;   // kept dims before coalescing: maps statistics to parameters
    bool fold = false;            // gamma/beta folded into per-statistic scale and shift
    bool has_params = false;

    /// "[reduce N, keep C, reduce H*W]"
    std::string pattern() const {
        std::string s = "[";
        for (auto& d : stats) s += (s.size() > 1 ? ", " : "") + std::string(d.reduced ? "reduce " : "keep ") + d.name.str();
        return s + "]";
    }
};

namespace detail {
inline index_t abs_stride(index_t s) { return s < 0 ? -s : s; }

inline loop_dims coalesce(loop_dims dims, bool by_role, bool by_param) {
    // by decreasing |x stride|, ties in their order: an insertion sort, as there are at most
    // max_rank + 1 dims (std::stable_sort allocates a buffer: without it a 1x16 LayerNorm forward
    // measured 1.2x faster, same run)
    for (std::size_t i = 1; i < dims.size(); ++i)
        for (std::size_t j = i; j > 0 && abs_stride(dims[j - 1].sx) < abs_stride(dims[j].sx); --j) std::swap(dims[j - 1], dims[j]);
    loop_dims out;
    for (auto& d : dims) {
        if (!out.empty()) {
            loop_dim& o = out.back();
            const bool fits = o.sx == d.sx * d.extent && o.sy == d.sy * d.extent && o.sstat == d.sstat * d.extent &&
                              o.sdy == d.sdy * d.extent && (!by_param || o.sparam == d.sparam * d.extent) &&
                              (!by_role || o.reduced == d.reduced);
            if (fits) {
                o.extent *= d.extent;
                o.sx = d.sx;
                o.sy = d.sy;
                o.sstat = d.sstat;
                o.sparam = d.sparam;
                o.sdy = d.sdy;
                o.name += "*";
                o.name += d.name.view();
                continue;
            }
        }
        out.push_back(d);
    }
    if (out.empty()) out.push_back(loop_dim{1, 0, 0, 0, 0, true, "1", 0});
    return out;
}
}  // namespace detail

/// x and y (and dy, for the backward pass) have the binding's extents; parameters and statistics
/// are packed row-major (parameters in the spec's canonical axis order, statistics in layout order).
template <class TX, class TY>
plan make_plan(const binding& b, const strided<TX>& x, const strided<TY>& y, bool has_params,
               const index_t* dy_strides = nullptr) {
    std::array<index_t, max_rank> stat_stride{}, param_stride{};
    {
        index_t s = 1;
        for (int i = int(b.stat_dims.size()) - 1; i >= 0; --i) {
            stat_stride[b.stat_dims[i]] = s;
            s *= b.stat_shape[i];
        }
        s = 1;
        for (int i = int(b.param_dims.size()) - 1; i >= 0; --i) {
            param_stride[b.param_dims[i]] = s;
            s *= b.param_shape[i];
        }
    }
    loop_dims dims;
    for (int d = 0; d < b.rank; ++d) {
        const std::string name(b.names[d]);
        if (d == b.group_dim) {
            const index_t m = b.shape[d] / b.groups;  // members per group
            const index_t sdy = dy_strides ? dy_strides[d] : x.strides[d];
            if (b.groups > 1)
                dims.push_back({b.groups, x.strides[d] * m, y.strides[d] * m, stat_stride[d], param_stride[d] * m, false,
                                "G(" + name + ")", sdy * m});
            if (m > 1) dims.push_back({m, x.strides[d], y.strides[d], 0, param_stride[d], true, name + "/G", sdy});
        } else if (b.shape[d] > 1) {
            dims.push_back({b.shape[d], x.strides[d], y.strides[d], b.reduced[d] ? 0 : stat_stride[d],
                            has_params ? param_stride[d] : 0, b.reduced[d], name, dy_strides ? dy_strides[d] : x.strides[d]});
        }
    }
    plan p;
    p.has_params = has_params;
    p.fold = has_params;
    for (auto& d : dims)
        if (d.reduced && d.sparam != 0) p.fold = false;
    p.stats = detail::coalesce(dims, true, false);
    for (auto& d : dims)
        if (!d.reduced) p.kept.push_back(d);
    p.fused = detail::coalesce(dims, true, has_params);  // keeps parameter strides: the fold reads them
    if (p.fold)
        for (auto& d : dims) d.sparam = 0;
    p.apply = detail::coalesce(dims, false, has_params && !p.fold);
    return p;
}

}  // namespace normspec::engine

#endif  // NORMSPEC_ENGINE_PLAN_HPP

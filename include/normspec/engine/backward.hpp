// normspec/engine/backward.hpp
// The backward pass for any spec on any layout, from the same plan as the forward pass. Per
// statistic s over its N values, with gy = dy * gamma and xhat = (x - mean) * rstd (x * rstd for
// rms):
//   batch statistics:     dx = rstd * (gy - mean_s(gy) - xhat * mean_s(gy * xhat))   (rms: no mean_s(gy))
//   running statistics:   dx = rstd * gy                           (evaluation: they are constants)
//   dgamma[p] = sum of dy * xhat,  dbeta[p] = sum of dy,  over the elements with parameter index p.
// Per kept index: one sweep takes the two reductions and, in the same pass, dgamma and dbeta into
// per-thread buffers (merged once at the end); a second sweep writes dx. Out of cache, kept
// indices whose runs are contiguous form a pipeline instead: the previous one's dx while this
// one's sums are taken (pipelined_runs_dx; channels-last columns: columns_kernel). With batch statistics
// the exact mean is recovered from x and the saved (rounded) one: for columns and planes in the
// reduction sweep itself (its sums are then corrected), for rows in a cheap sweep of its own.
// GroupNorm's gradients are per channel while its statistics are per group: the parameter index
// comes from the plan's parameter strides, the statistic index from its statistic strides.
#ifndef NORMSPEC_ENGINE_BACKWARD_HPP
#define NORMSPEC_ENGINE_BACKWARD_HPP

#include "forward.hpp"

#include <optional>

namespace normspec::engine {

template <class T>
struct backward_args {
    strided<const T> x, dy;
    strided<T> dx;
    const T* gamma = nullptr;  // packed, canonical parameter order; nullptr: none (or 1)
    const T* mean = nullptr;   // saved statistics, packed in statistic layout (mean: nullptr for rms)
    const T* rstd = nullptr;
    T* dgamma = nullptr;  // packed, canonical parameter order; nullptr: not wanted
    T* dbeta = nullptr;
    bool constant_stats = false;  // evaluation with running statistics
    int threads = 0;
};

namespace detail {

/// Whether dx goes out with streaming stores: once x, dy and dx together (`bytes`) pass 3/8 of the
/// last-level cache. Written through the cache, dx's lines evict x and dy before the second sweep
/// reads them again (the L3 is shared with the other cores of its complex), and each line of dx
/// is first read from memory unless still in cache. 24 MiB (8x256x32x32), BatchNorm and
/// GroupNorm, NCHW and NHWC: 1.2-1.7x faster streaming at one thread, 1.1-1.2x at two. Old and new
/// engines in one process, each its own dx, each in both places, two runs, with dx left in L3 by
/// the call before and with it flushed before each call: 15.7 MiB (1x320x64x64), BatchNorm,
/// GroupNorm and InstanceNorm, NCHW and NHWC, streaming took 0.63-0.89 of the time at one thread
/// with dx in L3 and 0.57-0.88 flushed, 0.69-1.07 and 0.60-0.89 at two; 12 MiB (1x320x56x56)
/// 0.67-0.95 at one thread with dx in L3 but 0.93-1.20 at two, 8.8 MiB 0.90-1.15 and 1.04-1.27
/// (0.69-0.89 flushed), so those stay cached. (The bound was half the cache, where an earlier
/// measurement, streaming against not in one run, had put 15.7 MiB at 0.7-1.2x.)
inline bool stream_dx(double bytes) { return bytes > 0.375 * llc_bytes(); }

/// A mean as T's value nearest to it and what rounding to that lost: (x - hi) - lo is x - mean
/// to T's precision, where x - T(mean) alone would carry the rounding into every xhat.
template <class T>
struct mean_pair {
    T hi, lo;
    explicit mean_pair(double m) : hi(T(m)), lo(T(m - double(hi))) {}
};

/// The exact mean of a statistic whose mean was saved rounded to T, recovered in the sweep that
/// takes the sums: with residue = sum(x - saved) over its N values, mean = saved + delta, delta =
/// residue / N. A sum taken about the saved mean moves to the exact one by
/// sum(w * (x - mean)) * scale = sum(w * (x - saved)) * scale - delta * scale * sum(w)
/// (scale: rstd, for sums of w * xhat).
struct mean_shift {
    double delta, mean;
    mean_shift(double saved, double residue, double inv_n) : delta(residue * inv_n), mean(saved + delta) {}
    double shifted(double about_saved, double weight_sum, double scale = 1.0) const {
        return about_saved - delta * scale * weight_sum;
    }
};

/// What the backward's kernels share for one call.
template <class T>
struct backward_context {
    const spec_desc& spec;
    const backward_args<T>& a;
    loop_dim inner;
    loop_dims R;
    double inv_n;
    index_t group = 1;  // lanes per statistic: 1, or C/G for GroupNorm's channels-last grouped columns
    index_t gstat = 0;  // with group > 1, the statistic step from one group of lanes to the next
    bool stream = false;  // streaming stores for dx (x, dy and dx exceed the last-level cache)
};

/// Per kept index of a columns plan: what each lane normalized with, and its coefficients.
template <class T>
struct column_lanes {
    simd::lanes<T> mhi, mlo, rs, c1, c2;
    simd::lanes<double> mean;
    index_t group = 1;
    simd::lanes<double> grouped;
    /// v with each lane replaced by the sum over its group's lanes (v itself when group == 1)
    const double* group_sums(const double* v) {
        if (group == 1) return v;
        grouped.resize(mean.size());
        for (std::size_t j0 = 0; j0 < mean.size(); j0 += std::size_t(group)) {
            double sum = 0;
            for (std::size_t j = j0; j < j0 + std::size_t(group); ++j) sum += v[j];
            std::fill(grouped.begin() + std::ptrdiff_t(j0), grouped.begin() + std::ptrdiff_t(j0) + group, sum);
        }
        return grouped.data();
    }
    void init(const backward_context<T>& cx, const offsets& kk) {
        const index_t n = cx.inner.extent;
        group = cx.group;
        for (auto* v : {&mhi, &mlo, &rs, &c1, &c2}) v->resize(std::size_t(n));
        mean.resize(std::size_t(n));
        for (index_t j = 0; j < n; ++j) {
            const index_t s = kk.stat + (group > 1 ? (j / group) * cx.gstat : j * cx.inner.sstat);
            mean[j] = cx.a.mean ? double(cx.a.mean[s]) : 0.0;
            const mean_pair<T> m(mean[j]);
            mhi[j] = m.hi, mlo[j] = m.lo;
            rs[j] = cx.a.rstd[s];
        }
    }

    /// The dx coefficients from the sums, and dgamma/dbeta per lane. The sums were taken with the
    /// saved mean, which is rounded to T; residue[j] (nullptr: none) is the sum of x - saved mean
    /// over lane j. The exact mean is the saved one plus delta = residue / N (summed over the
    /// group's lanes), and xhat = xhat' - delta * rstd, so
    /// sum(gy * xhat) = sum(gy * xhat') - delta * rstd * sum(gy), and likewise for dy.
    void finish(const backward_context<T>& cx, const offsets& kk, const double* t1, double* t2, const double* tg_in,
                const double* tb, const double* residue, double* dg, double* db) {
        simd::lanes<double> tg(tg_in, tg_in + mean.size());
        if (residue) {
            const double* r = group_sums(residue);
            for (std::size_t j = 0; j < mean.size(); ++j) {
                const mean_shift m(mean[j], r[j], cx.inv_n);
                t2[j] = m.shifted(t2[j], t1[j], double(rs[j]));
                tg[j] = m.shifted(tg[j], tb[j], double(rs[j]));
                const mean_pair<T> p(m.mean);  // dx then uses the exact mean
                mhi[j] = p.hi, mlo[j] = p.lo;
            }
        }
        simd::lanes<double> g1;  // the statistic's sums, from its group's lanes
        const double* s1 = t1;
        const double* s2 = t2;
        if (group > 1) {
            s1 = group_sums(t1);
            g1.assign(s1, s1 + mean.size());
            s1 = g1.data(), s2 = group_sums(t2);
        }
        for (std::size_t j = 0; j < mean.size(); ++j) {
            c1[j] = cx.spec.rms || cx.a.constant_stats ? T(0) : T(s1[j] * cx.inv_n);
            c2[j] = cx.a.constant_stats ? T(0) : T(s2[j] * cx.inv_n);
            const index_t pi = kk.param + index_t(j) * cx.inner.sparam;
            if (dg) dg[pi] += tg[j];
            if (db) db[pi] += tb[j];
        }
    }
};

using simd::load_at;
using simd::store_at;

/// The sum of x[i] - m over [0, n), in T (four chains), as double: the residue of a mean m that
/// was rounded to T, from which the exact mean is m + residue / N.
template <class T>
inline double residue_of(const T* x, index_t n, T m) {
    return double(simd::fold4(x, n, [&](auto acc, auto v) { return acc + (v - decltype(v)(m)); }));
}

/// lane_sums of rows of NV vectors (the last one Tail: its lanes from n on load 0), the sums in
/// registers through the block, then stored to acc (a slab of wider rows: X, DY, mh and acc from
/// its first lane, acc's three runs still np apart)
template <int NV, bool Tail, class T>
inline void lane_sums_held(const T* X, const T* DY, const offsets* rows, index_t count, const T* mh, index_t n, index_t np, T* acc) {
    using V = simd::vec<T>;
    constexpr index_t L = simd::width<T>;
    const index_t t = n - (NV - 1) * L;  // lanes in the last vector
    auto load = [t](const T* p, int k) __attribute__((always_inline)) {  // k is known once unrolled
        return Tail && k == NV - 1 ? simd::load_first(p + k * L, t) : V::load_unaligned(p + k * L);
    };
    V m[NV], d[NV], q[NV], r[NV];
#pragma GCC unroll 4
    for (int k = 0; k < NV; ++k) m[k] = load(mh, k), d[k] = q[k] = r[k] = V(T(0));
    for (index_t i = 0; i < count; ++i) {
        const T* x = X + rows[i].x;
        const T* dy = DY + rows[i].dy;
#pragma GCC unroll 4
        for (int k = 0; k < NV; ++k) {
            const V dv = load(dy, k), xc = load(x, k) - m[k];
            d[k] += dv, q[k] = xsimd::fma(dv, xc, q[k]), r[k] += xc;
        }
    }
#pragma GCC unroll 4
    for (int k = 0; k < NV; ++k) d[k].store_aligned(acc + k * L), q[k].store_aligned(acc + np + k * L), r[k].store_aligned(acc + 2 * np + k * L);
}

/// The sums of dy, of dy * (x - mh) and of x - mh per lane over rows[0, count) of n lanes each,
/// in T in acc (three runs of np values: n rounded up to a vector), then added to sd, sq, sr in
/// double: a slab of simd::row_vectors vectors at a time down the rows (lane_sums_held), its
/// sums in registers; a row of at most that many vectors is one slab. Each lane's sum is the same
/// sequence of additions in any order of slabs, so the results are those of a row at a time.
/// A row at a time, with the sums in L1 (loaded and stored again at every vector; out of cache
/// the stores hold back the reads: a hand-written sum over 64 channels of 51 MiB read 24-27 GB/s
/// with its sums in memory, 30 in registers), measured on this Zen 5 guest, old and new engines
/// in one process, each in both link places, BatchNorm NHWC backward: 50x2048x7x7 1.03-1.07x the
/// time of slabs at one thread, 1.05-1.07x at two; 8x256x32x32 1.08-1.12x and 1.15-1.17x;
/// GroupNorm-sized rows (2x320x96x96) 1.01-1.06x. (An earlier order, down the block's rows a few
/// lanes at a time as the forward's column_group, had measured 1.1-2.4x the time of a row at a
/// time, the sums alone; the blocks are at most 64 rows, see column_block_rows.)
template <class T>
inline void lane_sums(const T* X, const T* DY, const offsets* rows, index_t count, const T* mh, index_t n, index_t np, T* acc,
                      double* sd, double* sq, double* sr) {
    constexpr index_t L = simd::width<T>;
    constexpr index_t S = simd::row_vectors * L;
    for (index_t j = 0; j < n; j += S) {
        const index_t w = std::min(S, n - j);
        const bool tail = w % L != 0;
        simd::with_count<simd::row_vectors>(int((w + L - 1) / L), [&]<int NV>() {
            if (tail)
                lane_sums_held<NV, true>(X + j, DY + j, rows, count, mh + j, w, np, acc + j);
            else
                lane_sums_held<NV, false>(X + j, DY + j, rows, count, mh + j, w, np, acc + j);
        });
    }
    const T* ad = acc;
    const T* aq = acc + np;
    const T* ar = acc + 2 * np;
    for (index_t j = 0; j < n; ++j) sd[j] += double(ad[j]), sq[j] += double(aq[j]), sr[j] += double(ar[j]);
}

/// Sums over rows [r0, r1) per lane, with the saved mean (column_lanes::finish corrects them to
/// the exact one): t1 = sum gy, t2 = sum gy * xhat, tg = sum dy * xhat, tb = sum dy and (tr not
/// nullptr) the residue sum x - mean. gamma is constant down a lane, so only sum dy, sum
/// dy * (x - mean) and sum (x - mean) are taken per element; per block of rows (the float sums
/// of at most 64 rows, then double), a slab at a time (lane_sums). before(rows, count) runs before each
/// block's sums (the pipeline of kept indices: the previous one's dx over the same rows).
template <class T, class Before = no_block_work>
void column_sums(const backward_context<T>& cx, const offsets& kk, const column_lanes<T>& ln, index_t r0, index_t r1, double* t1,
                 double* t2, double* tg, double* tb, double* tr, Before&& before = {}) {
    const index_t n = cx.inner.extent;
    const T* g = cx.a.gamma ? cx.a.gamma + kk.param : nullptr;  // along the lanes, step inner.sparam (0 or 1)
    const index_t sp = cx.inner.sparam;
    const T* X = cx.a.x.data + kk.x;
    const T* DY = cx.a.dy.data + kk.dy;
    simd::lanes<double> sd(std::size_t(n), 0.0), sq(sd), sr(sd);
    const T* mh = ln.mhi.data();  // with the saved mean, which T holds exactly, mlo is 0
    std::vector<offsets> blocks;
    const index_t np = (n + simd::width<T> - 1) / simd::width<T> * simd::width<T>;
    simd::lanes<T> acc(std::size_t(3 * np));
    for_blocks(cx.R, r0, r1, column_block_rows(n), blocks, [](const offsets& r) { return r; }, [&](const offsets* rows, index_t count) {
        before(rows, count);
        lane_sums(X, DY, rows, count, mh, n, np, acc.data(), sd.data(), sq.data(), sr.data());
    });
    for (index_t j = 0; j < n; ++j) {
        const double gj = !g ? 1.0 : double(g[j * sp]), rsj = double(ln.rs[std::size_t(j)]), q = sq[std::size_t(j)] * rsj;
        t1[j] += gj * sd[std::size_t(j)];
        t2[j] += gj * q;
        tg[j] += q;
        tb[j] += sd[std::size_t(j)];
        if (tr) tr[j] += sr[std::size_t(j)];
    }
}

/// dx as one affine map per lane: with xhat = ((x - mh) - ml) * rs,
///   dx = (dy * gw - c1 - xhat * c2) * rs = a * dy + b * (x - mh) + c,
/// a = rs * gw, b = -rs^2 * c2, c = -rs * c1 - b * ml (in double, then rounded to T). x - mh stays
/// exact (float data at 1e4 + N(0,1) need it), and a flat run's vector of dx loads four vectors
/// of per-lane coefficients instead of six, with one subtraction and two multiply-adds.
template <class T>
struct dx_terms {
    T mh, a, b, c;
    dx_terms(T mh_, T ml, T rs, T c1, T c2, T gw) : mh(mh_) {
        const double r = double(rs), bb = -r * r * double(c2);
        a = T(r * double(gw)), b = T(bb), c = T(-r * double(c1) - bb * double(ml));
    }
};

/// dx_terms per lane as four arrays (mh, a, b, c)
template <class T>
struct dx_coefficients {
    simd::lanes<T> mh, a, b, c;
    explicit dx_coefficients(std::size_t n) : mh(n), a(n), b(n), c(n) {}
    /// n lanes from per-lane arrays of the formula's terms
    dx_coefficients(const T* mh_, const T* ml, const T* rs, const T* c1, const T* c2, const T* gw, index_t n)
        : dx_coefficients(static_cast<std::size_t>(n)) {
        for (index_t j = 0; j < n; ++j) set(std::size_t(j), 1, dx_terms<T>(mh_[j], ml[j], rs[j], c1[j], c2[j], gw[j]));
    }
    /// lanes [o, o + count) take t
    void set(std::size_t o, std::size_t count, const dx_terms<T>& t) {
        std::fill_n(mh.begin() + std::ptrdiff_t(o), count, t.mh), std::fill_n(a.begin() + std::ptrdiff_t(o), count, t.a);
        std::fill_n(b.begin() + std::ptrdiff_t(o), count, t.b), std::fill_n(c.begin() + std::ptrdiff_t(o), count, t.c);
    }
    /// the first n lanes, each array repeated past its end (simd::wrapped), for flat runs
    dx_coefficients wrapped(index_t n) const {
        dx_coefficients w(0);
        w.mh = simd::wrapped(mh.data(), n), w.a = simd::wrapped(a.data(), n), w.b = simd::wrapped(b.data(), n), w.c = simd::wrapped(c.data(), n);
        return w;
    }
};

/// dx = a * dy + b * (x - mh) + c (dx_terms), a vector at a time
template <class V>
[[gnu::always_inline]] inline V dx_of(const V& x, const V& dy, const V& mh, const V& a, const V& b, const V& c) {
    return xsimd::fma(dy, a, xsimd::fma(x - mh, b, c));
}

/// dx over positions [b, e) of a flat run of n lanes (lane = position mod n): dx_of with the
/// lane's coefficients; with Stream, streaming stores (no fence) and x and dy prefetched as
/// non-temporal. With Next, the same positions of next_x and next_dy are asked for into L1 along
/// the way (the pipeline of kept indices: the next one's rows, whose sums follow).
template <bool Stream, bool Next, class T>
void flat_dx_sweep(const T* X, const T* DY, T* DX, index_t b, index_t e, index_t n, const dx_coefficients<T>& c, const T* next_x,
                   const T* next_dy) {
    using V = simd::vec<T>;
    auto fh = [=](auto load, const auto& v) {
        if constexpr (Stream) simd::prefetch_stream(X + load.i), simd::prefetch_stream(DY + load.i);
        if constexpr (Next) simd::prefetch_near(next_x + load.i), simd::prefetch_near(next_dy + load.i);
        return dx_of(load(X), load(DY), v[0], v[1], v[2], v[3]);
    };
    // rows of a few whole vectors (BatchNorm NHWC on 64 channels): the coefficients in registers
    const std::array<const T*, 4> held{c.mh.data(), c.a.data(), c.b.data(), c.c.data()};
    if (simd::for_each_row_held<Stream>(DX, b, e, n, held, fh)) return;
    // otherwise each vector's coefficients from the wrapped arrays, at its lane j. Captured by
    // value, as the forward's kernels: through references, every pointer would be reloaded after
    // each (may-alias) vector store
    const T *mh = held[0], *ca = held[1], *cb = held[2], *cc = held[3];
    simd::for_each_flat<Stream>(DX, b, e, n, [=](auto load, index_t j) {
        return fh(load, std::array<V, 4>{V::load_unaligned(mh + j), V::load_unaligned(ca + j), V::load_unaligned(cb + j), V::load_unaligned(cc + j)});
    });
}
/// flat_dx_sweep, streaming or not
template <bool Next = false, class T>
void flat_dx(bool stream, const T* X, const T* DY, T* DX, index_t b, index_t e, index_t n, const dx_coefficients<T>& c,
             const T* next_x = nullptr, const T* next_dy = nullptr) {
    if (stream)
        flat_dx_sweep<true, Next>(X, DY, DX, b, e, n, c, next_x, next_dy);
    else
        flat_dx_sweep<false, Next>(X, DY, DX, b, e, n, c, next_x, next_dy);
}

/// dx over nruns runs of len values back to back (one row's span of a block of BatchNorm NCHW's
/// planes), with per-run coefficients c (dx_terms of run k at k, not wrapped): flat_dx's formula, where a
/// vector that spans the end of one run and the start of the next blends their coefficients (len
/// at least a vector), so the stores run over whole lines without per-position coefficient arrays.
template <class T>
void flat_dx_runs(bool stream, const T* X, const T* DY, T* DX, index_t nruns, index_t len, const dx_coefficients<T>& c) {
    const std::array<const T*, 4> coefs{c.mh.data(), c.a.data(), c.b.data(), c.c.data()};
    auto f = [=](auto load, const auto& v) {  // captured by value, as flat_dx's kernel
        if (stream) simd::prefetch_stream(X + load.i), simd::prefetch_stream(DY + load.i);
        return dx_of(load(X), load(DY), v[0], v[1], v[2], v[3]);
    };
    if (stream)
        simd::for_each_run_store<true>(DX, nruns, len, 1, coefs, f);
    else
        simd::for_each_run_store<false>(DX, nruns, len, 1, coefs, f);
}

/// Whether a columns plan's rows lie back to back in x, dy and dx (BatchNorm, InstanceNorm and
/// GroupNorm on NHWC): a kept index's rows form one flat run
template <class T>
inline bool flat_column_rows(const backward_context<T>& cx) {
    const index_t n = cx.inner.extent;
    return cx.R.size() == 1 && cx.R[0].sx == n && cx.R[0].sy == n && cx.R[0].sdy == n;
}

/// A kept index's dx coefficients per lane, repeated past n (dx_coefficients::wrapped), for flat_dx
template <class T>
dx_coefficients<T> flat_dx_coefficients(const backward_context<T>& cx, const offsets& kk, const column_lanes<T>& ln) {
    const index_t n = cx.inner.extent;
    const T* g = cx.a.gamma ? cx.a.gamma + kk.param : nullptr;
    simd::lanes<T> ones;
    if (!g || cx.inner.sparam == 0) ones.assign(std::size_t(n), g ? g[0] : T(1));
    return dx_coefficients<T>(ln.mhi.data(), ln.mlo.data(), ln.rs.data(), ln.c1.data(), ln.c2.data(), ones.empty() ? g : ones.data(), n)
        .wrapped(n);
}

/// The pipeline of kept indices over channels-last rows (flat_column_rows, streaming): the previous
/// kept index's dx coefficients, and its dx a block of rows at a time, run just before the same
/// block of the next one has its sums taken (whose x and dy it asks for into L1), as the forward's
/// column_pipeline.
template <class T>
struct dx_pipeline {
    std::optional<dx_coefficients<T>> c;  // the previous kept index's, once there is one
    offsets prev{};
    /// column_sums' `before`: the previous kept index's dx at the positions of the block of count
    /// rows at rows[0] (offsets within a kept index) of the next one, kk
    void block(const backward_context<T>& cx, const offsets& kk, const offsets* rows, index_t count) const {
        const index_t n = cx.inner.extent;
        if (c)
            flat_dx<true>(true, cx.a.x.data + prev.x, cx.a.dy.data + prev.dy, cx.a.dx.data + prev.y, rows[0].x, rows[0].x + count * n,
                          n, *c, cx.a.x.data + kk.x, cx.a.dy.data + kk.dy);
    }
    /// kept index kk's sums are final (ln): it is the previous one from here on
    void advance(const backward_context<T>& cx, const offsets& kk, const column_lanes<T>& ln) {
        c = flat_dx_coefficients(cx, kk, ln);
        prev = kk;
    }
    /// the last one's dx alone, over its rows [r0, r1)
    void finish(const backward_context<T>& cx, index_t r0, index_t r1) const {
        const index_t n = cx.inner.extent;
        if (c) flat_dx(true, cx.a.x.data + prev.x, cx.a.dy.data + prev.dy, cx.a.dx.data + prev.y, r0 * n, r1 * n, n, *c);
    }
};

/// dx for rows [r0, r1), row by row (memory read and written in order); rows that are contiguous
/// in x, dy and dx (BatchNorm, InstanceNorm and GroupNorm on NHWC) as one flat run, with streaming stores when asked for
template <class T>
void column_dx(const backward_context<T>& cx, const offsets& kk, const column_lanes<T>& ln, index_t r0, index_t r1) {
    using V = simd::vec<T>;
    const index_t n = cx.inner.extent;
    const T* g = cx.a.gamma ? cx.a.gamma + kk.param : nullptr;
    const index_t sp = cx.inner.sparam;
    if (flat_column_rows(cx)) {
        flat_dx(cx.stream, cx.a.x.data + kk.x, cx.a.dy.data + kk.dy, cx.a.dx.data + kk.y, r0 * n, r1 * n, n,
                flat_dx_coefficients(cx, kk, ln));
        if (cx.stream) simd::fence();
        return;
    }
    for_range(cx.R, r0, r1, [&](const offsets& r) {
        const T* x = cx.a.x.data + kk.x + r.x;
        const T* dy = cx.a.dy.data + kk.dy + r.dy;
        T* dx = cx.a.dx.data + kk.y + r.y;
        simd::for_vectors<T>(0, n, [&]<bool Tail>(index_t j, index_t t) {
            const V gv = !g ? V(T(1)) : sp == 1 ? load_at<Tail>(g, j, t) : V(g[0]);
            const V rs = load_at<Tail>(ln.rs.data(), j, t);
            const V xh = ((load_at<Tail>(x, j, t) - load_at<Tail>(ln.mhi.data(), j, t)) - load_at<Tail>(ln.mlo.data(), j, t)) * rs;
            store_at<Tail>(dx, j, t,
                           xsimd::fnma(xh, load_at<Tail>(ln.c2.data(), j, t), load_at<Tail>(dy, j, t) * gv - load_at<Tail>(ln.c1.data(), j, t)) * rs);
        });
    });
}

/// One run's sums against a mean mt: d = sum dy, q = sum dy * (x - mt), r = sum (x - mt); param
/// is the run's parameter index.
struct run_sums {
    double d = 0, q = 0, r = 0;
    index_t param = 0;
};

/// sums_of_run with g (nullptr: none) along the run: d = sum gy, q = sum gy * (x - mt) with gy =
/// dy * g (the pipelined rows of LayerNorm and RMSNorm: a chunk at a time)
template <bool G, class T>
inline run_sums sums_of_run(const T* x, const T* dy, const T* g, index_t n, T mt) {
    using V = simd::vec<T>;
    constexpr index_t L = simd::width<T>;
    const V m(mt);
    V ad[2] = {V(T(0)), V(T(0))}, aq[2] = {ad[0], ad[0]}, ar[2] = {ad[0], ad[0]};
    auto step = [&]<bool Tail>(int c, index_t i, index_t t) __attribute__((always_inline)) {
        V d = load_at<Tail>(dy, i, t);
        if constexpr (G) d *= load_at<Tail>(g, i, t);
        V xc = load_at<Tail>(x, i, t) - m;
        if constexpr (Tail) xc = xsimd::select(simd::lanes_below<T>(t), xc, V(T(0)));  // lanes past the run
        ad[c] += d;
        aq[c] = xsimd::fma(d, xc, aq[c]);
        ar[c] += xc;
    };
    index_t i = 0;
    for (; i + 2 * L <= n; i += 2 * L) step.template operator()<false>(0, i, L), step.template operator()<false>(1, i + L, L);
    if (i + L <= n) step.template operator()<false>(0, i, L), i += L;
    if (i < n) step.template operator()<true>(1, i, n - i);
    return {double(xsimd::hadd(ad[0] + ad[1])), double(xsimd::hadd(aq[0] + aq[1])), double(xsimd::hadd(ar[0] + ar[1])), 0};
}

template <class T>
inline run_sums sums_of_run(const T* x, const T* dy, index_t n, T mt) {
    return sums_of_run<false>(x, dy, static_cast<const T*>(nullptr), n, mt);
}

/// What one row normalized with (mean as a pair hi + lo, rstd) and its dx coefficients.
template <class T>
struct row_coefficients {
    T mhi = 0, mlo = 0, rs = 0, c1 = 0, c2 = 0;
    /// The dx coefficients from the row's sums about the saved mean mhi: s1 = sum gy, s2 = sum
    /// gy * xhat' (xhat' = (x - mhi) * rs), s3 = sum (x - mhi). With exact (batch statistics with
    /// a saved mean) the mean moves to the exact one, mhi + s3 / N, as a pair, and s2 with it;
    /// returns that shift of xhat, delta * rs, which sums of dy * xhat' over-count per dy.
    /// constant (running statistics): c1 = c2 = 0; rms: c1 = 0.
    double finish(double s1, double s2, double s3, bool exact, bool rms, bool constant, double inv_n) {
        double k = 0;
        if (exact) {
            const mean_shift m(double(mhi), s3, inv_n);
            k = m.delta * double(rs);
            s2 = m.shifted(s2, s1, double(rs));
            const mean_pair<T> p(m.mean);
            mhi = p.hi, mlo = p.lo;
        }
        c1 = rms || constant ? T(0) : T(s1 * inv_n);
        c2 = constant ? T(0) : T(s2 * inv_n);
        return k;
    }
};

/// NB rows whose parameters lie along the row (LayerNorm, RMSNorm), in one sweep, about each
/// row's saved mean rc[r].mhi: the sums of gy and gy * xhat' (xhat' = (x - mhi) * rs) into s1[r],
/// s2[r], the residue sum (x - mhi) into s3[r], and the block's dy * xhat' and dy added to pg and
/// pb (nullptr: not wanted), whose vectors are loaded and stored once for all NB rows. g nullptr:
/// 1. The caller (flush_rows in backward()) shifts these to the exact mean, so x is read once here.
template <int NB, class T>
void rows_sums(const T* const* xp, const T* const* dyp, index_t n, const row_coefficients<T>* rc, const T* g, T* pg, T* pb,
               double* s1, double* s2, double* s3) {
    using V = simd::vec<T>;
    constexpr index_t L = simd::width<T>;
    V a[NB], b[NB], c[NB], mh[NB], rs[NB];
    // the row pointers copied here: read through the caller's arrays, they would be reloaded after
    // every store to dgamma and dbeta (a store may alias them)
    const T* x[NB];
    const T* dy[NB];
    for (int r = 0; r < NB; ++r)
        a[r] = b[r] = c[r] = V(T(0)), mh[r] = V(rc[r].mhi), rs[r] = V(rc[r].rs), x[r] = xp[r], dy[r] = dyp[r];
    auto step = [&]<bool Tail>(index_t i, index_t t) __attribute__((always_inline)) {
        const V gv = g ? load_at<Tail>(g, i, t) : V(T(1));
        V ag = pg ? load_at<Tail>((const T*)pg, i, t) : V(T(0)), ab = pb ? load_at<Tail>((const T*)pb, i, t) : V(T(0));
#pragma GCC unroll 4
        for (int r = 0; r < NB; ++r) {
            // masked lanes load 0, so their x - mhi is -mhi: kept out of the residue
            const V d = load_at<Tail>(dy[r], i, t), xc = load_at<Tail>(x[r], i, t) - mh[r], xh = xc * rs[r], gy = d * gv;
            a[r] += gy;
            b[r] = xsimd::fma(gy, xh, b[r]);
            if constexpr (Tail)
                c[r] += xsimd::select(simd::lanes_below<T>(t), xc, V(T(0)));
            else
                c[r] += xc;
            ag = xsimd::fma(d, xh, ag);
            ab += d;
        }
        if (pg) store_at<Tail>(pg, i, t, ag);
        if (pb) store_at<Tail>(pb, i, t, ab);
    };
    index_t i = 0;
    for (; i + L <= n; i += L) step.template operator()<false>(i, L);
    if (i < n) step.template operator()<true>(i, n - i);  // masked lanes load 0: d = 0 adds nothing
    for (int r = 0; r < NB; ++r)
        s1[r] = double(xsimd::hadd(a[r])), s2[r] = double(xsimd::hadd(b[r])), s3[r] = double(xsimd::hadd(c[r]));
}

/// Each thread's dgamma and dbeta sums, pc values each in double, in one block of the calling
/// thread's kept work space (thread t's dgamma, then its dbeta), at the end added up in thread
/// order into dgamma and dbeta. With many parameters (LayerNorm-CNN: 200704) each thread zeroes
/// its own part in the team and merges a share of them after a barrier: the calling thread alone,
/// zeroing and merging megabytes, left the other idle (LayerNorm-CNN 32x64x56x56 backward at two
/// threads, standalone: OpenMP's waiting 20 % of the samples before, 13.5 % after; time 0.87-0.98,
/// twelve alternations, best and median; the machine was loaded). With few (LayerNorm
/// 8x4096: 4096) the barrier costs more than the merge (1.3x the time at two threads, same run):
/// the calling thread zeroes them before the team and merges them after it.
class param_parts {
    std::size_t pc_;
    simd::lanes<double>& v_;
    int team_ = 1;  // the team that ran: OpenMP may give fewer threads than asked for

    bool shared() const { return pc_ >= 16384; }
    template <class T>
    void merge(const backward_args<T>& a, int nt, index_t b, index_t e) {
        // loops along the parameters, which vectorize (one element at a time with the threads
        // inside, the merge took a fifth of a LayerNorm 8x4096 backward)
        auto out = [&](T* to, std::size_t which) {
            if (!to) return;
            double* sum = v_.data() + which * pc_;  // thread 0's part takes the others'
            for (int t = 1; t < nt; ++t) {
                const double* part = v_.data() + (2 * std::size_t(t) + which) * pc_;
                for (index_t i = b; i < e; ++i) sum[i] += part[i];
            }
            for (index_t i = b; i < e; ++i) to[i] = T(sum[i]);
        };
        out(a.dgamma, 0);
        out(a.dbeta, 1);
    }

public:
    /// With few parameters the calling thread zeroes every part here, before the team: while
    /// the other threads wake up (in the team, LayerNorm 8x4096 at two threads measured 1.15x the time).
    param_parts(int nt, std::size_t pc) : pc_(pc), v_(kept_space<double, 0>(2 * std::size_t(nt) * pc)) {
        if (!shared()) std::fill(v_.begin(), v_.end(), 0.0);
    }
    double* dg(int t) { return pc_ ? &v_[2 * std::size_t(t) * pc_] : nullptr; }
    double* db(int t) { return pc_ ? &v_[(2 * std::size_t(t) + 1) * pc_] : nullptr; }
    /// In the team, first (every thread): with many parameters, thread t's sums set to 0.
    void zero(int t) {
        if (t == 0) team_ = team_size();
        if (pc_ && shared()) std::fill_n(dg(t), 2 * pc_, 0.0);
    }
    /// In the team, last (every thread): with many parameters, each thread's share of them.
    template <class T>
    void write_in_team(const backward_args<T>& a) {
        if (!pc_ || !shared()) return;
        team_barrier();
        const auto [b, e] = split(index_t(pc_), thread_id(), team_size());
        merge(a, team_size(), b, e);
    }
    /// After the team: with few parameters, all of them.
    template <class T>
    void write_after(const backward_args<T>& a) {
        if (pc_ && !shared()) merge(a, team_, 0, index_t(pc_));
    }
};

/// Planes of short runs in rows too wide for columns (the forward's group_blocks: BatchNorm on
/// NCHW with 7x7 planes), gamma constant along each run: per block of groups whose x and dy fit
/// in 64 KiB each (50x2048x7x7 at one thread: 256, 128 and 64 KiB within 3 % of each other in
/// one run, inside the noise), per group the sums of its runs (row by row, each row's
/// span in memory order) and its coefficients, then each row's span of the block as one flat run
/// of dx (streaming out of cache), where run by run the stores could not stream. Threads take
/// (kept index, block) pairs; dgamma and dbeta per thread, merged.
template <class T>
void backward_group_blocks(const spec_desc& spec, const plan& p, const backward_args<T>& a, double inv_n, index_t param_count,
                           bool stream, int nt) {
    const loop_dim member = p.fused.back(), gd = p.fused[p.fused.size() - 2];
    const outer_loops outer = outer_of(p.fused, 2);
    const index_t nk = count_of(outer.K), nr = count_of(outer.R), cg = member.extent;
    // With planes of a vector or more, a thread's block is all its channels, each row's span read
    // and written in memory order, the coefficients per channel (flat_dx_runs). Time against
    // blocks of 64 KiB of x and of dy, standalone, alternated: 50x2048x7x7 at 0.86-0.92 (one
    // thread) and 0.76-0.77 (two); in cache, 8x2048x7x7 at 0.79 and 0.72, 16x512x7x7 at 0.84 and
    // 0.82, 3x97x7x7 at 0.09. Shorter planes keep the blocks.
    const bool in_order = cg >= simd::width<T>;
    const index_t per_thread = (gd.extent + nt - 1) / nt;
    const group_blocking bl(in_order ? double(per_thread * nr * cg) * sizeof(T) : fuse_slab_bytes / 16, sizeof(T), nr, cg, gd.extent);
    const bool want = a.dgamma || a.dbeta, exact_mean = a.mean && !a.constant_stats;
    const std::size_t pc = want ? std::size_t(param_count) : 0;
    param_parts param_sums(nt, pc);
    team(nt, [&] {
        const int t = thread_id();
        param_sums.zero(t);
        double* dg = param_sums.dg(t);
        double* db = param_sums.db(t);
        const auto [wb, we] = split(nk * bl.count, t, team_size());
        const std::size_t size = std::size_t(in_order ? bl.per : bl.per * cg);  // per channel, or per position
        dx_coefficients<T> coef(size);
        simd::lanes<run_sums> sums(std::size_t(bl.per), run_sums{});
        for_group_blocks(outer.K, bl, gd.extent, wb, we, [&](const offsets& kk, index_t g0, index_t g1) {
            // the block's sums row by row, each row's span in memory order (channel by channel
            // across the rows, the runs are too short for the prefetchers to follow)
            std::fill(sums.begin(), sums.end(), run_sums{});
            for_range(outer.R, 0, nr, [&](const offsets& r) {
                for (index_t gi = g0; gi < g1; ++gi) {
                    const T mt = a.mean ? a.mean[kk.stat + gi * gd.sstat] : T(0);
                    const run_sums one = sums_of_run(a.x.data + kk.x + r.x + gi * gd.sx, a.dy.data + kk.dy + r.dy + gi * gd.sdy, cg, mt);
                    run_sums& sum = sums[std::size_t(gi - g0)];
                    sum.d += one.d, sum.q += one.q, sum.r += one.r;
                }
            });
            for (index_t gi = g0; gi < g1; ++gi) {
                const index_t st = kk.stat + gi * gd.sstat, pi = kk.param + gi * gd.sparam;
                const T mt = a.mean ? a.mean[st] : T(0);
                const double rstd = double(a.rstd[st]), gv = a.gamma ? double(a.gamma[pi]) : 1.0;
                const run_sums& sum = sums[std::size_t(gi - g0)];
                const mean_shift m(double(mt), exact_mean ? sum.r : 0.0, inv_n);
                const double q = rstd * m.shifted(sum.q, sum.d);  // sum dy * xhat about the exact mean
                if (dg) dg[pi] += q;
                if (db) db[pi] += sum.d;
                const index_t each = in_order ? 1 : cg;  // values per channel in the coefficient arrays
                const mean_pair<T> mp(m.mean);
                coef.set(std::size_t((gi - g0) * each), std::size_t(each),
                         dx_terms<T>(mp.hi, mp.lo, T(rstd), spec.rms || a.constant_stats ? T(0) : T(gv * sum.d * inv_n),
                                     a.constant_stats ? T(0) : T(gv * q * inv_n), T(gv)));
            }
            auto at = [&](const offsets& r) {  // x, dy and dx of the block's span in row r
                return std::tuple{a.x.data + kk.x + r.x + g0 * gd.sx, a.dy.data + kk.dy + r.dy + g0 * gd.sdy, a.dx.data + kk.y + r.y + g0 * gd.sy};
            };
            if (in_order) {
                for_range(outer.R, 0, nr, [&](const offsets& r) {
                    const auto [X, DY, DX] = at(r);
                    flat_dx_runs(stream, X, DY, DX, g1 - g0, cg, coef);
                });
                return;
            }
            const index_t span = (g1 - g0) * cg;
            const dx_coefficients<T> c = coef.wrapped(span);
            for_range(outer.R, 0, nr, [&](const offsets& r) {
                const auto [X, DY, DX] = at(r);
                flat_dx(stream, X, DY, DX, 0, span, span, c);
            });
        });
        if (stream) simd::fence();
        param_sums.write_in_team(a);
    });
    param_sums.write_after(a);
}

/// Whether rows_dx sweeps down its rows. Sweeping up, a load of x or dy waits on an earlier store
/// to dx at the same address modulo 4 KiB: one made (dx - x) mod 4 KiB bytes before, when dx lies
/// a little past x; sweeping down, (x - dx) mod 4 KiB bytes before. The nearer that store, the
/// likelier it is still in flight, so the sweep takes the direction whose nearest such store, over
/// x and dy, lies farther back. With dx 96 bytes past x, 2048x1024 measured 1.14-1.28x faster
/// down than up and 8x4096 up to 1.4x (the order alternated in one run).
inline bool sweep_down(const void* x, const void* dy, const void* dx) {
    auto behind = [](const void* load, const void* store) {  // bytes back to the aliasing store, sweeping up
        const std::uintptr_t d = (reinterpret_cast<std::uintptr_t>(store) - reinterpret_cast<std::uintptr_t>(load)) % 4096;
        return d == 0 ? std::uintptr_t(4096) : d;  // the same offset: the store follows the load
    };
    const std::uintptr_t up = std::min(behind(x, dx), behind(dy, dx));
    const std::uintptr_t down = std::min(behind(dx, x), behind(dx, dy));
    return down > up;
}

/// dx of NB rows whose parameters lie along the row, one load of each gamma vector for all of them.
/// k not nullptr: pg (the block's dgamma) loses k[r] * dy of each row r, in the same sweep (the
/// shift from rows_sums' saved means to the exact ones).
template <int NB, class T>
void rows_dx(const T* const* xp, const T* const* dyp, T* const* dxp, index_t n, const row_coefficients<T>* rc, const T* g,
             const T* k, T* pg) {
    using V = simd::vec<T>;
    constexpr index_t L = simd::width<T>;
    V mh[NB], ml[NB], rs[NB], c1[NB], c2[NB], kv[NB];
    const T* x[NB];  // local copies, as in rows_sums: the stores to dx would reload them otherwise
    const T* dy[NB];
    T* dx[NB];
    for (int r = 0; r < NB; ++r) {
        mh[r] = V(rc[r].mhi), ml[r] = V(rc[r].mlo), rs[r] = V(rc[r].rs), c1[r] = V(rc[r].c1), c2[r] = V(rc[r].c2);
        kv[r] = V(k ? k[r] : T(0)), x[r] = xp[r], dy[r] = dyp[r], dx[r] = dxp[r];
    }
    // always inlined (as rows_sums' step): called out of line, it reads its by-reference captures
    // (coefficients, row pointers) from memory at every vector; the second sweep direction made
    // g++ stop inlining it, and the backward at 31x301 and 512x768 measured 1.25x slower
    auto step = [&]<bool Correct, bool Tail>(index_t i, index_t t) __attribute__((always_inline)) {
        const V gv = g ? load_at<Tail>(g, i, t) : V(T(1));
        V v[NB];  // every row's loads before any store (rows 4 KiB apart alias)
        V ag = Correct ? load_at<Tail>((const T*)pg, i, t) : V(T(0));
#pragma GCC unroll 4
        for (int r = 0; r < NB; ++r) {
            const V xh = ((load_at<Tail>(x[r], i, t) - mh[r]) - ml[r]) * rs[r], d = load_at<Tail>(dy[r], i, t);
            v[r] = xsimd::fnma(xh, c2[r], d * gv - c1[r]) * rs[r];
            if constexpr (Correct) ag = xsimd::fnma(kv[r], d, ag);
        }
#pragma GCC unroll 4
        for (int r = 0; r < NB; ++r) store_at<Tail>(dx[r], i, t, v[r]);
        if constexpr (Correct) store_at<Tail>(pg, i, t, ag);
    };
    const bool down = sweep_down(x[0], dy[0], dx[0]);
    auto sweep = [&]<bool Correct>() __attribute__((always_inline)) {  // inlined too, for the same reason
        if (down) {
            const index_t full = n / L * L;
            if (full < n) step.template operator()<Correct, true>(full, n - full);
            for (index_t i = full; i > 0;) {
                i -= L;
                step.template operator()<Correct, false>(i, L);
            }
            return;
        }
        index_t i = 0;
        for (; i + L <= n; i += L) step.template operator()<Correct, false>(i, L);
        if (i < n) step.template operator()<Correct, true>(i, n - i);
    };
    if (k && pg)
        sweep.template operator()<true>();
    else
        sweep.template operator()<false>();
}

/// dx of one run's chunk of len values (coefficients rc) whose gamma lies along it (g; nullptr:
/// gc for all of it), with streaming stores (no fence); with Params, the chunk's dy * xhat and
/// dy added to pg and pb in the same sweep; with Next, the same chunk of the next kept index's
/// run, nx and ndy, asked for into L1 along the way (pipelined_runs_dx).
template <bool Next, bool Params, class T>
void run_dx_chunk(const T* x, const T* dy, T* dx, index_t len, const row_coefficients<T>& rc, const T* g, T gc, T* pg, T* pb,
                  const T* nx, const T* ndy) {
    using V = simd::vec<T>;
    const V mh(rc.mhi), ml(rc.mlo), rs(rc.rs), c1(rc.c1), c2(rc.c2), gv(gc);
    simd::for_each_store<true>(dx, len, [=](auto load) __attribute__((always_inline)) {  // by value, as flat_dx's
        if constexpr (Next) simd::prefetch_near(nx + load.i), simd::prefetch_near(ndy + load.i);
        const V xh = ((load(x) - mh) - ml) * rs, d = load(dy);
        if constexpr (Params) load.store(pg, xsimd::fma(d, xh, load(pg))), load.store(pb, load(pb) + d);
        return xsimd::fnma(xh, c2, d * (g ? load(g) : gv) - c1) * rs;
    });
}

/// Kept indices whose runs (R, nr of them, n values each) are contiguous in x, dy and dx, out of
/// cache with dx streaming: one thread's kept indices K[kb, ke) as a pipeline a chunk at a time,
/// as the forward's (engine::detail::pipelined_parameter_rows). Per chunk of each run the previous
/// kept index's dx is written (its x and dy from cache) while the same chunk of this one's x and
/// dy is asked for into L1, whose sums about the saved mean follow (sums_of_run, added up per run
/// in runs); the last kept index's dx runs alone. Rows with gamma along them (along: LayerNorm,
/// RMSNorm, LayerNorm over C, H, W; one run) take the sums of gy = dy * gamma, and their dgamma and
/// dbeta per element in the dx sweep, about the exact mean, into pg and pb (nullptr: none);
/// planes (BatchNorm, InstanceNorm, GroupNorm on NCHW) one gamma per run, their dgamma and dbeta
/// from the sums. saved(kk) gives a kept index's saved mean and rstd; finish(rc, runs) its dx
/// coefficients (and for planes dgamma and dbeta); done() follows each kept index's dx.
template <class T, class Saved, class Finish, class Done>
void pipelined_runs_dx(const loop_dims& K, index_t kb, index_t ke, const loop_dims& R, index_t nr, index_t n, const T* X, const T* DY,
                       T* DX, const T* gamma, bool along, T* pg, T* pb, simd::lanes<run_sums>& runs, Saved&& saved,
                       Finish&& finish, Done&& done) {
    offsets prev{};
    row_coefficients<T> pc;
    bool first = true;
    auto dx = [&]<bool Next>(const offsets& r, index_t b, index_t len, const offsets& next) {
        const index_t o = prev.param + r.param;
        const T* g = along && gamma ? gamma + o + b : nullptr;
        const T gc = !along && gamma ? gamma[o] : T(1);
        const T *x = X + prev.x + r.x + b, *dy = DY + prev.dy + r.dy + b, *nx = X + next.x + r.x + b, *ndy = DY + next.dy + r.dy + b;
        T* d = DX + prev.y + r.y + b;
        if (along && pg)
            run_dx_chunk<Next, true>(x, dy, d, len, pc, g, gc, pg + o + b, pb + o + b, nx, ndy);
        else
            run_dx_chunk<Next, false>(x, dy, d, len, pc, g, gc, pg, pb, nx, ndy);
    };
    for_range(K, kb, ke, [&](const offsets& kk) {
        row_coefficients<T> rc = saved(kk);
        runs.clear();
        for_range(R, 0, nr, [&](const offsets& r) {
            run_sums sum;
            sum.param = kk.param + r.param;
            const T* g = along && gamma ? gamma + sum.param : nullptr;
            for (index_t b = 0; b < n; b += chunk) {
                const index_t len = std::min(chunk, n - b);
                if (!first) dx.template operator()<true>(r, b, len, kk);
                const T *x = X + kk.x + r.x + b, *dy = DY + kk.dy + r.dy + b;
                const run_sums u = g ? sums_of_run<true>(x, dy, g + b, len, rc.mhi) : sums_of_run<false>(x, dy, g, len, rc.mhi);
                sum.d += u.d, sum.q += u.q, sum.r += u.r;
            }
            runs.push_back(sum);
        });
        if (!first) done();
        finish(rc, runs);
        pc = rc, prev = kk, first = false;
    });
    if (first) return;
    for_range(R, 0, nr, [&](const offsets& r) {  // the last kept index's dx alone
        for (index_t b = 0; b < n; b += chunk) dx.template operator()<false>(r, b, std::min(chunk, n - b), prev);
    });
    done();
}

}  // namespace detail

template <class T>
void backward(const spec_desc& spec, const binding& b, const backward_args<T>& a) {
    const index_t total = a.x.size();
    if (total == 0) {
        for (index_t i = 0; a.dgamma && i < b.param_count; ++i) a.dgamma[i] = T(0);
        for (index_t i = 0; a.dbeta && i < b.param_count; ++i) a.dbeta[i] = T(0);
        return;
    }
    const bool has_params = spec.kind != param_kind::none;
    const plan p = make_plan(b, a.x, a.dx, has_params, a.dy.strides.data());
    // GroupNorm on channels-last data, [.., keep G(C), reduce C/G] with contiguous channels: the
    // two innermost loops become one run of C lanes, a group of C/G lanes per statistic (the
    // forward's grouped columns); otherwise the innermost loop is the run
    const std::size_t fd = p.fused.size();
    const double inv_n = 1.0 / double(b.reduction_count);
    const bool stream = detail::stream_dx(3.0 * double(total) * sizeof(T));
    const int wanted = threads_for(total, sizeof(T), 3, a.threads);
    if (detail::group_blocks(p) && p.fused[fd - 1].sdy == 1 && p.fused[fd - 2].sdy == p.fused[fd - 1].extent &&
        p.fused[fd - 1].sparam == 0 && std::all_of(p.fused.begin(), p.fused.end() - 2, [](const loop_dim& d) { return !d.reduced || d.sparam == 0; }))
        return detail::backward_group_blocks(spec, p, a, inv_n, b.param_count, stream, wanted);
    const bool grouped = detail::grouped_columns(p) && p.fused[fd - 1].sdy == 1 && p.fused[fd - 2].sdy == p.fused[fd - 1].extent &&
                         p.fused[fd - 2].sparam == p.fused[fd - 1].extent * p.fused[fd - 1].sparam;
    loop_dim inner = p.fused.back();
    index_t group = 1, gstat = 0;
    if (grouped) {
        const loop_dim& gd = p.fused[fd - 2];
        group = inner.extent, gstat = gd.sstat;
        inner.extent *= gd.extent;
        inner.reduced = false;
        inner.sstat = 0;
    }
    const outer_loops outer = outer_of(p.fused, grouped ? 2 : 1);
    const loop_dims& K = outer.K;
    const loop_dims& R = outer.R;
    const index_t nk = count_of(K), nr = count_of(R), n = inner.extent;
    const index_t lanes = inner.reduced ? 1 : n;  // statistics per kept index
    const index_t ss = inner.reduced ? 0 : inner.sstat;
    // threads over kept indices; with fewer kept indices than threads, one thread does it all
    int nt = wanted;
    if (nk < nt) nt = 1;
    const bool want_params = has_params && (a.dgamma || a.dbeta);
    // batch statistics with a saved mean: the exact mean is recovered from x (the saved one is rounded to T)
    const bool exact_mean = a.mean && !a.constant_stats;
    const std::size_t pc = want_params ? std::size_t(b.param_count) : 0;
    detail::param_parts param_sums(nt, pc);
    const bool contiguous = inner.sx == 1 && inner.sdy == 1 && inner.sy == 1;
    bool params_fixed_per_row = true;  // columns: the lanes' parameters do not change from row to row
    for (auto& d : R)
        if (d.sparam != 0) params_fixed_per_row = false;
    const bool vector_rows = contiguous && inner.reduced && inner.sparam <= 1;
    const bool vector_columns = contiguous && !inner.reduced && inner.sparam <= 1 && params_fixed_per_row;
    const T* X = a.x.data;
    const T* DY = a.dy.data;
    T* DX = a.dx.data;

    const detail::backward_context<T> cx{spec, a, inner, R, inv_n, group, gstat, stream};

    // columns with fewer kept indices than threads (BatchNorm on NHWC): the threads split the rows
    // in each phase, and their partial sums are merged between phases. Out of cache the two
    // phases read x and dy twice (five streams where the traffic model counts three). Blocks of
    // channels small enough for the second phase to find them in L3 do not pay on this machine:
    // a hand-written forward (sums, then the normalize sweep) in blocks of 16 or 32 of 64
    // channels (one or two lines of each 256-byte row) took 2.0-3.7x the time of whole rows, and
    // of 2048 channels, blocks of 512 or 1024 (4 KiB pieces of 8 KiB rows) 1.3-2.1x at one thread
    // (0.7-1.5x at two); each against a streaming copy in the same process. A hand-written
    // two-phase backward of whole rows reached 0.42-0.58 of the three-stream limit (these kernels:
    // 0.39-0.47 in docs/benchmarks.md).
    // With more kept indices than threads but fewer than two per thread, out of cache, rows back to
    // back (GroupNorm and InstanceNorm on NHWC, three samples on two threads), the threads split
    // every kept index's rows too, and the kept indices pipeline as in the per-thread kernels
    // below: each thread's dx over its rows of the previous kept index goes with its sums over the
    // same rows of this one (dx_pipeline), where the threads would take one and two kept indices
    // in two sweeps each. Old and new engines in one process, each in both link places, two
    // threads: GroupNorm NHWC 3x320x96x96 at 0.81-0.89 of the time, 3x320x64x64 at 0.77-0.92,
    // InstanceNorm NHWC 3x64x112x112 at 0.71-1.00; with two samples (2x320x96x96), one per thread,
    // 1.00-1.15x, so one kept index per thread keeps its two sweeps (the previous sample's x and
    // dy, 24 MiB, do not stay in L3 for the pipeline to read).
    // (rows back to back, streaming: the kept indices can pipeline, here or per thread below)
    const bool pipeline_columns = vector_columns && stream && detail::flat_column_rows(cx);
    const bool split_pipeline = pipeline_columns && nk > wanted && nk < 2 * wanted;
    if (vector_columns && (nk < wanted || split_pipeline)) {
        simd::lanes<double> parts(std::size_t(wanted) * std::size_t(n) * 5), merged(std::size_t(n) * 5);
        detail::column_lanes<T> ln;
        simd::lanes<double> dg_all(pc, 0.0), db_all(pc, 0.0);
        auto part = [&](int t, int which) { return &parts[(std::size_t(t) * 5 + std::size_t(which)) * std::size_t(n)]; };
        auto merge = [&](int count) {
            std::fill(merged.begin(), merged.end(), 0.0);
            for (int t = 0; t < wanted; ++t)
                for (int w = 0; w < count; ++w)
                    for (index_t j = 0; j < n; ++j) merged[std::size_t(w) * std::size_t(n) + std::size_t(j)] += part(t, w)[j];
            std::fill(parts.begin(), parts.end(), 0.0);
        };
        detail::dx_pipeline<T> pipe;  // (split_pipeline)
        for_range(K, 0, nk, [&](const offsets& kk) {
            ln.init(cx, kk);
            std::fill(parts.begin(), parts.end(), 0.0);
            team(wanted, [&] {
                const int t = thread_id();
                const auto [r0, r1] = split(nr, t, team_size());
                detail::column_sums(cx, kk, ln, r0, r1, part(t, 0), part(t, 1), part(t, 2), part(t, 3), exact_mean ? part(t, 4) : nullptr,
                                    [&](const offsets* rows, index_t count) { pipe.block(cx, kk, rows, count); });
                if (pipe.c) simd::fence();
            });
            merge(5);
            auto m = [&](int w) { return &merged[std::size_t(w) * std::size_t(n)]; };
            ln.finish(cx, kk, m(0), m(1), m(2), m(3), exact_mean ? m(4) : nullptr, pc ? dg_all.data() : nullptr,
                      pc ? db_all.data() : nullptr);
            if (split_pipeline) return pipe.advance(cx, kk, ln);
            team(wanted, [&] {
                const auto [r0, r1] = split(nr, thread_id(), team_size());
                detail::column_dx(cx, kk, ln, r0, r1);
            });
        });
        if (pipe.c)
            team(wanted, [&] {
                const auto [r0, r1] = split(nr, thread_id(), team_size());
                pipe.finish(cx, r0, r1);
                simd::fence();
            });
        for (std::size_t i = 0; i < pc; ++i) {
            if (a.dgamma) a.dgamma[i] = T(dg_all[i]);
            if (a.dbeta) a.dbeta[i] = T(db_all[i]);
        }
        return;
    }

    team(nt, [&] {
        const int t = thread_id(), team = team_size();
        param_sums.zero(t);
        double* dg = param_sums.dg(t);
        double* db = param_sums.db(t);
        // the strided fallback's work space (none for the vector kernels: a small call's
        // allocations are a good part of its cost)
        const std::size_t fallback = vector_rows || vector_columns ? 0 : std::size_t(lanes);
        simd::lanes<double> sum_gy(fallback), sum_gy_xhat(fallback), mean(fallback);
        // ---- vector kernels for contiguous runs (x, dy, dx all step 1 along the innermost loop) ----
        using V = simd::vec<T>;
        constexpr index_t L = simd::width<T>;
        // (each team thread's own kept work space)
        simd::lanes<T>& dgT = detail::kept_zeros<T, 1>(vector_rows && inner.sparam == 1 ? pc : 0);
        simd::lanes<T>& dbT = detail::kept_zeros<T, 2>(dgT.size());
        index_t pending = 0;  // runs accumulated in dgT/dbT since they were last merged into dg/db
        auto flush_params = [&] {
            for (std::size_t i = 0; i < dgT.size(); ++i) {
                if (dg) dg[i] += double(dgT[i]);
                if (db) db[i] += double(dbT[i]);
                dgT[i] = dbT[i] = T(0);
            }
            pending = 0;
        };
        // rows: one statistic per kept index, a run per reduced index
        simd::lanes<detail::run_sums> runs;
        // kept index kk's saved mean (rounded to T) and rstd
        auto saved = [&](const offsets& kk) {
            detail::row_coefficients<T> rc;
            rc.mhi = a.mean ? a.mean[kk.stat] : T(0), rc.rs = a.rstd[kk.stat];
            return rc;
        };
        // planes (gamma constant along each run: BatchNorm, InstanceNorm, GroupNorm on NCHW): from
        // each run's sums about the saved mean (sum dy, sum dy * (x - saved), sum (x - saved)), the
        // dx coefficients about the exact mean, and dgamma and dbeta per run, which the mean's
        // shift delta corrects (sum dy * xhat = rstd * (q - delta * sum dy))
        auto plane_coefficients = [&](detail::row_coefficients<T>& rc, const simd::lanes<detail::run_sums>& sums) {
            const double rstd = double(rc.rs);
            double s1 = 0, s2 = 0, s3 = 0;
            for (const auto& run : sums) {
                const double gv = a.gamma ? double(a.gamma[run.param]) : 1.0;
                s1 += gv * run.d, s2 += gv * rstd * run.q, s3 += run.r;
            }
            const double k = rc.finish(s1, s2, s3, exact_mean, spec.rms, a.constant_stats, inv_n);
            for (const auto& run : sums) {
                if (dg) dg[run.param] += rstd * run.q - k * run.d;
                if (db) db[run.param] += run.d;
            }
        };
        auto rows_kernel = [&](const offsets& kk) {
            detail::row_coefficients<T> rc = saved(kk);
            double sgy = 0, sgyx = 0;
            if (inner.sparam == 0) {  // planes: one sweep for the sums of every run
                runs.clear();
                for_range(R, 0, nr, [&](const offsets& r) {
                    detail::run_sums u = detail::sums_of_run(X + kk.x + r.x, DY + kk.dy + r.dy, n, rc.mhi);
                    u.param = kk.param + r.param;
                    runs.push_back(u);
                });
                plane_coefficients(rc, runs);
            } else if (exact_mean) {  // the exact mean, from x and the rounded saved one
                double residue = 0;
                for_range(R, 0, nr, [&](const offsets& r) { residue += detail::residue_of(X + kk.x + r.x, n, rc.mhi); });
                const detail::mean_pair<T> mp(detail::mean_shift(double(rc.mhi), residue, inv_n).mean);
                rc.mhi = mp.hi, rc.mlo = mp.lo;
            }
            const T mhi = rc.mhi, mlo = rc.mlo, rs = rc.rs;
            const V vmhi(mhi), vmlo(mlo), vrs(rs);
            auto xhat = [&](const T* x, index_t i) { return ((V::load_unaligned(x + i) - vmhi) - vmlo) * vrs; };
            auto xhat1 = [&](const T* x, index_t i) { return ((x[i] - mhi) - mlo) * rs; };
            // gamma along the run (a norm with parameters on reduced axes besides the innermost):
            // dgamma and dbeta per element
            if (inner.sparam == 1)
                for_range(R, 0, nr, [&](const offsets& r) {
                    const T* x = X + kk.x + r.x;
                    const T* dy = DY + kk.dy + r.dy;
                    const index_t pb = kk.param + r.param;
                    V a0(T(0)), b0(T(0));
                    const T* g = a.gamma ? a.gamma + pb : nullptr;
                    T* pg = dgT.empty() ? nullptr : dgT.data() + pb;  // empty: no parameter gradient wanted
                    T* pbt = dbT.empty() ? nullptr : dbT.data() + pb;
                    index_t i = 0;
                    for (; i + L <= n; i += L) {
                        const V d = V::load_unaligned(dy + i), xh = xhat(x, i);
                        const V gy = g ? d * V::load_unaligned(g + i) : d;
                        a0 += gy;
                        b0 = xsimd::fma(gy, xh, b0);
                        if (pg) {
                            xsimd::fma(d, xh, V::load_unaligned(pg + i)).store_unaligned(pg + i);
                            (V::load_unaligned(pbt + i) + d).store_unaligned(pbt + i);
                        }
                    }
                    T s1 = xsimd::hadd(a0), s2 = xsimd::hadd(b0);
                    for (; i < n; ++i) {
                        const T xh = xhat1(x, i), gy = g ? dy[i] * g[i] : dy[i];
                        s1 += gy, s2 += gy * xh;
                        if (pg) pg[i] += dy[i] * xh, pbt[i] += dy[i];
                    }
                    sgy += double(s1);
                    sgyx += double(s2);
                    if (++pending == 64) flush_params();
                });
            if (inner.sparam == 1) {
                rc.c1 = spec.rms || a.constant_stats ? T(0) : T(sgy * inv_n);
                rc.c2 = a.constant_stats ? T(0) : T(sgyx * inv_n);
            }
            const V vc1(rc.c1), vc2(rc.c2);
            for_range(R, 0, nr, [&](const offsets& r) {
                const T* x = X + kk.x + r.x;
                const T* dy = DY + kk.dy + r.dy;
                T* dx = DX + kk.y + r.y;
                const index_t pb = kk.param + r.param;
                const T* g = a.gamma ? a.gamma + pb : nullptr;
                const bool per_element = inner.sparam == 1 && g;
                const T gc = g && !per_element ? g[0] : T(1);
                auto dx_of = [=](auto load) {
                    const V d = load(dy), gy = per_element ? d * load(g) : d * V(gc);
                    return xsimd::fnma(((load(x) - vmhi) - vmlo) * vrs, vc2, gy - vc1) * vrs;
                };
                // streaming stores out of cache, but not on short runs (their lines' ends would
                // mix plain and streaming stores: the forward's 7x7 planes measured 3.7x slower)
                if (stream && n >= detail::stream_run_min)
                    simd::for_each_store<true>(dx, n, dx_of);
                else
                    simd::for_each_store<false>(dx, n, dx_of);
            });
        };
        simd::lanes<double> t1, t2, tg, tb, residue;
        detail::column_lanes<T> lanes_state;
        // Out of cache, with rows back to back and two kept indices or more per thread (InstanceNorm
        // and GroupNorm on NHWC), the kept indices form a pipeline a block of rows at a time, as the
        // forward's (columns_per_kept): the previous one's dx over a block, its x and dy from cache,
        // while the same block of this one's x and dy is asked for, whose sums follow.
        const bool pipelined = pipeline_columns && nk >= 2 * index_t(team);
        detail::dx_pipeline<T> pipe;  // (pipelined)
        auto columns_kernel = [&](const offsets& kk) {  // the two sweeps over all rows of this kept index
            lanes_state.init(cx, kk);
            for (auto* v : {&residue, &t1, &t2, &tg, &tb}) v->assign(std::size_t(n), 0.0);
            double* tr = cx.a.mean && !cx.a.constant_stats ? residue.data() : nullptr;
            detail::column_sums(cx, kk, lanes_state, 0, nr, t1.data(), t2.data(), tg.data(), tb.data(), tr,
                                [&](const offsets* rows, index_t count) { pipe.block(cx, kk, rows, count); });
            lanes_state.finish(cx, kk, t1.data(), t2.data(), tg.data(), tb.data(), tr, dg, db);
            if (!pipelined) return detail::column_dx(cx, kk, lanes_state, 0, nr);
            pipe.advance(cx, kk, lanes_state);
        };
        // rows whose parameters lie along them (LayerNorm, RMSNorm): blocks of rows share each
        // load and store of dgamma, dbeta and gamma; four rows with AVX-512's 32 registers, two
        // with AVX2's 16, where four rows' coefficients and sums spill to the stack inside the
        // loop (rows_dx<4>: 333 stack accesses) and two measured 0.84-0.95 of the time
        // (LayerNorm 2048x1024 and 4096x4096, one and two threads, standalone, two runs)
        constexpr int NB = simd::registers >= 32 ? 4 : 2;
        offsets block[NB];
        int nb = 0;
        auto flush_rows = [&] {
            const T* xs[NB];
            const T* dys[NB];
            T* dxs[NB];
            detail::row_coefficients<T> rc[NB];
            double s1[NB], s2[NB], s3[NB];
            for (int r = 0; r < nb; ++r) {
                const offsets& kk = block[r];
                xs[r] = X + kk.x, dys[r] = DY + kk.dy, dxs[r] = DX + kk.y;
                rc[r] = saved(kk);
            }
            const index_t pb = block[0].param;
            const T* g = a.gamma ? a.gamma + pb : nullptr;
            T* pg = dgT.empty() || !dg ? nullptr : dgT.data() + pb;
            T* pbt = dbT.empty() || !db ? nullptr : dbT.data() + pb;
            simd::with_count<NB>(nb, [&]<int B>() { detail::rows_sums<B>(xs, dys, n, rc, g, pg, pbt, s1, s2, s3); });
            // the sums were about the saved mean, rounded to T; the exact one is that plus
            // delta = residue / N, and xhat = xhat' - delta * rstd: so sum gy * xhat loses
            // delta * rstd * sum gy here, and dgamma loses delta * rstd * dy in the dx sweep
            T k[NB];
            for (int r = 0; r < nb; ++r) k[r] = T(rc[r].finish(s1[r], s2[r], s3[r], exact_mean, spec.rms, a.constant_stats, inv_n));
            const T* kp = exact_mean ? k : nullptr;
            simd::with_count<NB>(nb, [&]<int B>() { detail::rows_dx<B>(xs, dys, dxs, n, rc, g, kp, pg); });
            if ((pending += nb) >= 64) flush_params();
            nb = 0;
        };
        const bool row_blocks = vector_rows && R.empty() && inner.sparam == 1;
        const auto [kb, ke] = split(nk, t, team);
        // Out of cache, two kept indices or more per thread whose runs are contiguous and long
        // enough to stream (rows with gamma along them; planes), a pipeline a chunk at a time
        // (pipelined_runs_dx): LayerNorm 4096x4096 at 0.69-0.85 of the time of two phases, planes
        // (BatchNorm, InstanceNorm, GroupNorm NCHW) at 0.76-0.95 (measured in one process, each
        // in both places; see docs/reference.md)
        const bool along = row_blocks;
        if ((row_blocks || (vector_rows && inner.sparam == 0 && n >= detail::stream_run_min)) && stream && ke - kb >= 2) {
            T* pg = along && !dgT.empty() ? dgT.data() : nullptr;
            T* pb = along && !dbT.empty() ? dbT.data() : nullptr;
            detail::pipelined_runs_dx(
                K, kb, ke, R, nr, n, X, DY, DX, a.gamma, along, pg, pb, runs,
                saved, [&](detail::row_coefficients<T>& rc, const simd::lanes<detail::run_sums>& sums) {
                    if (along) {  // one run, its sums of gy
                        const detail::run_sums& u = sums[0];
                        rc.finish(u.d, u.q * double(rc.rs), u.r, exact_mean, spec.rms, a.constant_stats, inv_n);
                        return;
                    }
                    plane_coefficients(rc, sums);
                },
                [&] {
                    if (along && ++pending >= 64) flush_params();
                });
            if (pending) flush_params();
            simd::fence();
            param_sums.write_in_team(a);
            return;
        }
        for_range(K, kb, ke, [&](const offsets& kk) {
            if (row_blocks) {
                if (nb > 0 && kk.param != block[0].param) flush_rows();  // parameters along kept axes too
                block[nb++] = kk;
                if (nb == NB) flush_rows();
                return;
            }
            if (vector_rows) {
                rows_kernel(kk);
                return;
            }
            if (vector_columns) {
                columns_kernel(kk);
                return;
            }
            // the mean each lane normalized with: the saved one, plus (with batch statistics) what
            // rounding it to T lost, recovered exactly from x (float data at 1e4 + N(0,1) would
            // otherwise lose 1e-4 of dgamma)
            for (index_t j = 0; j < lanes; ++j) mean[j] = a.mean ? double(a.mean[kk.stat + j * ss]) : 0.0;
            if (exact_mean) {
                simd::lanes<double> residue(lanes, 0.0);
                for_range(R, 0, nr, [&](const offsets& r) {
                    const T* x = X + kk.x + r.x;
                    for (index_t i = 0; i < n; ++i) residue[inner.reduced ? 0 : i] += double(x[i * inner.sx]) - mean[inner.reduced ? 0 : i];
                });
                for (index_t j = 0; j < lanes; ++j) mean[j] += residue[j] * inv_n;
            }
            // sweep 1: the two reductions per statistic, dgamma and dbeta per parameter
            std::fill(sum_gy.begin(), sum_gy.end(), 0.0);
            std::fill(sum_gy_xhat.begin(), sum_gy_xhat.end(), 0.0);
            for_range(R, 0, nr, [&](const offsets& r) {
                const T* x = X + kk.x + r.x;
                const T* dy = DY + kk.dy + r.dy;
                const index_t pb = kk.param + r.param;
                for (index_t i = 0; i < n; ++i) {
                    const index_t s = kk.stat + i * ss, pi = pb + i * inner.sparam, lane = inner.reduced ? 0 : i;
                    const double xhat = (double(x[i * inner.sx]) - mean[lane]) * double(a.rstd[s]);
                    const double d = double(dy[i * inner.sdy]);
                    const double gy = a.gamma ? d * double(a.gamma[pi]) : d;
                    sum_gy[lane] += gy;
                    sum_gy_xhat[lane] += gy * xhat;
                    if (dg) dg[pi] += d * xhat;
                    if (db) db[pi] += d;
                }
            });
            // sweep 2: dx
            for_range(R, 0, nr, [&](const offsets& r) {
                const T* x = X + kk.x + r.x;
                const T* dy = DY + kk.dy + r.dy;
                T* dx = DX + kk.y + r.y;
                const index_t pb = kk.param + r.param;
                for (index_t i = 0; i < n; ++i) {
                    const index_t s = kk.stat + i * ss, pi = pb + i * inner.sparam, lane = inner.reduced ? 0 : i;
                    const double rstd = double(a.rstd[s]);
                    const double d = double(dy[i * inner.sdy]);
                    const double gy = a.gamma ? d * double(a.gamma[pi]) : d;
                    double v = gy;
                    if (!a.constant_stats) {
                        const double xhat = (double(x[i * inner.sx]) - mean[lane]) * rstd;
                        v -= xhat * sum_gy_xhat[lane] * inv_n;
                        if (!spec.rms) v -= sum_gy[lane] * inv_n;
                    }
                    dx[i * inner.sy] = T(rstd * v);
                }
            });
        });
        if (nb) flush_rows();
        pipe.finish(cx, 0, nr);  // the last one's dx alone
        if (pending) flush_params();
        if (stream) simd::fence();
        param_sums.write_in_team(a);
    });
    param_sums.write_after(a);
}

}  // namespace normspec::engine

#endif  // NORMSPEC_ENGINE_BACKWARD_HPP

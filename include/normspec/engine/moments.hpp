// normspec/engine/moments.hpp
// Mergeable moments. One accumulator type serves chunks, rows, blocks of rows and threads:
//   centred: (count, mean, M2), merged with Chan et al.'s pairwise update;
//   rms:     (count, sum of squares), merged by addition.
// A run is summed in chunks that stay in L1: sums of x - k and (x - k)^2 about an estimate k of
// the chunk's mean, accepted when the mean lies within one standard deviation of k (then the
// variance keeps float's precision but for a factor 2); otherwise a second pass over the chunk,
// still in L1, takes the squared deviations from the mean just found. Chunks merge in double.
// So the large-offset case (float 1e4 + N(0,1)) keeps its variance where E[x^2] - E[x]^2 loses it.
#ifndef NORMSPEC_ENGINE_MOMENTS_HPP
#define NORMSPEC_ENGINE_MOMENTS_HPP

#include "simd.hpp"
#include "strided.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

namespace normspec::engine {

struct moments {
    double count = 0, mean = 0, m2 = 0;  // rms: m2 holds the sum of squares, mean is unused

    template <bool Rms>
    void merge(double n_b, double mean_b, double m2_b) {
        if (n_b == 0) return;
        if (count == 0) {  // the first part: itself (what the update below gives, without its divide)
            count = n_b, mean = mean_b, m2 = m2_b;
            return;
        }
        if constexpr (Rms) {
            count += n_b;
            m2 += m2_b;
        } else {
            const double n = count + n_b;
            const double delta = mean_b - mean;
            mean += delta * (n_b / n);
            m2 += m2_b + delta * delta * (count * n_b / n);
            count = n;
        }
    }
    template <bool Rms>
    void merge(const moments& o) { merge<Rms>(o.count, o.mean, o.m2); }

    /// Biased variance (what normalizes); for rms the mean square.
    /// (times the inverse of the count, which is known early: no divide after m2 on the chain
    /// of latencies from the data to the coefficients)
    double variance() const { return count > 0 ? m2 * (1.0 / count) : 0.0; }
    /// Unbiased variance (what goes into a running estimate).
    double unbiased_variance() const { return count > 1 ? m2 / (count - 1) : 0.0; }
};

namespace detail {
/// Work space that the calling thread keeps from call to call, `Slot` telling uses apart (each
/// holds the largest size asked for so far, until the thread ends; slots 0-2: the backward's
/// parameter sums, 3: column_rows' sums): with parameters over many values (LayerNorm over
/// C,H,W: 200704), the per-thread dgamma and dbeta sums take megabytes,
/// which fresh from the allocator page-fault on every call (glibc maps them anew: LayerNorm-CNN
/// 32x64x56x56 backward at one thread measured 1.65x the time of the same call with glibc's mmap
/// threshold raised, same run). n values, as the last call left them.
template <class T, int Slot>
inline simd::lanes<T>& kept_space(std::size_t n) {
    thread_local simd::lanes<T> v;
    v.resize(n);  // within its capacity after the first call: no allocation
    return v;
}
/// The same, zeroed.
template <class T, int Slot>
inline simd::lanes<T>& kept_zeros(std::size_t n) {
    simd::lanes<T>& v = kept_space<T, Slot>(n);
    std::fill(v.begin(), v.end(), T(0));
    return v;
}
}  // namespace detail

inline constexpr index_t chunk = 2048;  // 8 KiB of float: a chunk's second read hits L1

/// Centred moments of one chunk, made of nruns contiguous runs of len values, merged into m;
/// sums(c, r, q) takes the chunk's first pass: the sums r of x - c and q of (x - c)^2 in T.
/// c is the mean of the chunk's first vector. The variance from those sums, q - r^2/count, loses
/// about (r^2/count) / (q - r^2/count) of float's precision; when the mean is within one standard
/// deviation of c (for random data nearly always: c's error is a quarter of one) that is at most
/// a factor 2, and the chunk is done. Otherwise (sorted data, outliers first) a second pass takes
/// the sums again about the mean just found; what r is left then is the rounding residue of that
/// centre, and removing r^2/count makes q exact to second order. (chunk_centre, the first pass,
/// centred_finish: the pieces, for kernels that take the first pass of several chunks at once.)
/// A whole first vector is one load and one horizontal add (simd::sum's four chains and its loop
/// are the start of every row's chain of latencies: LayerNorm 31x301 forward at one thread took
/// 0.93-0.94 of the time, 64x1031 0.97, 8x4096 0.98-1.03; old and new engines in one process).
template <class T>
[[gnu::always_inline]] inline T chunk_centre(const T* first, index_t len) {
    if (len >= simd::width<T>) return T(double(xsimd::hadd(simd::vec<T>::load_unaligned(first))) * (1.0 / double(simd::width<T>)));
    return T(double(simd::sum(first, len)) * (1.0 / double(len)));
}
/// The rest of centred_chunk, from the first pass's sums r and q about c.
template <class T>
[[gnu::always_inline]] inline void centred_finish(const T* const* runs, index_t nruns, index_t len, T c, T r, T q, moments& m) {
    const double count = double(nruns) * double(len);
    // the divide by count is off the chain of dependent latencies: count is known before the
    // data are read
    const double inv = 1.0 / count;
    double shift = double(r) * inv, m2 = double(q) - double(r) * shift;
    if (!(double(r) * shift <= m2)) {
        c = T(double(c) + shift);
        simd::shifted_sums(runs, nruns, len, c, r, q);
        shift = double(r) * inv, m2 = double(q) - double(r) * shift;
    }
    m.merge<false>(count, double(c) + shift, m2);
}
template <class T, class Sums>
[[gnu::always_inline]] inline void centred_chunk(const T* const* runs, index_t nruns, index_t len, moments& m, Sums&& sums) {
    const T c = chunk_centre(runs[0], len);
    T r, q;
    sums(c, r, q);
    centred_finish(runs, nruns, len, c, r, q, m);
}

/// Moments of one chunk, made of nruns contiguous runs of len values (one run of a long row, or
/// a chunk's worth of short runs: BatchNorm's 7x7 planes), merged into m: one pass of shifted
/// sums over all of them in T (a second when the first's centre was far off: centred_chunk).
template <bool Rms, class T>
inline void accumulate_chunk(const T* const* runs, index_t nruns, index_t len, moments& m) {
    if constexpr (Rms) {
        double q = 0;
        for (index_t i = 0; i < nruns; ++i) q += double(simd::squares(runs[i], len));
        m.merge<true>(double(nruns) * double(len), 0.0, q);
    } else {
        centred_chunk(runs, nruns, len, m, [&](T c, T& r, T& q) { simd::shifted_sums(runs, nruns, len, c, r, q); });
    }
}

/// Moments of n values x[0], x[s], ..., merged into m. Contiguous runs use the vector kernels,
/// per chunk one pass of shifted sums (a second when the first's centre was far off), in T;
/// chunks merge in double. Strided runs take two passes one value at a time, in double.
template <bool Rms, class T>
inline void accumulate_run(const T* x, index_t n, index_t s, moments& m) {
    for (index_t c0 = 0; c0 < n; c0 += chunk) {
        const index_t len = std::min(chunk, n - c0);
        const T* p = x + c0 * s;
        if (s == 1) {
            accumulate_chunk<Rms>(&p, 1, len, m);
            continue;
        }
        if constexpr (Rms) {
            double q = 0;
            for (index_t i = 0; i < len; ++i) q += double(p[i * s]) * double(p[i * s]);
            m.merge<true>(double(len), 0.0, q);
        } else {
            double sum = 0;
            for (index_t i = 0; i < len; ++i) sum += double(p[i * s]);
            const double mc = sum / double(len);
            double q = 0, r = 0;
            for (index_t i = 0; i < len; ++i) {
                const double d = double(p[i * s]) - mc;
                q += d * d;
                r += d;
            }
            m.merge<false>(double(len), mc + r / double(len), q - r * r / double(len));
        }
    }
}

/// Centred moments of NB contiguous rows of n values at once, row b's into m[b]: per chunk, the
/// first pass (shifted sums, each row about its own centre) over all NB rows in one loop
/// (simd::shifted_sums_rows), then each row's check and, where its centre was far off, its
/// second pass (centred_finish). The passes of accumulate_run (with two chains per row where it
/// takes four, so the rounding differs), but the rows' chains of latencies overlap: a row of a few hundred values is otherwise bound by its chain, from its
/// first vector (the centre) through the sums to their horizontal adds. Statistics alone, 31
/// rows of 301 floats in cache, two at a time took 0.8-0.9 of the time of one at a time; 512
/// rows of 768 (from L3) 0.97-1.03. (The sums of squares of RMSNorm rows, a shorter chain,
/// two at a time likewise took 0.6-0.8 of the time alone, but the whole RMSNorm forward 1.01-1.11x
/// at 31x301 and 512x768: they go one row at a time.)
template <int NB, class T>
inline void accumulate_rows(const T* const* rows, index_t n, moments* m) {
    for (index_t c0 = 0; c0 < n; c0 += chunk) {
        const index_t len = std::min(chunk, n - c0);
        const T* p[NB];
        T c[NB], r[NB], q[NB];
        for (int b = 0; b < NB; ++b) p[b] = rows[b] + c0, c[b] = chunk_centre(p[b], len);
        simd::shifted_sums_rows<NB>(p, len, c, r, q);
        for (int b = 0; b < NB; ++b) centred_finish(p + b, 1, len, c[b], r[b], q[b], m[b]);
    }
}

/// NV vectors of columns from column j (the last one Tail: only t columns) of `rows` rows, in
/// registers: one pass of shifted sums down the rows, x - c and (x - c)^2 about each column's
/// centre c (the mean of the blocks before, from centre; none for the first block: 0), accepted
/// when every column's block mean lies within one standard deviation of its centre (the
/// variance then keeps float's precision but for a factor 2, as accumulate_chunk's); otherwise a
/// second pass over the block, in L1 by then, takes the deviations from the block's means.
/// merge(column, centre, sum of squares, sum) per column. rms: one pass of squares.
/// (Two passes for every block, the block's sums and then its deviations, measured 1.5x the time
/// of this, GroupNorm NHWC 1x320x64x64 in cache, statistics alone.) For rows in cache: a block's
/// column groups read its rows a few lines at a time, each row once per group, an order the
/// hardware prefetchers follow
/// poorly (measured on one core, 320 channels of 23 MiB: 2x the time of reading in memory order
/// when x comes from memory): rows from memory go row by row instead (column_rows).
/// Kept out of line: inlined into accumulate_block, all of them together measured 8-10 % slower
/// (BatchNorm and InstanceNorm on NHWC, 1x320x64x64, forward, one thread).
template <bool Rms, int NV, bool Tail, class T, class Merge>
[[gnu::noinline]] void column_group(const T* const* row_ptrs, index_t rows, index_t j, index_t t, const double* centre,
                                    Merge&& merge) {
    using V = simd::vec<T>;
    constexpr index_t L = simd::width<T>;
    auto load = [&](const T* p, int v) { return simd::load_at<Tail>(p, j + v * L, t); };
    V m[NV], q[NV], r[NV];
    for (int v = 0; v < NV; ++v) m[v] = q[v] = r[v] = V(T(0));
    if (!Rms && centre) {
        alignas(64) T cb[NV * L] = {};
        for (index_t l = 0; l < (NV - 1) * L + (Tail ? t : L); ++l) cb[l] = T(centre[j + l]);
        for (int v = 0; v < NV; ++v) m[v] = V::load_aligned(cb + v * L);
    }
    // the first pass's step: squares (rms) or shifted sums
    auto first = [&](index_t i) {
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) {
            const V x = load(row_ptrs[i], v);
            if constexpr (Rms) {
                q[v] = xsimd::fma(x, x, q[v]);
            } else {
                const V d = x - m[v];
                r[v] += d;
                q[v] = xsimd::fma(d, d, q[v]);
            }
        }
    };
    for (index_t i = 0; i < rows; ++i) first(i);
    if constexpr (!Rms) {
        const V inv(T(1) / T(rows));
        bool near = true;
        for (int v = 0; v < NV; ++v) {
            const V lin = r[v] * (r[v] * inv);
            near = near && xsimd::all(lin <= q[v] - lin);
        }
        if (!near) {  // the same pass again, about the block's means
            for (int v = 0; v < NV; ++v) m[v] += r[v] * inv, q[v] = r[v] = V(T(0));
            for (index_t i = 0; i < rows; ++i) first(i);
        }
    }
    alignas(64) T bm[L], bq[L], br[L];
    // Built for SSE2 at -O3, g++ 12 takes a lane read after the vector store for an
    // uninitialized one (even with the arrays zeroed first), for double columns with a tail.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
    for (int v = 0; v < NV; ++v) {
        m[v].store_aligned(bm), q[v].store_aligned(bq), r[v].store_aligned(br);
        for (index_t l = 0; l < (Tail ? t : L); ++l) merge(j + v * L + l, double(bm[l]), double(bq[l]), double(br[l]));
    }
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
#pragma GCC diagnostic pop
#endif
}

/// Column moments of a block of `rows` contiguous rows of n columns, row by row in memory order,
/// the sums per column in T in the calling thread's work space: one pass of shifted sums, x - c
/// and (x - c)^2 about each column's centre c (the mean of the blocks before, from centre; none
/// for the first block: 0), accepted for a vector of columns when each of its columns' block
/// mean lies within one standard deviation of its centre (the variance then keeps float's
/// precision but for a factor 2, as accumulate_chunk's); the other vectors take a second pass
/// over the block, in cache by then, about the block's means. merge(column, centre, sum of
/// squares, sum) per column. rms: one pass of squares. (Two passes for every block measured 1.5x
/// the time of one, GroupNorm NHWC 1x320x64x64 in cache, statistics alone.) For rows that come
/// from memory (columns_by_rows): column_group's order, down the rows a few columns at a time,
/// jumps a row's length at every row, which the hardware prefetchers follow poorly.
template <bool Rms, class T, class Merge>
void column_rows(const T* const* row_ptrs, index_t rows, index_t n, const double* centre, Merge&& merge) {
    using V = simd::vec<T>;
    constexpr index_t L = simd::width<T>;
    const index_t nv = (n + L - 1) / L, np = nv * L;
    T* c = detail::kept_space<T, 3>(std::size_t(3 * np)).data();
    T* q = c + np;
    T* r = q + np;
    for (index_t j = 0; j < np; ++j) c[j] = !Rms && centre && j < n ? T(centre[j]) : T(0), q[j] = r[j] = T(0);
    // one row's step over its columns [b, e), b on a vector boundary; masked lanes load 0 and add 0
    auto row = [&](const T* x, index_t b, index_t e) __attribute__((always_inline)) {
        simd::for_vectors<T>(b, e, [&]<bool Tail>(index_t j, index_t t) __attribute__((always_inline)) {
            const V xv = simd::load_at<Tail>(x, j, t);
            if constexpr (Rms) {
                xsimd::fma(xv, xv, V::load_unaligned(q + j)).store_unaligned(q + j);
            } else {
                V d = xv - V::load_unaligned(c + j);
                if constexpr (Tail) d = xsimd::select(simd::lanes_below<T>(t), d, V(T(0)));
                (V::load_unaligned(r + j) + d).store_unaligned(r + j);
                xsimd::fma(d, d, V::load_unaligned(q + j)).store_unaligned(q + j);
            }
        });
    };
    for (index_t i = 0; i < rows; ++i) row(row_ptrs[i], 0, n);
    if constexpr (!Rms) {
        // vectors whose columns' block means lie far from their centres: again, about those means
        const V inv(T(1) / T(rows));
        for (index_t v = 0; v < nv; ++v) {
            const index_t j = v * L;
            const V rv = V::load_unaligned(r + j), qv = V::load_unaligned(q + j), lin = rv * (rv * inv);
            if (xsimd::all(lin <= qv - lin)) continue;
            (V::load_unaligned(c + j) + rv * inv).store_unaligned(c + j);
            V(T(0)).store_unaligned(q + j), V(T(0)).store_unaligned(r + j);
            for (index_t i = 0; i < rows; ++i) row(row_ptrs[i], j, std::min(j + L, n));
        }
    }
    for (index_t j = 0; j < n; ++j) merge(j, double(c[j]), double(q[j]), double(r[j]));
}

/// Column moments: `rows` rows of n values (row r at row_ptrs[r], value j at + j*s) merged into
/// per-column accumulators (count shared, mean[j], m2[j], in double). Contiguous rows go row by
/// row when by_rows (column_rows: rows from memory), else four vectors of columns at a time
/// (column_group), the rest one masked vector; each column merges (Chan) in double. Strided rows
/// take the same steps one column at a time.
template <bool Rms, class T>
inline void accumulate_block(const T* const* row_ptrs, index_t rows, index_t n, index_t s, double& count, double* mean,
                             double* m2, bool by_rows) {
    const double na = count, nb = double(rows), nn = na + nb;
    // merge one column's block moments (sum of squares for rms)
    auto merge = [&](index_t j, double bm, double bq, double br) {
        if constexpr (Rms) {
            m2[j] += bq;
        } else {
            const double bmean = bm + br / nb, bm2 = bq - br * br / nb;
            const double delta = bmean - mean[j];
            mean[j] += delta * (nb / nn);
            m2[j] += bm2 + delta * delta * (na * nb / nn);
        }
    };
    if (s == 1) {
        if (by_rows)
            column_rows<Rms>(row_ptrs, rows, n, na > 0 ? mean : nullptr, merge);
        else
            simd::for_vector_groups<T>(n, [&]<int NV, bool Tail>(index_t j, index_t t) {
                column_group<Rms, NV, Tail>(row_ptrs, rows, j, t, na > 0 ? mean : nullptr, merge);
            });
        count = nn;
        return;
    }
    for (index_t j = 0; j < n; ++j) {
        T a = 0, q = 0, r = 0;
        if constexpr (Rms) {
            for (index_t i = 0; i < rows; ++i) q += row_ptrs[i][j * s] * row_ptrs[i][j * s];
        } else {
            for (index_t i = 0; i < rows; ++i) a += row_ptrs[i][j * s];
            const T m = a / T(rows);
            for (index_t i = 0; i < rows; ++i) {
                const T d = row_ptrs[i][j * s] - m;
                q += d * d;
                r += d;
            }
            a = m;
        }
        merge(j, double(a), double(q), double(r));
    }
    count = nn;
}

}  // namespace normspec::engine

#endif  // NORMSPEC_ENGINE_MOMENTS_HPP

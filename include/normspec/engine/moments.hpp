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

namespace normspec::engine {

struct moments {
    double count = 0, mean = 0, m2 = 0;  // rms: m2 holds the sum of squares, mean is unused

    template <bool Rms>
    void merge(double n_b, double mean_b, double m2_b) {
        if (n_b == 0) return;
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
    double variance() const { return count > 0 ? m2 / count : 0.0; }
    /// Unbiased variance (what goes into a running estimate).
    double unbiased_variance() const { return count > 1 ? m2 / (count - 1) : 0.0; }
};

inline constexpr index_t chunk = 2048;  // 8 KiB of float: a chunk's second read hits L1

/// Moments of n values x[0], x[s], ..., merged into m. Contiguous runs use the vector kernels:
/// per chunk, the sum (four chains), the chunk mean, then squared deviations from it, in T;
/// chunks merge in double. Strided runs take the same steps one value at a time, in double.
template <bool Rms, class T>
inline void accumulate_run(const T* x, index_t n, index_t s, moments& m) {
    for (index_t c0 = 0; c0 < n; c0 += chunk) {
        const index_t len = std::min(chunk, n - c0);
        const T* p = x + c0 * s;
        if (s == 1) {
            if constexpr (Rms) {
                m.merge<true>(double(len), 0.0, double(simd::squares(p, len)));
            } else {
                // one pass first: sums of x - k and (x - k)^2 with k = the mean of the chunk's first
                // vector. The variance from them, q - r^2/len, loses about (r^2/len) / (q - r^2/len)
                // of float's precision; when the mean is within one standard deviation of k (for
                // random data nearly always: k's error is a quarter of one) that is at most a
                // factor 2, and the chunk is done. Otherwise (sorted data, outliers first) the
                // second pass below takes the deviations from the mean just found.
                const index_t head = std::min<index_t>(len, simd::width<T>);
                const T k = T(double(simd::sum(p, head)) / double(head));
                T r1, q1;
                simd::shifted_sums(p, len, k, r1, q1);
                const double shift = double(r1) / double(len), m2 = double(q1) - double(r1) * shift;
                if (double(r1) * shift <= m2) {
                    m.merge<false>(double(len), double(k) + shift, m2);
                    continue;
                }
                const T mc = T(double(k) + shift);
                T q, r;
                simd::deviations(p, len, mc, q, r);
                // r is the rounding residue of mc; removing r^2/len makes q exact to second order.
                m.merge<false>(double(len), double(mc) + double(r) / double(len), double(q) - double(r) * double(r) / double(len));
            }
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

/// Column moments: `rows` rows of n values (row r at row_ptrs[r], value j at + j*s) merged into
/// per-column accumulators (count shared, mean[j], m2[j], in double). The block's column sums
/// are taken row by row (memory read in order); then, for each vector of columns, the squared
/// deviations from the block mean are accumulated in registers (in T) down the rows, which are in
/// L1 by then; each lane merges (Chan) in double. Strided rows take the same steps one column at a time. `scratch` holds 3 * width + n values.
template <bool Rms, class T>
inline void accumulate_block(const T* const* row_ptrs, index_t rows, index_t n, index_t s, double& count, double* mean,
                             double* m2, T* scratch) {
    using V = simd::vec<T>;
    constexpr index_t L = simd::width<T>;
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
    const index_t nv = s == 1 ? n - n % L : 0;  // columns taken a vector at a time
    if constexpr (!Rms) {
        // first pass row by row: memory is read in order, the block's column sums stay in L1
        T* sums = scratch + 3 * L;
        std::fill(sums, sums + nv, T(0));
        for (index_t i = 0; i < rows; ++i)
            for (index_t j = 0; j < nv; j += L)
                (V::load_unaligned(sums + j) + V::load_unaligned(row_ptrs[i] + j)).store_unaligned(sums + j);
    }
    for (index_t j = 0; j < nv; j += L) {
        V a(T(0)), q(T(0)), r(T(0));
        if constexpr (Rms) {
            for (index_t i = 0; i < rows; ++i) {
                const V x = V::load_unaligned(row_ptrs[i] + j);
                q = xsimd::fma(x, x, q);
            }
        } else {
            a = V::load_unaligned(scratch + 3 * L + j);  // the block's sums, taken row by row below
            const V m = a / V(T(rows));
            for (index_t i = 0; i < rows; ++i) {
                const V d = V::load_unaligned(row_ptrs[i] + j) - m;
                q = xsimd::fma(d, d, q);
                r += d;
            }
            m.store_unaligned(scratch);
        }
        q.store_unaligned(scratch + L);
        r.store_unaligned(scratch + 2 * L);
        for (index_t l = 0; l < L; ++l) merge(j + l, double(scratch[l]), double(scratch[L + l]), double(scratch[2 * L + l]));
    }
    for (index_t j = nv; j < n; ++j) {
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

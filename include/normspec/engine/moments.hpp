// normspec/engine/moments.hpp
// Mergeable moments. One accumulator type serves chunks, rows, blocks of rows and threads:
//   centred: (count, mean, M2), merged with Chan et al.'s pairwise update;
//   rms:     (count, sum of squares), merged by addition.
// A run is summed in chunks that stay in L1: the chunk's mean first, then the squared deviations
// from it, both in double. This is a two-pass scheme per chunk (one pass over memory), so the
// large-offset case (float 1e4 + N(0,1)) keeps its variance where E[x^2] - E[x]^2 loses it.
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
                const T mc = T(double(simd::sum(p, len)) / double(len));
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

/// Column moments: `rows` rows of n values (row r at x + r*rs, value j at + j*s) merged into
/// per-column accumulators (count shared, mean[j], m2[j]). Blocked so a block's second read hits L1.
template <bool Rms, class T>
inline void accumulate_block(const T* const* row_ptrs, index_t rows, index_t n, index_t s, double& count,
                               double* mean, double* m2, double* scratch) {
    const index_t block = std::max<index_t>(1, std::min<index_t>(64, (16384 / std::max<index_t>(n, 1))));
    for (index_t r0 = 0; r0 < rows; r0 += block) {
        const index_t nr = std::min(block, rows - r0);
        double* bsum = scratch;  // n values
        std::fill(bsum, bsum + n, 0.0);
        if constexpr (Rms) {
            for (index_t r = r0; r < r0 + nr; ++r) {
                const T* p = row_ptrs[r];
                if (s == 1) {
#pragma omp simd
                    for (index_t j = 0; j < n; ++j) bsum[j] += double(p[j]) * double(p[j]);
                } else {
                    for (index_t j = 0; j < n; ++j) bsum[j] += double(p[j * s]) * double(p[j * s]);
                }
            }
            for (index_t j = 0; j < n; ++j) m2[j] += bsum[j];
            count += double(nr);
        } else {
            for (index_t r = r0; r < r0 + nr; ++r) {
                const T* p = row_ptrs[r];
                if (s == 1) {
#pragma omp simd
                    for (index_t j = 0; j < n; ++j) bsum[j] += double(p[j]);
                } else {
                    for (index_t j = 0; j < n; ++j) bsum[j] += double(p[j * s]);
                }
            }
            const double inv = 1.0 / double(nr);
            for (index_t j = 0; j < n; ++j) bsum[j] *= inv;  // block means
            double* bq = scratch + n;
            std::fill(bq, bq + n, 0.0);
            for (index_t r = r0; r < r0 + nr; ++r) {
                const T* p = row_ptrs[r];
                if (s == 1) {
#pragma omp simd
                    for (index_t j = 0; j < n; ++j) {
                        const double d = double(p[j]) - bsum[j];
                        bq[j] += d * d;
                    }
                } else {
                    for (index_t j = 0; j < n; ++j) {
                        const double d = double(p[j * s]) - bsum[j];
                        bq[j] += d * d;
                    }
                }
            }
            const double na = count, nb = double(nr), nn = na + nb;
#pragma omp simd
            for (index_t j = 0; j < n; ++j) {
                const double delta = bsum[j] - mean[j];
                mean[j] += delta * (nb / nn);
                m2[j] += bq[j] + delta * delta * (na * nb / nn);
            }
            count = nn;
        }
    }
}

}  // namespace normspec::engine

#endif  // NORMSPEC_ENGINE_MOMENTS_HPP

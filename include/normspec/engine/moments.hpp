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

/// Column moments: `rows` rows of n values (row r at row_ptrs[r], value j at + j*s) merged into
/// per-column accumulators (count shared, mean[j], m2[j], in double). The block's sums, its
/// per-column mean and the squared deviations from it are taken in T, a vector of columns at a
/// time when s == 1 (the block stays in L1 for its second read); `scratch` holds 3n values of T.
template <bool Rms, class T>
inline void accumulate_block(const T* const* row_ptrs, index_t rows, index_t n, index_t s, double& count, double* mean,
                             double* m2, T* scratch) {
    using V = simd::vec<T>;
    constexpr index_t L = simd::width<T>;
    T* bs = scratch;          // block sums, then block means
    T* bq = scratch + n;      // squared deviations (rms: squares)
    T* br = scratch + 2 * n;  // deviations: the rounding residue of the block mean
    std::fill(scratch, scratch + 3 * n, T(0));
    const index_t nv = s == 1 ? n - n % L : 0;  // columns taken a vector at a time
    auto each_row = [&](auto&& vec_op, auto&& scalar_op) {
        for (index_t r = 0; r < rows; ++r) {
            const T* p = row_ptrs[r];
            for (index_t j = 0; j < nv; j += L) vec_op(j, V::load_unaligned(p + j));
            for (index_t j = nv; j < n; ++j) scalar_op(j, p[j * s]);
        }
    };
    if constexpr (Rms) {
        each_row([&](index_t j, V x) { xsimd::fma(x, x, V::load_unaligned(bq + j)).store_unaligned(bq + j); },
                 [&](index_t j, T x) { bq[j] += x * x; });
        for (index_t j = 0; j < n; ++j) m2[j] += double(bq[j]);
        count += double(rows);
        return;
    } else {
        each_row([&](index_t j, V x) { (V::load_unaligned(bs + j) + x).store_unaligned(bs + j); }, [&](index_t j, T x) { bs[j] += x; });
        const T inv = T(1) / T(rows);
        for (index_t j = 0; j < n; ++j) bs[j] *= inv;
        each_row(
            [&](index_t j, V x) {
                const V d = x - V::load_unaligned(bs + j);
                xsimd::fma(d, d, V::load_unaligned(bq + j)).store_unaligned(bq + j);
                (V::load_unaligned(br + j) + d).store_unaligned(br + j);
            },
            [&](index_t j, T x) {
                const T d = x - bs[j];
                bq[j] += d * d;
                br[j] += d;
            });
        const double na = count, nb = double(rows), nn = na + nb;
        for (index_t j = 0; j < n; ++j) {
            const double r = double(br[j]);
            const double bmean = double(bs[j]) + r / nb, bm2 = double(bq[j]) - r * r / nb;
            const double delta = bmean - mean[j];
            mean[j] += delta * (nb / nn);
            m2[j] += bm2 + delta * delta * (na * nb / nn);
        }
        count = nn;
    }
}

}  // namespace normspec::engine

#endif  // NORMSPEC_ENGINE_MOMENTS_HPP

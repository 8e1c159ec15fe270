// normspec/engine/simd.hpp
// The vector layer of the kernels: xsimd batches of the widest instruction set the translation
// unit is compiled for (AVX2 with -march=native here, SSE2 at least on x86-64), sums with four
// independent accumulator chains, and stores that stream past the cache when asked to.
#ifndef NORMSPEC_ENGINE_SIMD_HPP
#define NORMSPEC_ENGINE_SIMD_HPP

#include "strided.hpp"

#include <xsimd/xsimd.hpp>

#include <algorithm>
#include <cstdint>
#if defined(__AVX__)
#include <immintrin.h>
#endif

namespace normspec::engine::simd {

template <class T>
using vec = xsimd::batch<T>;

template <class T>
inline constexpr index_t width = index_t(vec<T>::size);

/// f folded over p[0..n) with four independent accumulator chains: acc = f(acc, x)
template <class T, class F>
inline T fold4(const T* p, index_t n, F f) {
    using V = vec<T>;
    constexpr index_t L = width<T>;
    V a(T(0)), b(T(0)), c(T(0)), d(T(0));
    index_t i = 0;
    for (; i + 4 * L <= n; i += 4 * L) {
        a = f(a, V::load_unaligned(p + i));
        b = f(b, V::load_unaligned(p + i + L));
        c = f(c, V::load_unaligned(p + i + 2 * L));
        d = f(d, V::load_unaligned(p + i + 3 * L));
    }
    for (; i + L <= n; i += L) a = f(a, V::load_unaligned(p + i));
    T s = xsimd::hadd((a + b) + (c + d));
    for (; i < n; ++i) s = f(s, p[i]);
    return s;
}

/// sum of p[0..n)
template <class T>
inline T sum(const T* p, index_t n) {
    return fold4(p, n, [](auto acc, auto x) { return acc + x; });
}

/// sum of p[i]^2 over [0, n)
template <class T>
inline T squares(const T* p, index_t n) {
    return fold4(p, n, [](auto acc, auto x) { return xsimd::fma(x, x, acc); });
}

/// sum of (p[i] - m)^2 and of (p[i] - m) over [0, n)
template <class T>
inline void deviations(const T* p, index_t n, T m, T& sq, T& lin) {
    using V = vec<T>;
    constexpr index_t L = width<T>;
    const V mv(m);
    V q0(T(0)), q1(T(0)), r0(T(0)), r1(T(0));
    index_t i = 0;
    for (; i + 2 * L <= n; i += 2 * L) {
        const V d0 = V::load_unaligned(p + i) - mv, d1 = V::load_unaligned(p + i + L) - mv;
        q0 = xsimd::fma(d0, d0, q0);
        q1 = xsimd::fma(d1, d1, q1);
        r0 += d0;
        r1 += d1;
    }
    for (; i + L <= n; i += L) {
        const V d0 = V::load_unaligned(p + i) - mv;
        q0 = xsimd::fma(d0, d0, q0);
        r0 += d0;
    }
    sq = xsimd::hadd(q0 + q1);
    lin = xsimd::hadd(r0 + r1);
    for (; i < n; ++i) {
        const T d = p[i] - m;
        sq += d * d;
        lin += d;
    }
}

/// Stores v at p: a streaming (non-temporal) store when Stream and p is vector-aligned.
template <bool Stream, class T>
inline void store(T* p, const vec<T>& v) {
#if defined(__AVX512F__)
    if constexpr (Stream && vec<T>::size * sizeof(T) == 64) {
        if ((reinterpret_cast<std::uintptr_t>(p) & 63) == 0) {
            if constexpr (std::is_same_v<T, float>)
                _mm512_stream_ps(p, v);
            else
                _mm512_stream_pd(p, v);
            return;
        }
    }
#endif
#if defined(__AVX__)
    if constexpr (Stream && vec<T>::size * sizeof(T) == 32) {
        if ((reinterpret_cast<std::uintptr_t>(p) & 31) == 0) {
            if constexpr (std::is_same_v<T, float>)
                _mm256_stream_ps(p, v);
            else
                _mm256_stream_pd(p, v);
            return;
        }
    }
#endif
    v.store_unaligned(p);
}

/// y[i] = scalar(i) or, a vector at a time, vector(i) for i in [0, n). With Stream, a scalar head
/// first brings y to vector alignment (large allocations are only 16-byte aligned), so the body's
/// stores can stream.
template <bool Stream, class T, class Scalar, class Vector>
inline void for_each_store(T* y, index_t n, Scalar&& scalar, Vector&& vector) {
    constexpr index_t L = width<T>;
    index_t i = 0;
    if constexpr (Stream) {
        const auto bytes = reinterpret_cast<std::uintptr_t>(y) % (L * sizeof(T));
        if (bytes % sizeof(T) == 0 && bytes != 0) {
            const index_t head = std::min<index_t>(n, index_t((L * sizeof(T) - bytes) / sizeof(T)));
            for (; i < head; ++i) y[i] = scalar(i);
        }
    }
    for (; i + L <= n; i += L) store<Stream>(y + i, vector(i));
    for (; i < n; ++i) y[i] = scalar(i);
}

/// Orders streaming stores before what follows (a no-op without them).
inline void fence() {
#if defined(__AVX__)
    _mm_sfence();
#endif
}

}  // namespace normspec::engine::simd

#endif  // NORMSPEC_ENGINE_SIMD_HPP

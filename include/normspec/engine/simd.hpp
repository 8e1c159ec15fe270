// normspec/engine/simd.hpp
// The vector layer of the kernels: xsimd batches of the widest instruction set the translation
// unit is compiled for (with -march=native: AVX-512 or AVX2, whichever the machine has; SSE2 at least
// on x86-64), masked loads and stores for partial vectors, sums with four independent
// accumulator chains, and stores that stream past the cache when asked to.
#ifndef NORMSPEC_ENGINE_SIMD_HPP
#define NORMSPEC_ENGINE_SIMD_HPP

#include "strided.hpp"

// g++ 12 reports '__Y' as uninitialized inside its own avx512fintrin.h (the _mm256_undefined_pd
// behind _mm512_extractf64x4_pd, reached through xsimd's hadd), hundreds of times, at every
// inlined call site; fixed in later releases. Silenced for the text of these headers only, so a
// real uninitialized value in this library's own code still warns.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#include <xsimd/xsimd.hpp>
#pragma GCC diagnostic pop
#else
#include <xsimd/xsimd.hpp>
#endif

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <vector>
#if defined(__AVX__)
#include <immintrin.h>
#endif

namespace normspec::engine::simd {

template <class T>
using vec = xsimd::batch<T>;

namespace detail {
/// Blocks of work space a thread keeps when the engine frees them, for its next call: a call's
/// per-lane arrays (sums, partial sums of each thread, coefficients) are alike from call to call,
/// and with wide rows (2048 channels: 8-160 KiB each, some 40 of them per BatchNorm NHWC backward
/// at two threads) glibc's default settings grew and shrank the heap several times per call
/// (8 brk calls per BatchNorm NHWC backward at 50x2048x7x7 on two threads, 10 per BatchNorm NCHW
/// forward there): that backward took 1.5x the time of the same call with glibc's trim threshold
/// and mmap threshold raised, the forward 1.04-1.10x. Blocks of 4 KiB or more are kept, the
/// smallest that fits taken again; at most `most` blocks and `most_bytes` per thread (what does
/// not fit goes back to the heap), all of them freed when the thread ends.
struct kept_blocks {
    static constexpr std::size_t least = 4096, most_bytes = std::size_t(64) << 20;
    static constexpr int most = 64;
    struct block {
        void* raw;
        std::size_t bytes;
    };
    block held[most];
    int count;
    std::size_t bytes;
    bool closed;  // the thread is ending: free what comes back
    /// The smallest kept block of at least `want` bytes, taken out ({nullptr, 0}: none)
    block take(std::size_t want) {
        int best = -1;
        for (int i = 0; i < count; ++i)
            if (held[i].bytes >= want && (best < 0 || held[i].bytes < held[best].bytes)) best = i;
        if (best < 0) return block{nullptr, 0};
        const block b = held[best];
        bytes -= b.bytes;
        held[best] = held[--count];
        return b;
    }
    /// Keep a block, or say no (false: the caller frees it)
    bool keep(void* raw, std::size_t size) {
        if (closed || size < least || count == most || bytes + size > most_bytes) return false;
        held[count++] = block{raw, size};
        bytes += size;
        return true;
    }
    void release() {
        for (int i = 0; i < count; ++i) ::operator delete(held[i].raw);
        count = 0, bytes = 0, closed = true;
    }
};
// trivially destructible, so a per-lane array that a thread_local outlives can still ask it
inline thread_local constinit kept_blocks thread_blocks{};
/// Frees the thread's kept blocks when the thread ends (registered at the first block kept)
struct kept_blocks_release {
    ~kept_blocks_release() { thread_blocks.release(); }
};
inline thread_local kept_blocks_release thread_blocks_release;
}  // namespace detail

/// An allocator of blocks on 64-byte boundaries, each block's address and size stored just before
/// the aligned one; blocks of 4 KiB or more come from, and go back to, the thread's kept blocks
/// (detail::kept_blocks). (posix_memalign, behind xsimd's aligned allocator, splits a larger
/// chunk and frees what lies around the block: with glibc's default settings the heap then grew
/// and shrank on every call, 3 brk calls per BatchNorm NHWC forward, 1.04-1.09x the time of
/// unaligned arrays at 50x2048x7x7 on two threads.)
template <class T>
struct line_allocator {
    using value_type = T;
    static constexpr std::size_t align = 64, header = 2 * sizeof(void*);
    line_allocator() = default;
    template <class U>
    line_allocator(const line_allocator<U>&) noexcept {}
    T* allocate(std::size_t n) {
        if (n > (std::size_t(-1) - align - header) / sizeof(T)) throw std::bad_array_new_length();
        detail::kept_blocks::block b{nullptr, n * sizeof(T) + align + header};
        if (b.bytes >= detail::kept_blocks::least) {
            const auto kept = detail::thread_blocks.take(b.bytes);
            if (kept.raw) b = kept;
        }
        if (!b.raw) b.raw = ::operator new(b.bytes);
        const auto at = (reinterpret_cast<std::uintptr_t>(b.raw) + header + align - 1) & ~std::uintptr_t(align - 1);
        reinterpret_cast<void**>(at)[-1] = b.raw;
        reinterpret_cast<std::size_t*>(at)[-2] = b.bytes;
        return reinterpret_cast<T*>(at);
    }
    void deallocate(T* p, std::size_t) noexcept {
        void* raw = reinterpret_cast<void**>(p)[-1];
        const std::size_t size = reinterpret_cast<std::size_t*>(p)[-2];
        if (size >= detail::kept_blocks::least) {
            (void)&detail::thread_blocks_release;  // (registers its destructor for this thread)
            if (detail::thread_blocks.keep(raw, size)) return;
        }
        ::operator delete(raw);
    }
    template <class U>
    bool operator==(const line_allocator<U>&) const noexcept { return true; }
};

/// The engine's per-lane arrays (coefficients, column sums, accumulators), which its vector loops
/// load and store a vector at a time: on 64-byte boundaries, so that with AVX-512 no such vector
/// spans two cache lines (std::vector's 16-byte alignment splits every one). Old and new engines
/// in one process, each in both link places, medians of seven, glibc's default settings: with
/// AVX-512, 36 channels-last cases (BatchNorm, GroupNorm and InstanceNorm NHWC forward and
/// backward at 32x64x56x56, 8x256x32x32 and 50x2048x7x7, one and two threads) at 0.49-1.09 of
/// the time, geometric mean 0.88 (BatchNorm NHWC backward 8x256x32x32 0.69-0.72, 32x64x56x56 at
/// one thread 0.83-0.85); built for AVX2 (-march=x86-64-v3), 18 of them at 0.90-1.04, mean 0.98.
template <class T>
using lanes = std::vector<T, line_allocator<T>>;

template <class T>
inline constexpr index_t width = index_t(vec<T>::size);

/// The vector registers of the instruction set: 32 with AVX-512, 16 with AVX2 (and SSE on
/// x86-64). Kernels that hold a block of rows' coefficients, or a group of loads ahead, in
/// registers size the block by it: the blocks first tuned with 32 spill to the stack inside the
/// loop with 16 (normalizing two LayerNorm rows with loads four vectors ahead: 93 stack accesses
/// in the loop on AVX2, none with one vector ahead).
inline constexpr int registers = sizeof(vec<float>) >= 64 ? 32 : 16;

/// f.template operator()<B>() with B = nb, for 1 <= nb <= NB: a kernel for its count (of rows in
/// a block, of vectors in a row).
template <int NB, class F>
inline void with_count(int nb, F&& f) {
    if (nb == NB) return f.template operator()<NB>();
    if constexpr (NB > 1) with_count<NB - 1>(nb, f);
}

/// Rows of at most this many vectors (four with 32 registers, two with 16) keep their per-lane
/// values (sums, coefficients: three or four arrays of them) in registers for the whole sweep.
inline constexpr int row_vectors = registers / 8;

/// The vector 0, 1, 2, ... (each lane's number)
template <class T>
inline vec<T> lane_numbers() {
    alignas(64) static constexpr T iota[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    return vec<T>::load_aligned(iota);
}

/// Lanes [0, n) of a vector: true.
template <class T>
inline xsimd::batch_bool<T> lanes_below(index_t n) {
    return lane_numbers<T>() < vec<T>(T(n));
}

#if defined(__AVX__)
/// AVX masks of the first n lanes, for the masked loads and stores below.
inline __m256i lane_mask32(index_t n) {
    alignas(32) static constexpr std::int32_t table[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(table + 8 - n));
}
inline __m256i lane_mask64(index_t n) {
    alignas(32) static constexpr std::int64_t table[8] = {-1, -1, -1, -1, 0, 0, 0, 0};
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(table + 4 - n));
}
#endif

/// The first n (0 <= n <= width) lanes of p, the others zero; memory past p + n is not touched.
template <class T>
inline vec<T> load_first(const T* p, index_t n) {
    using V = vec<T>;
#if defined(__AVX512F__)
    if constexpr (V::size * sizeof(T) == 64) {
        if constexpr (std::is_same_v<T, float>)
            return V(_mm512_maskz_loadu_ps(__mmask16((1u << n) - 1), p));
        else
            return V(_mm512_maskz_loadu_pd(__mmask8((1u << n) - 1), p));
    }
#endif
#if defined(__AVX__)
    if constexpr (V::size * sizeof(T) == 32) {
        if constexpr (std::is_same_v<T, float>)
            return V(_mm256_maskload_ps(p, lane_mask32(n)));
        else
            return V(_mm256_maskload_pd(p, lane_mask64(n)));
    }
#endif
    alignas(64) T buf[V::size] = {};
    std::copy(p, p + n, buf);
    return V::load_aligned(buf);
}

/// Stores the first n (0 <= n <= width) lanes of v at p; memory past p + n is not touched.
template <class T>
inline void store_first(T* p, index_t n, const vec<T>& v) {
    using V = vec<T>;
#if defined(__AVX512F__)
    if constexpr (V::size * sizeof(T) == 64) {
        if constexpr (std::is_same_v<T, float>)
            _mm512_mask_storeu_ps(p, __mmask16((1u << n) - 1), v);
        else
            _mm512_mask_storeu_pd(p, __mmask8((1u << n) - 1), v);
        return;
    }
#endif
#if defined(__AVX__)
    if constexpr (V::size * sizeof(T) == 32) {
        if constexpr (std::is_same_v<T, float>)
            _mm256_maskstore_ps(p, lane_mask32(n), v);
        else
            _mm256_maskstore_pd(p, lane_mask64(n), v);
        return;
    }
#endif
    alignas(64) T buf[V::size];
    v.store_aligned(buf);
    std::copy(buf, buf + n, p);
}

/// Loads of a run: `full` reads a whole vector at p + i; `first` only the run's last n values.
/// store(p, v) writes v where the load read, through the cache.
template <class T>
struct full_load {
    index_t i;
    vec<T> operator()(const T* p) const { return vec<T>::load_unaligned(p + i); }
    void store(T* p, const vec<T>& v) const { v.store_unaligned(p + i); }
};
template <class T>
struct first_load {
    index_t i, n;
    vec<T> operator()(const T* p) const { return load_first(p + i, n); }
    void store(T* p, const vec<T>& v) const { store_first(p + i, n, v); }
};

/// How many values a load reads
template <class T>
constexpr index_t loaded_width(const full_load<T>&) { return width<T>; }
template <class T>
constexpr index_t loaded_width(const first_load<T>& l) { return l.n; }

/// A whole vector at p + i, or (Tail) only its first t values (the rest zero); and the store of one.
template <bool Tail, class T>
inline vec<T> load_at(const T* p, index_t i, index_t t) {
    if constexpr (Tail)
        return load_first(p + i, t);
    else
        return vec<T>::load_unaligned(p + i);
}
template <bool Tail, class T>
inline void store_at(T* p, index_t i, index_t t, const vec<T>& v) {
    if constexpr (Tail)
        store_first(p + i, t, v);
    else
        v.store_unaligned(p + i);
}

/// f.template operator()<NV, Tail>(j, t) over n columns, in groups of four vectors from column
/// j, then one group of the one to three whole vectors left, then one masked vector of the last
/// t columns (Tail): for kernels that keep NV vectors of sums in registers.
template <class T, class F>
inline void for_vector_groups(index_t n, F&& f) {
    constexpr index_t L = width<T>;
    index_t j = 0;
    for (; j + 4 * L <= n; j += 4 * L) f.template operator()<4, false>(j, L);
    switch ((n - j) / L) {
        case 3: f.template operator()<3, false>(j, L); break;
        case 2: f.template operator()<2, false>(j, L); break;
        case 1: f.template operator()<1, false>(j, L); break;
    }
    j += (n - j) / L * L;
    if (j < n) f.template operator()<1, true>(j, n - j);
}

/// f.template operator()<Tail>(j, t) for the vectors of values [b, e) of a run, b on one of its
/// vector boundaries: whole vectors (t = width), then one masked vector of the t < width values
/// left (Tail).
template <class T, class F>
[[gnu::always_inline]] inline void for_vectors(index_t b, index_t e, F&& f) {
    constexpr index_t L = width<T>;
    index_t j = b;
    for (; j + L <= e; j += L) f.template operator()<false>(j, L);
    if (j < e) f.template operator()<true>(j, e - j);
}

/// step(s[b][c], b, x, in) over the vectors x of NB rows p[b][0..n) at once, C independent
/// chains (states s[b][c]) per row, the rows' steps interleaved, so that one row's chain of
/// latencies overlaps the others'. The vectors left after the groups of C go to chains 0, 1, ...
/// with each chain's index known at compile time (an index known only at run time keeps the
/// chains in memory: one LayerNorm row of 301 floats' shifted sums, the left vectors to chain
/// c++, measured 1.1-2.0x the time of this with one row and four chains); the tail is one masked
/// vector (step.template operator()<true>, whose lanes in `in`, past n loaded as 0) in the last chain.
template <int NB, int C, class T, class S, class Step>
[[gnu::always_inline]] inline void step_rows(const T* const* p, index_t n, S (&s)[NB][C], Step&& step) {
    using V = vec<T>;
    constexpr index_t L = width<T>;
    const xsimd::batch_bool<T> all(true);
    index_t i = 0;
    for (; i + C * L <= n; i += C * L) {
#pragma GCC unroll 8
        for (int c = 0; c < C; ++c)
#pragma GCC unroll 8
            for (int b = 0; b < NB; ++b) step.template operator()<false>(s[b][c], b, V::load_unaligned(p[b] + i + c * L), all);
    }
#pragma GCC unroll 8
    for (int c = 0; c + 1 < C; ++c)
        if (i + L <= n) {
#pragma GCC unroll 8
            for (int b = 0; b < NB; ++b) step.template operator()<false>(s[b][c], b, V::load_unaligned(p[b] + i), all);
            i += L;
        }
    if (i < n) {
        const auto in = lanes_below<T>(n - i);
#pragma GCC unroll 8
        for (int b = 0; b < NB; ++b) step.template operator()<true>(s[b][C - 1], b, load_first(p[b] + i, n - i), in);
    }
}

/// Chains per row of shifted_sums_rows for NB rows at once: the NB * C chains of two vectors
/// each take half the registers, leaving the rest to the row centres and the loads (with 16
/// registers, two rows of four chains each spill: LayerNorm rows, statistics alone, measured
/// 1.1-1.3x the time of two chains each at 31x301, 512x768 and 8x4096).
template <int NB>
inline constexpr int row_chains = std::max(1, registers / (4 * NB));

/// Sum of a vector's lanes, the chains of one row added pairwise first
template <int C, class T, class Get>
[[gnu::always_inline]] inline T add_chains(Get&& get) {
    vec<T> a[C];
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) a[c] = get(c);
#pragma GCC unroll 8
    for (int w = 1; w < C; w *= 2)
#pragma GCC unroll 8
        for (int c = 0; c + w < C; c += 2 * w) a[c] += a[c + w];
    return xsimd::hadd(a[0]);
}

/// f folded over p[0..n) with four independent accumulator chains (step_rows): acc = f(acc, x);
/// lanes past n keep their accumulator.
template <class T, class F>
inline T fold4(const T* p, index_t n, F f) {
    using V = vec<T>;
    V a[1][4] = {{V(T(0)), V(T(0)), V(T(0)), V(T(0))}};
    step_rows<1, 4>(&p, n, a, [&]<bool Tail>(V& acc, int, const V& x, const xsimd::batch_bool<T>& in) {
        if constexpr (Tail)
            acc = xsimd::select(in, f(acc, x), acc);
        else
            acc = f(acc, x);
    });
    return add_chains<4, T>([&](int c) { return a[0][c]; });
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

/// One chain of shifted sums: of x - k and of (x - k)^2
template <class T>
struct shifted {
    vec<T> r = vec<T>(T(0)), q = vec<T>(T(0));
};

/// The shifted sums of NB rows p[b][0..n) (step_rows), row b about k[b], added into s[b]
template <int NB, int C, class T>
[[gnu::always_inline]] inline void add_shifted_sums(const T* const* p, index_t n, const vec<T> (&k)[NB], shifted<T> (&s)[NB][C]) {
    using V = vec<T>;
    step_rows<NB, C>(p, n, s, [&]<bool Tail>(shifted<T>& a, int b, const V& x, const xsimd::batch_bool<T>& in) {
        V d = x - k[b];
        if constexpr (Tail) d = xsimd::select(in, d, V(T(0)));
        a.r += d;
        a.q = xsimd::fma(d, d, a.q);
    });
}

/// lin[b], sq[b]: the sums of row b's chains
template <int NB, int C, class T>
[[gnu::always_inline]] inline void shifted_totals(const shifted<T> (&s)[NB][C], T* lin, T* sq) {
#pragma GCC unroll 8
    for (int b = 0; b < NB; ++b) {
        lin[b] = add_chains<C, T>([&](int c) { return s[b][c].r; });
        sq[b] = add_chains<C, T>([&](int c) { return s[b][c].q; });
    }
}

/// sum of (p[i] - k) and of (p[i] - k)^2 over runs[0..nruns), each of n contiguous values, in
/// one pass with four chains of each
template <class T>
inline void shifted_sums(const T* const* runs, index_t nruns, index_t n, T k, T& lin, T& sq) {
    const vec<T> kv[1] = {vec<T>(k)};
    shifted<T> s[1][4];
    for (index_t i = 0; i < nruns; ++i) add_shifted_sums<1, 4>(runs + i, n, kv, s);
    shifted_totals(s, &lin, &sq);
}

/// The same for NB rows p[b][0..n) at once, row b about k[b] into lin[b] and sq[b]
template <int NB, class T>
inline void shifted_sums_rows(const T* const* p, index_t n, const T* k, T* lin, T* sq) {
    constexpr int C = row_chains<NB>;
    vec<T> kv[NB];
#pragma GCC unroll 8
    for (int b = 0; b < NB; ++b) kv[b] = vec<T>(k[b]);
    shifted<T> s[NB][C];
    add_shifted_sums<NB, C>(p, n, kv, s);
    shifted_totals(s, lin, sq);
}

/// A streaming (non-temporal) store of v at p, which lies on a vector boundary (a plain store
/// where the instruction set has none for this width)
template <class T>
inline void stream_store(T* p, const vec<T>& v) {
#if defined(__AVX512F__)
    if constexpr (vec<T>::size * sizeof(T) == 64) {
        if constexpr (std::is_same_v<T, float>)
            _mm512_stream_ps(p, v);
        else
            _mm512_stream_pd(p, v);
        return;
    }
#endif
#if defined(__AVX__)
    if constexpr (vec<T>::size * sizeof(T) == 32) {
        if constexpr (std::is_same_v<T, float>)
            _mm256_stream_ps(p, v);
        else
            _mm256_stream_pd(p, v);
        return;
    }
#endif
    v.store_aligned(p);
}

/// Stores v at p: a streaming store when Stream and p is vector-aligned.
template <bool Stream, class T>
inline void store(T* p, const vec<T>& v) {
    if constexpr (Stream && vec<T>::size * sizeof(T) >= 32) {
        if ((reinterpret_cast<std::uintptr_t>(p) & (sizeof(vec<T>) - 1)) == 0) return stream_store(p, v);
    }
    v.store_unaligned(p);
}

/// The first n lanes of v at p: a masked store, or, next to streaming stores, plain scalar ones
/// (measured: a masked store into a line that streaming stores also write costs 2.5x on
/// BatchNorm's 64-channel rows).
template <bool Stream, class T>
inline void store_part(T* p, index_t n, const vec<T>& v) {
    if constexpr (Stream) {
        alignas(64) T buf[vec<T>::size];
        v.store_aligned(buf);
        std::copy(buf, buf + n, p);
    } else {
        store_first(p, n, v);
    }
}

/// How many values (at most n) to store at y before y is vector-aligned, so that the stores after
/// them can stream (large allocations are only 16-byte aligned); 0 when y cannot be aligned.
template <class T>
inline index_t stream_head(const T* y, index_t n) {
    constexpr index_t L = width<T>;
    const auto bytes = reinterpret_cast<std::uintptr_t>(y) % (L * sizeof(T));
    if (bytes % sizeof(T) != 0 || bytes == 0) return 0;
    return std::min<index_t>(n, index_t((L * sizeof(T) - bytes) / sizeof(T)));
}

/// y[i .. i + width) = f(load) for i in [0, n), a vector at a time: `load(p)` reads the vector of
/// p that lines up with y + i (full_load, or first_load for a partial vector, whose store is
/// partial too: store_part). With Stream, a head first brings y to vector alignment, so the
/// body's stores can stream.
// Always inlined, as is for_each_flat: called out of line, the loop reads f's captures (its
// pointers) through a reference and, since a store may alias them, reloads them at every
// vector. g++ had put for_each_flat out of line; inlined, the channels-last forward kernels
// (BatchNorm, GroupNorm, InstanceNorm on NHWC) measured 1.0-1.4x faster, order alternated.
template <bool Stream, class T, class F>
[[gnu::always_inline]] inline void for_each_store(T* y, index_t n, F&& f) {
    constexpr index_t L = width<T>;
    index_t i = 0;
    if constexpr (Stream) {
        i = stream_head(y, n);
        if (i) store_part<Stream>(y, i, f(first_load<T>{0, i}));
    }
    for (; i + L <= n; i += L) store<Stream>(y + i, f(full_load<T>{i}));
    if (i < n) store_part<Stream>(y + i, n - i, f(first_load<T>{i, n - i}));
}

/// for_each_store<Stream>(y, n, f) that also reads another run p[0, n) in the same loop, for
/// the sums of p[i] - k and of (p[i] - k)^2 (one chain of each: this sweep is bound by memory):
/// the pipeline of rows out of cache, where the normalize sweep of one row (its x from cache)
/// reads the next row from memory for its statistics, so that reads from memory and streaming
/// stores overlap as in a copy.
template <bool Stream, class T, class F>
[[gnu::always_inline]] inline void for_each_store_summing(T* y, index_t n, const T* p, T k, T& lin, T& sq, F&& f) {
    using V = vec<T>;
    const V kv(k);
    V r(T(0)), q(T(0));
    for_each_store<Stream>(y, n, [&](auto load) {
        V d = load(p) - kv;
        if constexpr (!std::is_same_v<std::decay_t<decltype(load)>, full_load<T>>)
            d = xsimd::select(lanes_below<T>(loaded_width(load)), d, V(T(0)));  // lanes past the run: none
        r += d;
        q = xsimd::fma(d, d, q);
        return f(load);
    });
    lin = xsimd::hadd(r);
    sq = xsimd::hadd(q);
}

/// The same over nruns runs of len values back to back (len >= width), whose coefficients change
/// from run to run: f(load, v), where v[i] is the vector of coefs[i][k * s] for the run k of
/// each lane. A vector spans at most two runs; its lanes before the run's end take that run's
/// value, the rest the next run's, so the stores run over whole lines instead of starting and
/// ending at every run. The two runs' coefficients are held in registers, broadcast once per
/// run, and each vector blends them by one mask from a vector count of the run's values left (a
/// run of 49 values spans about six vectors): broadcasting both runs' values and converting the
/// count for every vector measured slower (see backward.hpp's flat_dx_runs).
template <bool Stream, std::size_t NC, class T, class F>
[[gnu::always_inline]] inline void for_each_run_store(T* y, index_t nruns, index_t len, index_t s, const std::array<const T*, NC>& coefs,
                                                      F&& f) {
    using V = vec<T>;
    const V lanes = lane_numbers<T>(), step = V(T(len));
    V cur[NC], next[NC];
    std::array<V, NC> v;
    index_t r = 0, left = len;  // the run of the vector's first value, and its values from there
    V leftv = V(T(len));
    const index_t second = std::min<index_t>(1, nruns - 1);  // never past the last run
#pragma GCC unroll 8
    for (std::size_t i = 0; i < NC; ++i) cur[i] = V(coefs[i][0]), next[i] = V(coefs[i][second * s]);
    for_each_store<Stream>(y, nruns * len, [&](auto load) __attribute__((always_inline)) {
        const auto here = lanes < leftv;
#pragma GCC unroll 8
        for (std::size_t i = 0; i < NC; ++i) v[i] = xsimd::select(here, cur[i], next[i]);
        const V out = f(load, v);
        const index_t w = loaded_width(load);
        left -= w, leftv -= V(T(w));
        if (left <= 0) {  // at most one run ends in a vector
            ++r, left += len, leftv += step;
            const index_t k = std::min(r + 1, nruns - 1) * s;
#pragma GCC unroll 8
            for (std::size_t i = 0; i < NC; ++i) cur[i] = next[i], next[i] = V(coefs[i][k]);
        }
        return out;
    });
}

/// The same over positions [b, e) of a flat run of rows of c lanes, b on a row's start and e - b
/// whole rows, when a row is at most row_vectors whole vectors: f(load, v) as for_each_run_store's,
/// v the vector's NC coefficients (coefs[i] per lane), held in registers for the whole sweep, where
/// for_each_flat's kernels load them from L1 at every vector. False (nothing done) for other
/// runs, and for streaming stores that would not start on a vector boundary.
template <int NV, bool Stream, std::size_t NC, class T, class F>
[[gnu::always_inline]] inline void for_each_row_held(T* y, index_t b, index_t e, const std::array<const T*, NC>& coefs, F&& f) {
    constexpr index_t L = width<T>;
    std::array<vec<T>, NC> v[NV];
#pragma GCC unroll 4
    for (int k = 0; k < NV; ++k)
#pragma GCC unroll 8
        for (std::size_t i = 0; i < NC; ++i) v[k][i] = vec<T>::load_unaligned(coefs[i] + k * L);
    for (index_t i = b; i < e; i += NV * L)
#pragma GCC unroll 4
        for (int k = 0; k < NV; ++k) {
            const vec<T> out = f(full_load<T>{i + k * L}, v[k]);
            if constexpr (Stream)
                stream_store(y + i + k * L, out);  // y + b was checked: every vector lies on a boundary
            else
                out.store_unaligned(y + i + k * L);
        }
}
template <bool Stream, std::size_t NC, class T, class F>
[[gnu::always_inline]] inline bool for_each_row_held(T* y, index_t b, index_t e, index_t c, const std::array<const T*, NC>& coefs,
                                                     F&& f) {
    constexpr index_t L = width<T>;
    if (c % L != 0 || c > row_vectors * L || b % c != 0 || (e - b) % c != 0) return false;
    if (Stream && reinterpret_cast<std::uintptr_t>(y + b) % sizeof(vec<T>) != 0) return false;
    with_count<row_vectors>(int(c / L), [&]<int NV>() { for_each_row_held<NV, Stream>(y, b, e, coefs, f); });
    return true;
}

/// The same over positions [b, e) of a flat run of rows of c lanes (lane = position mod c), for
/// columns whose rows are contiguous: f(load, j) where j is the lane of the vector's first value,
/// and per-lane arrays hold c + width values (lane k's at k, wrapping round) so that
/// vec::load_unaligned(coef + j) is the vector's coefficients. The stores stream over the whole
/// range instead of restarting at every short row.
template <bool Stream, class T, class F>
[[gnu::always_inline]] inline void for_each_flat(T* y, index_t b, index_t e, index_t c, F&& f) {
    constexpr index_t L = width<T>;
    index_t i = b, j = b % c;
    auto advance = [&](index_t k) {
        i += k;
        for (j += k; j >= c;) j -= c;
    };
    if constexpr (Stream) {
        if (const index_t h = stream_head(y + i, e - i)) {
            store_part<Stream>(y + i, h, f(first_load<T>{i, h}, j));
            advance(h);
        }
    }
    if (!Stream && c >= 3 * L) {
        // Stores through the cache, rows of three vectors or more: the vectors up to the lane's
        // wrap (or the end) in an inner loop that only counts, the wrap once per row. Against the
        // masked wrap below, old and new in one process, each in both link places, four rounds:
        // BatchNorm NHWC evaluation in cache 1x320x64x64 0.69-0.94 of the time at one thread and
        // 0.79-0.95 at two, 2x64x56x56 0.60-0.86, 8x256x32x32 0.78-1.00 (two threads 0.85-1.08),
        // training 1x320x64x64 0.88-1.01, InstanceNorm NHWC 1x320x64x64 0.93-0.94, GroupNorm
        // NHWC 8x256x32x32 and the backward's dx 0.97-1.05. Rows of 8 and 16 lanes measured
        // 1.15-1.9x the time (one or two vectors per row then pay the wrap's branch), 20 lanes
        // 1.0-1.1, 24 0.76: narrower rows keep the mask. (Since y streams past 1/4 of the
        // last-level cache per thread, 1x320x64x64 at one thread streams and takes the mask.)
        // So do streaming stores, bound by memory:
        // there this form measured no gain (BatchNorm NHWC evaluation 32x64x56x56 and
        // 50x2048x7x7, GroupNorm NHWC 2x320x96x96: 0.87-1.13) and 1.02-1.37x the time on
        // InstanceNorm NHWC 32x64x56x56's pipeline at one thread.
        for (;;) {
            const index_t k = std::min((c - j + L - 1) / L, (e - i) / L);  // vectors from lane j on
            if (k <= 0) break;
            for (const index_t stop = i + k * L; i < stop; i += L, j += L) store<Stream>(y + i, f(full_load<T>{i}, j));
            if (j >= c) j -= c;
        }
    } else if (c >= L) {
        // A vector steps past the last lane at most once: the lane wraps without a branch.
        // advance's loop (below, for fewer lanes) branches once per row of lanes, and g++ laid
        // it out with two more taken jumps per vector; this form measured 0.85-0.91 of the time
        // on the channels-last forward kernels (BatchNorm NHWC evaluation 32x64x56x56 and
        // 50x2048x7x7, InstanceNorm 32x64x56x56, at one and two threads), 0.95-1.0 on GroupNorm
        // 2x320x96x96 and on the backward, never slower (old and new in one process, each in
        // both link places); since then rows of three vectors or more through the cache take the
        // form above.
        for (; i + L <= e; i += L) {
            store<Stream>(y + i, f(full_load<T>{i}, j));
            j += L;
            j -= c & -index_t(j >= c);  // as a mask, or g++ makes it a branch again
        }
    } else {
        for (; i + L <= e; advance(L)) store<Stream>(y + i, f(full_load<T>{i}, j));
    }
    if (i < e) store_part<Stream>(y + i, e - i, f(first_load<T>{i, e - i}, j));
}

/// Asks for the line 4 KiB past p, marked non-temporal (prefetchnta), for data streamed from
/// memory once: a flat run over columns reads its per-lane coefficients from L1 at every vector,
/// and with many columns (2048: 24 KiB of them) the stream of x otherwise evicts them.
/// fwd_eval/batch_norm/NHWC/50x2048x7x7/t1 measured 1.6x faster with it, same run. A flat run of
/// short planes (BatchNorm NCHW 50x2048x7x7), whose per-vector choice of coefficients holds each
/// load back, takes it too: 0.80-0.89 of the time in evaluation, 0.94 in training (one and two
/// threads, old and new engines in one process). 4 KiB ahead against 2 KiB, each call after a
/// 64 MiB sweep (old and new engines in one process, built with -falign-loops=64, each in both
/// places, two runs): BatchNorm NHWC 50x2048x7x7 evaluation 0.90-1.00 of the time, NCHW
/// evaluation 0.85-1.01, NHWC backward 0.94-0.99; in cache and at 8 KiB no clear difference.
template <class T>
inline void prefetch_stream(const T* p) {
    __builtin_prefetch(reinterpret_cast<const char*>(p) + 4096, 0, 0);
}

/// Asks for the line at p into L1 (prefetcht0): the pipelines' next kept index, whose sums follow
/// the sweep that asks for it.
template <class T>
inline void prefetch_near(const T* p) {
    __builtin_prefetch(p, 0, 3);
}

/// v repeated to c + width values, for for_each_flat
template <class T>
inline lanes<T> wrapped(const T* v, index_t c) {
    lanes<T> w(v, v + c);
    w.resize(std::size_t(c + width<T>));
    // w[k] = v[k mod c], without a divide per value: each value past c repeats the one c before it
    for (std::size_t k = std::size_t(c); k < w.size(); ++k) w[k] = w[k - std::size_t(c)];
    return w;
}

/// Orders streaming stores before what follows (a no-op without them).
inline void fence() {
#if defined(__AVX__)
    _mm_sfence();
#endif
}

}  // namespace normspec::engine::simd

#endif  // NORMSPEC_ENGINE_SIMD_HPP

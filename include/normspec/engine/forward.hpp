// normspec/engine/forward.hpp
// The forward pass for any spec on any layout, in two sweeps over x:
//   1. statistics: per statistic, mergeable moments; the innermost loop is either a reduced run
//      (rows) or a kept run (columns, one accumulator per lane). Threads take kept indices, or,
//      when there are fewer kept indices than threads, split the reduction and merge (Chan);
//   2. normalize: rstd and gamma folded into one per-statistic scale (beta the shift) when the
//      parameters live on kept axes, so each element costs a subtract and a multiply-add:
//      y = (x - mean) * scale + shift; otherwise ((x - mean) * rstd + shift) * gamma + beta.
//      Outputs go out with streaming stores once each thread's share of x and y passes 1/4 of
//      the last-level cache (all of x and y past 3/8 of it, where the kept indices then form a
//      pipeline).
// Nothing here names an alias: the plan's loop dims are all the kernels see.
#ifndef NORMSPEC_ENGINE_FORWARD_HPP
#define NORMSPEC_ENGINE_FORWARD_HPP

#include "moments.hpp"
#include "odometer.hpp"
#include "plan.hpp"

#include <array>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <unistd.h>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace normspec::engine {

inline int max_threads() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}
namespace detail {
inline thread_local bool solo = false;  // running a team of one without a parallel region
}

/// The size of the team actually running: OpenMP may give fewer threads than asked for (dynamic
/// adjustment, nesting, thread limits), so work is always split by this, never by the request.
inline int team_size() {
    if (detail::solo) return 1;
#ifdef _OPENMP
    return omp_get_num_threads();
#else
    return 1;
#endif
}
inline int thread_id() {
    if (detail::solo) return 0;
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/// Runs body on a team of nt threads (OpenMP), or directly on this thread when nt is 1: a
/// parallel region of one thread still costs a microsecond or so, a small call's whole budget.
/// Inside body, thread_id() and team_size() describe the team, also when it is this thread
/// alone inside someone else's parallel region.
template <class Body>
inline void team(int nt, Body&& body) {
    const bool was = detail::solo;
    if (nt <= 1) {
        detail::solo = true;
        body();
        detail::solo = was;
        return;
    }
#pragma omp parallel num_threads(nt)
    {
        const bool outer = detail::solo;
        detail::solo = false;
        body();
        detail::solo = outer;
    }
}

/// Inside team()'s body: waits for the team's other threads (none when it is this thread alone).
inline void team_barrier() {
    if (team_size() > 1) {
#pragma omp barrier
    }
}

template <class T>
struct forward_args {
    strided<const T> x;
    strided<T> y;
    const T* gamma = nullptr;  // packed, canonical parameter order; nullptr: none
    const T* beta = nullptr;
    T* running_mean = nullptr;  // packed, statistic layout; nullptr: none
    T* running_var = nullptr;
    T* save_mean = nullptr;  // packed, statistic layout; nullptr: not wanted
    T* save_rstd = nullptr;
    double eps = 1e-5;
    double momentum = 0.1;
    bool train = true;
    int threads = 0;  // 0: OpenMP's default
    /// 0: choose; 1: statistics and normalization per kept index (when the batch statistics are
    /// computed); 2: two sweeps over the whole tensor.
    int schedule = 0;
};

namespace detail {

/// A cache size as text: a number of bytes, or with a K, M or G suffix (sysfs writes "32768K").
/// 0 when the text is not one.
inline double cache_size_of(const std::string& text) {
    char* end = nullptr;
    const double v = std::strtod(text.c_str(), &end);
    if (end == text.c_str() || !(v > 0)) return 0;
    const std::string unit(end);
    const double scale = unit.empty() ? 1.0 : unit == "K" ? 1024.0 : unit == "M" ? 1024.0 * 1024 : unit == "G" ? 1024.0 * 1024 * 1024 : 0.0;
    return v * scale;
}

/// The largest last-level cache one x86 core complex has (AMD's stacked-cache parts: 96 MiB). A
/// larger L3 from sysconf is a host's total that a guest's CPUID reports: 508 MiB on a 2-core
/// guest of a Zen 5 host whose one-core reads fall from 84 GB/s at 16 MiB to 49 GB/s at 32 MiB.
inline constexpr double largest_complex_llc = 96.0 * 1024 * 1024;
inline constexpr double default_llc = 32.0 * 1024 * 1024;

/// The last-level cache one core sees, from what the machine says, in this order: the environment
/// variable NORMSPEC_LLC_BYTES (`env`, nullptr or empty: unset; bytes, or K/M/G; anything else
/// throws, naming the variable); sysfs's L3, or L2 when there is no L3 (`sysfs`, 0: none); glibc's
/// sysconf (`sysconf_l3`, 0 or less: none), which can be the host's total, so past
/// largest_complex_llc it is taken as that and replaced by default_llc; else default_llc.
inline double llc_bytes_from(const char* env, double sysfs, double sysconf_l3) {
    if (env && *env) {
        const double v = cache_size_of(env);
        if (v <= 0)
            throw std::invalid_argument(std::string("normspec: NORMSPEC_LLC_BYTES is '") + env +
                                        "'; expected the last-level cache's size in bytes, or with a K, M or G suffix (32M)");
        return v;
    }
    if (sysfs > 0) return sysfs;
    if (sysconf_l3 > 0 && sysconf_l3 <= largest_complex_llc) return sysconf_l3;
    return default_llc;
}

/// The last-level cache one core sees (llc_bytes_from on this machine's sysfs and sysconf), read
/// once: the bound past which outputs stream and column sweeps go row by row.
inline double llc_bytes() {
    static const double bytes = [] {
        double sysfs = 0;
        for (int index = 3; index >= 2 && sysfs <= 0; --index) {
            std::ifstream f("/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index) + "/size");
            std::string text;
            if (f >> text) sysfs = cache_size_of(text);
        }
        return llc_bytes_from(std::getenv("NORMSPEC_LLC_BYTES"), sysfs, double(::sysconf(_SC_LEVEL3_CACHE_SIZE)));
    }();
    return bytes;
}

/// Whether a column sweep over `bytes` of rows of n values of T goes row by row (column_rows)
/// rather than a few columns at a time down each block of rows (column_group): when the rows
/// come from memory and are wider than two groups of four vectors (narrower, the groups read a
/// block nearly in memory order). From memory: past a quarter of the last-level cache, or when
/// the call's output streams (`streaming`: each thread's share of x and y passes 1/4 of it, so
/// a slab read per kept index comes from memory even when it is small). Old and new engines in
/// one process, alternating calls, against column groups that asked for the next block's rows
/// in L2 along the way: BatchNorm NHWC 50x2048x7x7 at 0.76-0.90 of the time, GroupNorm NHWC
/// 2x320x96x96 at 0.84-0.91 (forward, one and two threads, three runs); at 64 channels
/// (BatchNorm NHWC 32x64x56x56) 0.91-0.98 at one thread but 1.05-1.17x at two, and in cache
/// (1x320x64x64) 0.89-1.07 at one thread but 1.17-1.23x at two, so those keep the column
/// groups. Streaming calls at 8x256x32x32, one thread (at two they do not stream): GroupNorm's
/// 1 MiB slabs 0.88-1.04 of the time, BatchNorm 0.90-1.02 warm and 0.83-0.97 after a 64 MiB
/// sweep (both engines built with -falign-loops=64, each in both places of the process, three
/// and four runs: built without it, the same code measured up to 1.22x apart depending on where
/// it was linked). (The backward's column sums go a slab of a few vectors at a time down blocks
/// of at most 64 rows, in and out of cache: lane_sums.)
template <class T>
inline bool columns_by_rows(double bytes, index_t n, bool streaming) {
    return (streaming || bytes > 0.25 * llc_bytes()) && n > 8 * simd::width<T>;
}

/// f(pointers, count) over the rows of R[r0, r1) (row r at base + r.x), `per` rows at a time
/// (for_blocks); rows is reused storage.
template <class T, class F>
void for_row_batches(const loop_dims& R, index_t r0, index_t r1, const T* base, index_t per,
                     std::vector<const T*>& rows, F&& f) {
    for_blocks(R, r0, r1, per, rows, [base](const offsets& r) { return base + r.x; }, f);
}

/// Nothing before a block of column_moments
struct no_block_work {
    template <class P>
    void operator()(P, index_t) const {}
};

/// Per-column moments of rows [r0, r1) of R (row r at base + r.x; n columns at step s), taken in
/// blocks of column_block_rows(n) rows (accumulate_block, row by row when columns_by_rows; the
/// call's output streams when `streaming`); mean and m2 are reset first; returns the row count.
/// rows is reused storage for the row pointers. before(row pointers, count) runs before each
/// block's moments (pipelined_columns: the previous kept index's same rows normalized).
template <bool Rms, class T, class Before = no_block_work>
double column_moments(const loop_dims& R, index_t r0, index_t r1, const T* base, index_t n, index_t s,
                      double* mean, double* m2, std::vector<const T*>& rows, bool streaming, Before&& before = {}) {
    const index_t block = column_block_rows(n);
    const bool by_rows = columns_by_rows<T>(double(r1 - r0) * double(n) * sizeof(T), n, streaming);
    std::fill(mean, mean + n, 0.0);
    std::fill(m2, m2 + n, 0.0);
    double count = 0;
    for_row_batches(R, r0, r1, base, block, rows, [&](const T* const* p, index_t k) {
        before(p, k);
        accumulate_block<Rms>(p, k, n, s, count, mean, m2, by_rows);
    });
    return count;
}

/// Moments of the reduced runs of R[r0, r1) (run r at base + r.x: n values at step s) merged
/// into m. Contiguous runs shorter than half a chunk (BatchNorm's 7x7 planes) are summed a
/// chunk's worth at a time in one set of vector sums, instead of one horizontal sum and one
/// merge per run; a single run (R empty: rows) goes to its chunks directly (batching it and
/// walking R's odometer cost up to a quarter of a 256-value row's time in cache). runs is reused
/// storage for their pointers.
template <bool Rms, class T>
void runs_moments(const loop_dims& R, index_t r0, index_t r1, const T* base, index_t n, index_t s, moments& m,
                  std::vector<const T*>& runs) {
    if (R.empty()) {  // one run (rows): nothing to batch
        if (r0 < r1) accumulate_run<Rms>(base, n, s, m);
        return;
    }
    if (s != 1 || 2 * n > chunk)
        return for_range(R, r0, r1, [&](const offsets& r) { accumulate_run<Rms>(base + r.x, n, s, m); });
    for_row_batches(R, r0, r1, base, chunk / n, runs, [&](const T* const* p, index_t k) { accumulate_chunk<Rms>(p, k, n, m); });
}

/// The shortest contiguous run whose output streams on its own: a shorter one would start and
/// end with plain stores in lines its streaming stores also write (the forward's 7x7 planes
/// measured 3.7x slower; decide). Shorter runs stream only as one flat run per row (flat_runs)
/// or in blocks of groups (group_blocks); the backward's dx follows the same bound.
inline constexpr index_t stream_run_min = 256;

/// Short reduced runs back to back, each a kept index's (BatchNorm's 7x7 planes, unfused:
/// [.., keep C, reduce H*W], C's stride the run's length, in x and y): one flat run per row of the
/// loops outside them, in which the coefficients change every len values. With len at least a
/// vector, a vector spans at most two runs and blends their coefficients, so the stores run over
/// whole lines (and can stream) instead of starting and ending at every run. Below stream_run_min:
/// longer runs stream on their own.
template <class T>
inline bool flat_runs(const loop_dims& outer, const loop_dim& inner) {
    if (outer.empty()) return false;
    const loop_dim& d = outer.back();
    return inner.reduced && !d.reduced && inner.sx == 1 && inner.sy == 1 && d.sx == inner.extent && d.sy == inner.extent &&
           inner.extent >= simd::width<T> && inner.extent < stream_run_min;
}

/// Moments of such short runs, taken in memory order (BatchNorm NCHW's 7x7 planes: sample by
/// sample, each channel's plane), where statistic by statistic the reads would jump a sample's
/// length at every plane: per statistic, each run's sums about a centre (the mean of the first
/// run's first vector) in T, added up in double. Threads take kept indices (each a span of every
/// row). A statistic whose mean lies far from its centre (sorted data, outliers first: the
/// variance would lose precision) takes its runs again, statistic by statistic, about their own
/// chunks' means.
template <bool Rms, class T>
simd::lanes<moments> runs_statistics(const plan& p, const T* x, index_t stat_count, int nt) {
    simd::lanes<moments> out(static_cast<std::size_t>(stat_count));
    const loop_dim inner = p.stats.back(), kd = p.stats[p.stats.size() - 2];
    const loop_dims rows(p.stats.begin(), p.stats.end() - 2);  // reduced: no statistic offset
    const index_t nrows = count_of(rows), len = inner.extent;
    const double count = double(nrows) * double(len);
    team(nt, [&] {
        const auto [kb, ke] = split(kd.extent, thread_id(), team_size());
        if (kb == ke) return;
        const std::size_t nk = std::size_t(ke - kb);
        simd::lanes<T> centre(nk, T(0));
        simd::lanes<double> lin(nk, 0.0), sq(nk, 0.0);
        bool first = true;
        for_range(rows, 0, nrows, [&](const offsets& o) {
            const T* run = x + o.x + kb * kd.sx;
            if (!Rms && first) {
                const index_t head = std::min<index_t>(len, simd::width<T>);
                for (std::size_t k = 0; k < nk; ++k)
                    centre[k] = T(double(simd::sum(run + index_t(k) * kd.sx, head)) * (1.0 / double(head)));
                first = false;
            }
            for (std::size_t k = 0; k < nk; ++k, run += kd.sx) {
                if constexpr (Rms) {
                    sq[k] += double(simd::squares(run, len));
                } else {
                    T r, q;
                    simd::shifted_sums(&run, 1, len, centre[k], r, q);
                    lin[k] += double(r), sq[k] += double(q);
                }
            }
        });
        std::vector<const T*> runs;
        for (std::size_t k = 0; k < nk; ++k) {
            moments& m = out[std::size_t((kb + index_t(k)) * kd.sstat)];
            if constexpr (Rms) {
                m.merge<true>(count, 0.0, sq[k]);
            } else {
                const double shift = lin[k] / count, m2 = sq[k] - lin[k] * shift;
                if (lin[k] * shift <= m2)
                    m.merge<false>(count, double(centre[k]) + shift, m2);
                else  // the mean more than a standard deviation from the centre
                    runs_moments<Rms>(rows, 0, nrows, x + (kb + index_t(k)) * kd.sx, len, 1, m, runs);
            }
        }
    });
    return out;
}

/// The statistics' loops are short runs back to back under reduced rows: runs_statistics.
template <class T>
inline bool runs_in_memory_order(const plan& p) {
    if (p.stats.size() < 2) return false;
    const loop_dims outer(p.stats.begin(), p.stats.end() - 1);
    for (std::size_t i = 0; i + 1 < outer.size(); ++i)
        if (!outer[i].reduced) return false;
    return flat_runs<T>(outer, p.stats.back());
}

/// Moments of every statistic, indexed by statistic offset; in_order: the decision's
/// stats_in_order (runs_statistics); streaming: the normalize sweep's stores stream (for
/// column_moments).
template <bool Rms, class T>
simd::lanes<moments> statistics(const plan& p, const T* x, index_t stat_count, int nt, bool in_order, bool streaming) {
    if (in_order) return runs_statistics<Rms>(p, x, stat_count, nt);
    simd::lanes<moments> out(static_cast<std::size_t>(stat_count));
    const loop_dim inner = p.stats.back();
    const outer_loops outer = outer_of(p.stats, 1);
    const loop_dims& K = outer.K;
    const loop_dims& R = outer.R;
    const index_t nk = count_of(K), nr = count_of(R), n = inner.extent;
    const index_t per_k = inner.reduced ? 1 : n;

    // Moments of kept index `k` over reduced rows [r0, r1) and inner positions [i0, i1),
    // merged into acc[0 .. per_k).
    auto partial = [&](const offsets& k, index_t r0, index_t r1, index_t i0, index_t i1, moments* acc) {
        std::vector<const T*> rows;
        if (inner.reduced) return runs_moments<Rms>(R, r0, r1, x + k.x + i0 * inner.sx, i1 - i0, inner.sx, acc[0], rows);
        simd::lanes<double> mean(n), m2(n);
        const double count = column_moments<Rms>(R, r0, r1, x + k.x, n, inner.sx, mean.data(), m2.data(), rows, streaming);
        for (index_t j = 0; j < n; ++j) acc[j].template merge<Rms>(count, mean[j], m2[j]);
    };

    if (nk >= nt || nt == 1) {
        team(nt, [&] {
            const auto [b, e] = split(nk, thread_id(), team_size());
            for_range(K, b, e, [&](const offsets& k) {
                simd::lanes<moments> acc(per_k);
                partial(k, 0, nr, 0, n, acc.data());
                for (index_t j = 0; j < per_k; ++j) out[k.stat + j * inner.sstat] = acc[j];
            });
        });
        return out;
    }
    // Fewer kept indices than threads: split the reduction, then merge the partial moments.
    const bool split_rows = nr >= nt || !inner.reduced;
    simd::lanes<moments> parts(static_cast<std::size_t>(nt * nk * per_k));
    team(nt, [&] {
        const int t = thread_id(), team = team_size();  // parts of absent threads stay empty
        index_t ki = 0;
        for_range(K, 0, nk, [&](const offsets& k) {
            moments* acc = &parts[(t * nk + ki++) * per_k];
            if (split_rows) {
                const auto [b, e] = split(nr, t, team);
                partial(k, b, e, 0, n, acc);
            } else {
                const auto [b, e] = split(n, t, team);
                partial(k, 0, nr, b, e, acc);
            }
        });
    });
    index_t ki = 0;
    for_range(K, 0, nk, [&](const offsets& k) {
        for (index_t j = 0; j < per_k; ++j) {
            moments m;
            for (int t = 0; t < nt; ++t) m.template merge<Rms>(parts[(t * nk + ki) * per_k + j]);
            out[k.stat + j * inner.sstat] = m;
        }
        ++ki;
    });
    return out;
}

/// Per-statistic coefficients of the normalize sweep: y = (x - mu) * sc + sh, then * g + bt when
/// the parameters vary along reduced axes. The mean is subtracted before scaling, and what
/// rounding it to T lost (mean - mu) is folded into sh: with float data at 1e4 + N(0,1),
/// x - mu is exact, where x * sc - mean * sc, or a float mean alone, would cost 1e-4 of y.
template <class T>
struct coefficients {
    simd::lanes<T> store;  // one allocation for the three (sh starts at zero)
    T *mu, *sc, *sh;
    explicit coefficients(index_t n)
        : store(std::size_t(3 * n), T(0)), mu(store.data()), sc(mu + n), sh(sc + n) {}
};

/// f(op) with the kernel of a contiguous run whose statistic is one for the whole run, y = op(load)
/// a vector at a time (simd::for_each_store): coefficients mu[0], sc[0], sh[0]; parameters g, bt
/// along the run (sp 1: LayerNorm, RMSNorm), one for all of it (sp 0), or none (g nullptr). The
/// kernels' lambdas capture by value: a vector store may alias any memory, so what they read
/// through references (pointers, broadcast coefficients) would be reloaded after every store.
template <class T, class F>
[[gnu::always_inline]] inline void with_run_op(const T* x, const T* mu, const T* sc, const T* sh, const T* g, const T* bt,
                                               index_t sp, F&& f) {
    using V = simd::vec<T>;
    if (g == nullptr || sp == 0) {  // planes and rows without parameters along them
        const T a = g ? sc[0] * g[0] : sc[0];
        const V mv(mu[0]), av(a), cv((g ? sh[0] * g[0] : sh[0]) + (bt ? bt[0] : T(0)));
        return f([=](auto load) { return xsimd::fma(load(x) - mv, av, cv); });
    }
    const V mv(mu[0]), av(sc[0]), cv(sh[0]);  // rows with parameters along them
    if (bt) return f([=](auto load) { return xsimd::fma(xsimd::fma(load(x) - mv, av, cv), load(g), load(bt)); });
    f([=](auto load) { return xsimd::fma(load(x) - mv, av, cv) * load(g); });
}

/// One innermost run: mu/sc/sh step ss, g/bt step sp (g, bt nullptr: none).
template <bool Stream, class T>
inline void apply_run(const T* x, T* y, index_t n, index_t sx, index_t sy, const T* mu, const T* sc, const T* sh, index_t ss,
                      const T* g, const T* bt, index_t sp) {
    if (sx == 1 && sy == 1) {
        if (ss == 0 && (g == nullptr || sp == 0 || sp == 1))
            return with_run_op(x, mu, sc, sh, g, bt, sp, [&](auto op) { simd::for_each_store<Stream>(y, n, op); });
        if (ss == 1 && g == nullptr) {  // columns: a statistic per lane (BatchNorm on NHWC)
            simd::for_each_store<Stream>(y, n, [=](auto load) { return xsimd::fma(load(x) - load(mu), load(sc), load(sh)); });
            return;
        }
    }
    for (index_t i = 0; i < n; ++i) {
        T v = (x[i * sx] - mu[i * ss]) * sc[i * ss] + sh[i * ss];
        if (g) v = v * g[i * sp] + (bt ? bt[i * sp] : T(0));
        y[i * sy] = v;
    }
}

/// A contiguous run y = op(x) as apply_run, with streaming stores, whose sweep also reads the
/// same run of the next kept index, nx[0, n), from memory for its moments (merged into m): a
/// chunk at a time (centred_chunk; rms: the sum of squares), the first chunk ending where y's
/// first vector boundary lies, so that only the run's end stores a partial vector.
template <bool Rms, class T>
inline void apply_run_summing(const T* x, T* y, index_t n, const T* mu, const T* sc, const T* sh, const T* g, const T* bt,
                              index_t sp, const T* nx, moments& m) {
    const index_t head = simd::stream_head(y, n);
    for (index_t b = 0, e = head ? head : std::min(n, chunk); b < n; b = e, e = std::min(n, b + chunk)) {
        const T* p = nx + b;
        const index_t len = e - b;
        with_run_op(x + b, mu, sc, sh, g ? g + b * sp : nullptr, bt ? bt + b * sp : nullptr, sp, [&](auto op) {
            if constexpr (Rms) {
                T lin, q;
                simd::for_each_store_summing<true>(y + b, len, p, T(0), lin, q, op);
                m.merge<true>(double(len), 0.0, double(q));
            } else {
                centred_chunk(&p, 1, len, m, [&](T c, T& r, T& q) { simd::for_each_store_summing<true>(y + b, len, p, c, r, q, op); });
            }
        });
    }
}

/// Rows with parameters along them (LayerNorm, RMSNorm, LayerNorm over C, H, W), fused, with
/// streaming stores: one thread's kept indices K[kb, ke) as a pipeline a chunk at a time. The
/// previous row's chunk is normalized (its x from cache, gamma and beta along it) while the same
/// chunk of this row is asked for into L1, whose moments follow (accumulate_chunk: the chunks of
/// accumulate_run, so the same values); the last row's sweep runs alone. Against two rows at a
/// time in two sweeps each (apply_rows), old and new engines in one process, both built with
/// -falign-loops=64, each in both places: LayerNorm 4096x4096 0.73-0.82 of the time (one and two
/// threads), 2048x1024 0.29-0.91 (one thread; at two it does not stream) and 32x200704 (LayerNorm
/// over C, H, W) 0.77-0.88. (Reading the next row in the normalize loop itself, without the
/// prefetch, measured slower than two sweeps: pipelined_rows.)
template <bool Rms, class T, class Known>
void pipelined_parameter_rows(const loop_dims& K, index_t kb, index_t ke, index_t n, const T* x, T* y, const coefficients<T>& k,
                              const T* g, const T* bt, Known&& known) {
    offsets prev{};
    bool first = true;
    for_range(K, kb, ke, [&](const offsets& kk) {
        moments m;
        const T* nx = x + kk.x;
        for (index_t b = 0; b < n; b += chunk) {
            const index_t len = std::min(chunk, n - b);
            const T* p = nx + b;
            if (!first)
                with_run_op(x + prev.x + b, k.mu + prev.stat, k.sc + prev.stat, k.sh + prev.stat, g + prev.param + b,
                            bt ? bt + prev.param + b : nullptr, 1, [&](auto op) {
                                simd::for_each_store<true>(y + prev.y + b, len, [=](auto load) {
                                    simd::prefetch_near(p + load.i);
                                    return op(load);
                                });
                            });
            accumulate_chunk<Rms>(&p, 1, len, m);
        }
        known(kk.stat, m, kk.param);
        prev = kk, first = false;
    });
    if (!first)  // the last row's sweep alone
        apply_run<true>(x + prev.x, y + prev.y, n, 1, 1, k.mu + prev.stat, k.sc + prev.stat, k.sh + prev.stat, 0, g + prev.param,
                        bt ? bt + prev.param : nullptr, 1);
}

/// NB rows that share their parameters along the row (LayerNorm, RMSNorm): one sweep loads each
/// vector of gamma and beta once for all NB rows, which halves the loads per element; row r has
/// coefficients mu[r], sc[r], sh[r]. Stores through the cache: rows whose y streams take
/// pipelined_parameter_rows.
template <int NB, class T>
inline void apply_rows(const T* const* x, T* const* y, index_t n, const T* mu, const T* sc, const T* sh, const T* g, const T* bt) {
    using V = simd::vec<T>;
    constexpr index_t L = simd::width<T>;
    V m[NB], a[NB], c[NB];
    const T* xr[NB];
    T* yr[NB];
#pragma GCC unroll 4
    for (int r = 0; r < NB; ++r) m[r] = V(mu[r]), a[r] = V(sc[r]), c[r] = V(sh[r]), xr[r] = x[r], yr[r] = y[r];
    auto part = [&](index_t i, index_t t) {  // the values [i, i + t), t < L, with masked loads and stores
        const V gv = simd::load_first(g + i, t), bv = bt ? simd::load_first(bt + i, t) : V(T(0));
#pragma GCC unroll 4
        for (int r = 0; r < NB; ++r)
            simd::store_first(yr[r] + i, t, xsimd::fma(xsimd::fma(simd::load_first(xr[r] + i, t) - m[r], a[r], c[r]), gv, bv));
    };
    // x, gamma and beta one vector ahead: every load of a vector is issued before the stores of
    // the one before it, so a y (or gamma) just past x modulo 4 KiB does not stall each load on an
    // earlier store to the same page offset (2048x1024, one thread, y 64 bytes past x, one vector
    // ahead against none: 1.4x faster). Loads of every row come before any store too: with rows
    // 4 KiB apart, a store to one row's y would stall the next row's load at the same page offset.
    struct ahead {
        V x[NB], g, b;
    };
    auto load_ahead = [&](index_t at, ahead& v) {
        v.g = V::load_unaligned(g + at);
        v.b = bt ? V::load_unaligned(bt + at) : V(T(0));
#pragma GCC unroll 4
        for (int r = 0; r < NB; ++r) v.x[r] = V::load_unaligned(xr[r] + at);
    };
    index_t i = 0;
    ahead next;
    if (L <= n) load_ahead(0, next);
    for (; i + L <= n; i += L) {
        ahead v = next;
        if (i + 2 * L <= n) load_ahead(i + L, next);
#pragma GCC unroll 4
        for (int r = 0; r < NB; ++r) v.x[r] = xsimd::fma(xsimd::fma(v.x[r] - m[r], a[r], c[r]), v.g, v.b);
#pragma GCC unroll 4
        for (int r = 0; r < NB; ++r) v.x[r].store_unaligned(yr[r] + i);
    }
    if (i < n) part(i, n - i);
}

/// apply_run with streaming stores or without, chosen at run time
template <class T>
inline void apply_run_stores(bool stream, const T* x, T* y, index_t n, index_t sx, index_t sy, const T* mu, const T* sc,
                             const T* sh, index_t ss, const T* g, const T* bt, index_t sp) {
    if (stream)
        apply_run<true>(x, y, n, sx, sy, mu, sc, sh, ss, g, bt, sp);
    else
        apply_run<false>(x, y, n, sx, sy, mu, sc, sh, ss, g, bt, sp);
}

/// Per-lane coefficients repeated past the row's end (simd::wrapped), for flat runs of columns
template <class T>
struct wrapped_coefficients {
    simd::lanes<T> mu, sc, sh;
    wrapped_coefficients(const T* m, const T* s, const T* h, index_t n)
        : mu(simd::wrapped(m, n)), sc(simd::wrapped(s, n)), sh(simd::wrapped(h, n)) {}
};

/// Rows of R that lie back to back, each a contiguous kept run with a statistic per lane
/// (BatchNorm, InstanceNorm and GroupNorm on channels-last data): they form one flat run.
inline bool flat_columns(const loop_dims& R, const loop_dim& inner) {
    return R.size() == 1 && R[0].reduced && R[0].sx == inner.extent && R[0].sy == inner.extent && !inner.reduced &&
           inner.sx == 1 && inner.sy == 1 && inner.sstat == 1;
}

/// Positions [b, e) of such a flat run, y = (x - mu_lane) * sc_lane + sh_lane: the streaming
/// stores run over the whole range instead of restarting at every short row. With `next`, the
/// same positions of next are asked for into L1 along the way (pipelined_columns: the next kept
/// index's rows, whose moments are taken right after).
template <bool Stream, bool Next = false, class T>
inline void apply_flat(const T* x, T* y, index_t b, index_t e, index_t n, const wrapped_coefficients<T>& w,
                       const T* next = nullptr) {
    using V = simd::vec<T>;
    auto fh = [=](auto load, const auto& v) {
        if constexpr (Stream) simd::prefetch_stream(x + load.i);
        if constexpr (Next) simd::prefetch_near(next + load.i);
        return xsimd::fma(load(x) - v[0], v[1], v[2]);
    };
    // rows of a few whole vectors (BatchNorm NHWC on 64 channels): the coefficients in registers
    const std::array<const T*, 3> held{w.mu.data(), w.sc.data(), w.sh.data()};
    if (simd::for_each_row_held<Stream>(y, b, e, n, held, fh)) return;
    // captured by value, as in apply_run (GroupNorm NHWC 8x256x32x32 eval, one thread: 1.3x faster, same run)
    const T *mu = held[0], *sc = held[1], *sh = held[2];
    simd::for_each_flat<Stream>(y, b, e, n, [=](auto load, index_t j) {
        return fh(load, std::array<V, 3>{V::load_unaligned(mu + j), V::load_unaligned(sc + j), V::load_unaligned(sh + j)});
    });
}
template <class T>
inline void apply_flat_stores(bool stream, const T* x, T* y, index_t b, index_t e, index_t n, const wrapped_coefficients<T>& w) {
    if (stream)
        apply_flat<true>(x, y, b, e, n, w);
    else
        apply_flat<false>(x, y, b, e, n, w);
}

/// Rows [r0, r1) of R, each one run of `inner` at x + r.x and y + r.y (x, y, the coefficients
/// and the parameters already at one kept index's offsets): back-to-back rows of columns as one
/// flat run, anything else run by run.
template <class T>
void apply_rows_of(bool stream, const loop_dims& R, index_t r0, index_t r1, const loop_dim& inner, const T* x, T* y,
                   const T* mu, const T* sc, const T* sh, const T* g, const T* bt) {
    const index_t n = inner.extent;
    if (flat_columns(R, inner) && g == nullptr)
        return apply_flat_stores(stream, x, y, r0 * n, r1 * n, n, wrapped_coefficients<T>(mu, sc, sh, n));
    const index_t ss = inner.reduced ? 0 : inner.sstat;
    if (R.empty()) {  // one run (rows): its stores without the odometer
        if (r0 < r1) apply_run_stores<T>(stream, x, y, n, inner.sx, inner.sy, mu, sc, sh, ss, g, bt, inner.sparam);
        return;
    }
    for_range(R, r0, r1, [&](const offsets& r) {
        apply_run_stores<T>(stream, x + r.x, y + r.y, n, inner.sx, inner.sy, mu, sc, sh, ss, g ? g + r.param : nullptr,
                            bt ? bt + r.param : nullptr, inner.sparam);
    });
}

/// The pipeline of kept indices over channels-last rows (pipelined_columns): the previous kept
/// index's coefficients, and its normalize sweep a block of rows at a time, run just before the
/// same block of the next one has its column moments taken (whose rows it asks for into L1).
template <class T>
struct column_pipeline {
    std::optional<wrapped_coefficients<T>> w;  // the previous kept index's, once there is one
    offsets prev{};
    /// column_moments' `before`: the previous kept index's rows at the positions of the block of
    /// count rows back to back at p[0] of the next one (at xk), n values each
    void block(const T* x, T* y, const T* xk, const T* const* p, index_t count, index_t n) const {
        const index_t o = p[0] - xk;
        if (w) apply_flat<true, true>(x + prev.x, y + prev.y, o, o + count * n, n, *w, xk);
    }
    /// kept index kk's coefficients are known: it is the previous one from here on
    void advance(const offsets& kk, const std::array<const T*, 3>& c, index_t n) {
        w.emplace(c[0], c[1], c[2], n);
        prev = kk;
    }
    /// the last one's sweep alone, over its positions [b, e)
    void finish(const T* x, T* y, index_t b, index_t e, index_t n) const {
        if (w) apply_flat<true>(x + prev.x, y + prev.y, b, e, n, *w);
    }
};

/// Per kept index of K[kb, ke) (one thread's share): the per-column moments of its rows (R's rows
/// of `inner`, n kept columns), coefficients(kk, count, mean, m2) making its coefficients
/// {mu, sc, sh} (per column at inner's statistic step), then y over its rows, g and bt (at the
/// kept index's parameter offset, along R) applied per element when not folded. InstanceNorm and
/// GroupNorm on channels-last data. Pipelined (pipelined_columns): the kept indices form a
/// pipeline, a block of rows at a time: the previous kept index's block is normalized (its x from
/// cache, streaming stores) while the same block of this one is asked for into L1, whose column
/// moments follow; so reads from memory and streaming stores go on at once, as in a copy, where
/// a kept index's two sweeps would take turns.
template <bool Rms, class T, class Coefficients>
void columns_per_kept(const loop_dims& K, index_t kb, index_t ke, const loop_dims& R, const loop_dim& inner, const T* x, T* y,
                      const T* g, const T* bt, bool stream, bool pipelined, Coefficients&& coefficients) {
    const index_t nr = count_of(R), n = inner.extent;
    simd::lanes<double> mean(n), m2(n);
    std::vector<const T*> rows;
    if (!pipelined) {
        for_range(K, kb, ke, [&](const offsets& kk) {
            const double count = column_moments<Rms>(R, 0, nr, x + kk.x, n, inner.sx, mean.data(), m2.data(), rows, stream);
            const std::array<const T*, 3> c = coefficients(kk, count, mean.data(), m2.data());
            apply_rows_of<T>(stream, R, 0, nr, inner, x + kk.x, y + kk.y, c[0], c[1], c[2], g ? g + kk.param : nullptr,
                             bt ? bt + kk.param : nullptr);
        });
        return;
    }
    column_pipeline<T> pipe;
    for_range(K, kb, ke, [&](const offsets& kk) {
        const T* xk = x + kk.x;
        const double count = column_moments<Rms>(R, 0, nr, xk, n, 1, mean.data(), m2.data(), rows, true,
                                                 [&](const T* const* p, index_t c) { pipe.block(x, y, xk, p, c, n); });
        pipe.advance(kk, coefficients(kk, count, mean.data(), m2.data()), n);
    });
    pipe.finish(x, y, 0, nr * n, n);
}

/// Runs [r0, r1) of such a flat run (run r at x + r * len; its coefficients at mu[r * ss], ...).
template <bool Stream, class T>
inline void apply_flat_runs(const T* x, T* y, index_t r0, index_t r1, index_t len, const T* mu, const T* sc, const T* sh,
                            index_t ss) {
    x += r0 * len, y += r0 * len, mu += r0 * ss, sc += r0 * ss, sh += r0 * ss;
    simd::for_each_run_store<Stream>(y, r1 - r0, len, ss, std::array<const T*, 3>{mu, sc, sh}, [=](auto load, const auto& v) {
        if constexpr (Stream) simd::prefetch_stream(x + load.i);
        return xsimd::fma(load(x) - v[0], v[1], v[2]);
    });
}

template <bool Stream, class T>
void normalize(const plan& p, const T* x, T* y, const coefficients<T>& k, const T* g, const T* bt, int nt, bool flat) {
    const loop_dim inner = p.apply.back();
    const loop_dims outer(p.apply.begin(), p.apply.end() - 1);
    const index_t no = count_of(outer), n = inner.extent;
    if (flat_columns(outer, inner) && g == nullptr) {  // BatchNorm on NHWC: lane = position mod n
        const wrapped_coefficients<T> w(k.mu, k.sc, k.sh, n);
        team(nt, [&] {
            const auto [b, e] = split(no * n, thread_id(), team_size());
            apply_flat<Stream>(x, y, b, e, n, w);
            if constexpr (Stream) simd::fence();
        });
        return;
    }
    if (flat) {  // the decision's flat_runs (BatchNorm NCHW's short planes): a flat run per row
        const loop_dim d = outer.back();
        const loop_dims rows(outer.begin(), outer.end() - 1);
        const index_t nrows = count_of(rows);
        team(nt, [&] {
            const int t = thread_id(), team = team_size();
            // rows to each thread, or, with fewer rows than threads, each row's runs
            const auto [ob, oe] = nrows >= team ? split(nrows, t, team) : std::pair<index_t, index_t>{0, nrows};
            const auto [rb, re] = nrows >= team ? std::pair<index_t, index_t>{0, d.extent} : split(d.extent, t, team);
            for_range(rows, ob, oe, [&](const offsets& o) {
                apply_flat_runs<Stream>(x + o.x, y + o.y, rb, re, n, k.mu + o.stat, k.sc + o.stat, k.sh + o.stat, d.sstat);
            });
            if constexpr (Stream) simd::fence();
        });
        return;
    }
    const bool split_outer = no >= nt;
    team(nt, [&] {
        const int t = thread_id(), team = team_size();
        const auto [ob, oe] = split_outer ? split(no, t, team) : std::pair<index_t, index_t>{0, no};
        const auto [ib, ie] = split_outer ? std::pair<index_t, index_t>{0, n} : split(n, t, team);
        for_range(outer, ob, oe, [&](const offsets& o) {
            const index_t s = o.stat + ib * inner.sstat;
            apply_run<Stream>(x + o.x + ib * inner.sx, y + o.y + ib * inner.sy, ie - ib, inner.sx, inner.sy, k.mu + s,
                              k.sc + s, k.sh + s, inner.sstat, g ? g + o.param + ib * inner.sparam : nullptr,
                              bt ? bt + o.param + ib * inner.sparam : nullptr, inner.sparam);
        });
        if constexpr (Stream) simd::fence();
    });
}

/// What one kept index's data spans (its slab) is small enough to stay in cache between its
/// statistics and its normalization, and there are kept indices for every thread.
inline constexpr double fuse_slab_bytes = 1024.0 * 1024;

template <class T>
bool fusable(const plan& p, int nt) {
    index_t nk = 1, slab = 1;
    for (std::size_t i = 0; i < p.fused.size(); ++i) {
        const loop_dim& d = p.fused[i];
        if (d.reduced || i + 1 == p.fused.size()) slab *= d.extent;
        else nk *= d.extent;
    }
    return nk >= nt && double(slab) * sizeof(T) <= fuse_slab_bytes;
}

/// The innermost two loops are a kept group index over a short reduced member run, contiguous in
/// x and y (GroupNorm on channels-last data): [.., keep G(C), reduce C/G].
inline bool grouped_shape(const plan& p) {
    if (p.fused.size() < 2) return false;
    const loop_dim& m = p.fused.back();
    const loop_dim& gd = p.fused[p.fused.size() - 2];
    return m.reduced && !gd.reduced && m.sx == 1 && m.sy == 1 && gd.sx == m.extent && gd.sy == m.extent;
}
inline bool grouped_columns(const plan& p) {
    // a long run is better served by the rows kernel (BatchNorm and InstanceNorm on NCHW have
    // the same shape: a kept channel over a contiguous H*W), a wide row by blocks of groups, and
    // without reduced rows to sum down (LayerNorm over a short D: [keep T, reduce D]) there are
    // no columns, only short rows. The bound on a group's run is in values, the same for float
    // and double (64: four float vectors, eight double ones): double GroupNorm NHWC with groups of
    // 48 channels (2x32x32x384 and 2x96x96x384, G = 8) measured 1.8-4.8x the time, forward and
    // backward, one and two threads, with a bound of four double vectors, which sends it to blocks
    // of groups instead.
    return grouped_shape(p) && p.fused.back().extent <= 4 * simd::width<float> &&
           p.fused.back().extent * p.fused[p.fused.size() - 2].extent <= 4096 && !outer_of(p.fused, 2).R.empty();
}
/// The same shape with runs too short to stream alone (under stream_run_min) in rows too wide for
/// per-column moments: BatchNorm on NCHW with 7x7 planes, [reduce N, keep C, reduce H*W]
/// (without reduced rows, [keep N*C, reduce H*W], it is the rows pattern).
inline bool group_blocks(const plan& p) {
    return grouped_shape(p) && !grouped_columns(p) && p.fused.back().extent < stream_run_min && !outer_of(p.fused, 2).R.empty();
}

/// Fused, with streaming stores, over contiguous reduced runs whose coefficients are one per run
/// (no parameters along them: InstanceNorm, GroupNorm, BatchNorm over planes, norms without
/// parameters): each thread's kept indices form a pipeline, each one's normalize sweep reading
/// the next one's runs from memory for its moments (apply_run_summing). Out of cache a kept
/// index's two sweeps otherwise take turns, reading from memory, then writing to it; in one
/// sweep both go on at once, as in a copy. normspec_ceiling's kernels on rows of 16 KiB, 12 KiB
/// and 784 KiB at one thread: apply_run_summing in a loop over rows 0.82-0.84 of copy_nt, the
/// same rows in two sweeps 0.62-0.67. With gamma and beta along the run (LayerNorm, RMSNorm,
/// LayerNorm over C, H, W) the same sweep measured 0.46-0.66, slower than two sweeps: its loads
/// of gamma, beta and the row in cache come from L2 while the next row comes from memory; two
/// rows at a time sharing those loads (as the two sweeps do), pipelined measured 0.62-0.80 against
/// 0.65-0.79 in two sweeps (hand-written, three runs). Those rows (gamma and beta along a row
/// that is the whole run) pipeline a chunk at a time instead, the next row's chunk asked for into
/// L1 (pipelined_parameter_rows).
inline bool pipelined_rows(const plan& p, bool fused, bool stream) {
    if (!fused || !stream || grouped_columns(p) || group_blocks(p)) return false;
    const loop_dim& inner = p.fused.back();
    return inner.reduced && inner.sx == 1 && inner.sy == 1 &&
           (inner.sparam == 0 || p.fold || (inner.sparam == 1 && outer_of(p.fused, 1).R.empty()));
}

/// GroupNorm on channels-last data (grouped_columns): a row's channels, all groups' members, as
/// one kept run of per-channel coefficients
inline loop_dim group_channels(const plan& p) {
    loop_dim channels;
    channels.extent = p.fused.back().extent * p.fused[p.fused.size() - 2].extent;
    channels.sx = channels.sy = channels.sstat = 1;
    return channels;
}

/// Per kept index, per-column moments down reduced rows: GroupNorm on channels-last data
/// (grouped_columns), or a kept run under reduced rows under kept indices, parameters folded
/// (InstanceNorm on channels-last data: [keep N, reduce H*W, keep C]). Without kept indices
/// ([reduce N*H*W, keep C]: BatchNorm, or InstanceNorm of one sample) the two sweeps serve.
inline bool kept_columns(const plan& p) {
    if (grouped_columns(p)) return true;
    if (p.fused.empty() || group_blocks(p)) return false;
    const outer_loops o = outer_of(p.fused, 1);
    return !p.fused.back().reduced && !o.K.empty() && !o.R.empty() && (!p.has_params || p.fold);
}

/// Fused, with streaming stores, over rows of kept columns back to back (kept_columns) with two kept
/// indices or more: the kept indices form a pipeline (columns_per_kept), a block of rows at a
/// time, as pipelined_rows' do a run at a time: each thread's, or, where columns_split, one
/// whose rows the threads split.
inline bool pipelined_columns(const plan& p, bool fused, bool stream) {
    if (!fused || !stream || !kept_columns(p)) return false;
    const bool grouped = grouped_columns(p);
    const outer_loops o = outer_of(p.fused, grouped ? 2 : 1);
    return flat_columns(o.R, grouped ? group_channels(p) : p.fused.back()) && count_of(o.K) >= 2;
}

/// Kept columns (kept_columns) split each kept index's rows over the threads, merging their
/// per-column moments, when there are fewer kept indices than threads, or, where they pipeline
/// (pipelined_columns), fewer than two for each thread and not the same number for all: split,
/// the kept indices still form one pipeline, where three over two threads would leave one thread
/// a third of the work in two sweeps. Old and new engines in one process, each in both link
/// places, two threads, two or three runs: GroupNorm NHWC 3x320x96x96 at 0.75-0.80 of the time,
/// 3x320x64x64 at 0.70-0.79, InstanceNorm NHWC 3x112x112x64 at 0.64-0.74, 3x64x64x320 at
/// 0.64-0.78. One kept index per thread keeps its two sweeps: split, GroupNorm NHWC 2x320x96x96
/// and 2x320x64x64 measured 0.92-1.08 of their time and InstanceNorm NHWC 2x112x112x64 1.05-1.28.
inline bool columns_split(const plan& p, bool stream, int threads) {
    if (!kept_columns(p)) return false;
    const index_t nk = count_of(outer_of(p.fused, grouped_columns(p) ? 2 : 1).K);
    return threads > 1 && (nk < threads || (nk < 2 * threads && nk % threads != 0 && pipelined_columns(p, true, stream)));
}

/// Kept columns with their threads splitting each kept index's rows (columns_split): per kept
/// index, each thread's rows' per-column moments (inner's n columns), merged (Chan), then
/// coefficients(kk, count, mean, m2) as in columns_per_kept, and the rows split again to
/// normalize: in a second sweep, or, pipelined, in the column moments' sweep of the next kept
/// index (each thread the same rows of both).
template <bool Rms, class T, class Coefficients>
void split_columns(const loop_dims& K, const loop_dims& R, const loop_dim& inner, const T* x, T* y, int nt, bool stream,
                   bool pipelined, Coefficients&& coefficients) {
    const index_t nk = count_of(K), nr = count_of(R), n = inner.extent;
    simd::lanes<double> mean(static_cast<std::size_t>(nt * n)), m2(mean.size()), count(static_cast<std::size_t>(nt));
    simd::lanes<double> cmean(static_cast<std::size_t>(n)), cm2(cmean.size());
    column_pipeline<T> pipe;  // pipelined: each thread's rows of the previous kept index go with its rows of this one
    for_range(K, 0, nk, [&](const offsets& kk) {
        std::fill(count.begin(), count.end(), 0.0);  // parts of absent threads stay empty
        team(nt, [&] {
            const int t = thread_id();
            const auto [r0, r1] = split(nr, t, team_size());
            std::vector<const T*> rows;
            const T* xk = x + kk.x;
            count[std::size_t(t)] = column_moments<Rms>(R, r0, r1, xk, n, inner.sx, &mean[std::size_t(t * n)], &m2[std::size_t(t * n)],
                                                        rows, stream, [&](const T* const* p, index_t c) { pipe.block(x, y, xk, p, c, n); });
            if (pipe.w) simd::fence();
        });
        double total = 0;
        for (index_t c = 0; c < n; ++c) {
            moments m;
            for (int t = 0; t < nt; ++t) m.template merge<Rms>(count[std::size_t(t)], mean[std::size_t(t * n + c)], m2[std::size_t(t * n + c)]);
            cmean[std::size_t(c)] = m.mean, cm2[std::size_t(c)] = m.m2, total = m.count;
        }
        const std::array<const T*, 3> co = coefficients(kk, total, cmean.data(), cm2.data());
        if (pipelined) return pipe.advance(kk, co, n);
        team(nt, [&] {
            const auto [r0, r1] = split(nr, thread_id(), team_size());
            apply_rows_of<T>(stream, R, r0, r1, inner, x + kk.x, y + kk.y, co[0], co[1], co[2], nullptr, nullptr);
            if (stream) simd::fence();
        });
    });
    if (pipe.w)  // the last one's sweep alone
        team(nt, [&] {
            const auto [r0, r1] = split(nr, thread_id(), team_size());
            pipe.finish(x, y, r0 * n, r1 * n, n);
            simd::fence();
        });
}

/// Group gi of kept index kk, whose statistic is known, spread over its member run: per-position
/// coefficients y = (x - cm) * csc + csh with gamma and beta (per member, when not folded) in them.
template <class T>
inline void spread_group(const coefficients<T>& k, const offsets& kk, index_t gi, const loop_dim& gd, const loop_dim& member,
                         const T* g, const T* bt, T* cm, T* csc, T* csh) {
    const index_t st = kk.stat + gi * gd.sstat;
    for (index_t j = 0; j < member.extent; ++j) {
        const index_t pi = kk.param + gi * gd.sparam + j * member.sparam;
        const T gamma = g ? g[pi] : T(1);
        cm[j] = k.mu[st];
        csc[j] = k.sc[st] * gamma;
        csh[j] = k.sh[st] * gamma + (bt ? bt[pi] : T(0));
    }
}

/// How group_blocks splits the kept group loop: `per` groups to a block, so that a block's data
/// (rows of cg values per group) fits in `bytes` of each array it reads; `count` blocks per kept
/// index.
struct group_blocking {
    index_t per, count;
    group_blocking(double bytes, index_t elem_size, index_t rows, index_t cg, index_t groups)
        : per(std::clamp<index_t>(index_t(bytes) / elem_size / std::max<index_t>(1, rows * cg), 1, groups)),
          count((groups + per - 1) / per) {}
};

/// f(kk, g0, g1) for the (kept index of K, block of groups [g0, g1)) pairs [b, e) of
/// count_of(K) * bl.count: the work one thread of the group-block kernels takes.
template <class F>
void for_group_blocks(const loop_dims& K, const group_blocking& bl, index_t groups, index_t b, index_t e, F&& f) {
    for (index_t w = b; w < e; ++w) {
        const index_t g0 = (w % bl.count) * bl.per;
        for_range(K, w / bl.count, w / bl.count + 1, [&](const offsets& kk) { f(kk, g0, std::min(g0 + bl.per, groups)); });
    }
}

/// Short runs of a kept group index in rows too wide for per-column moments (group_blocks:
/// BatchNorm on NCHW with 7x7 planes, a channel's 49 values in each of N rows), in blocks of
/// groups whose slab stays in L2: per group, the moments of its runs (a chunk's worth of runs in
/// one set of vector sums); then per row, the block's span as one flat run with per-position
/// coefficients, x from cache and y written in order (streaming when out of cache), where run by
/// run the stores could not stream. Threads take (kept index, block) pairs.
template <bool Rms, class T, class Known>
void fused_group_blocks(const plan& p, const T* x, T* y, coefficients<T>& k, const T* g, const T* bt, int nt, bool stream,
                        Known&& known) {
    const loop_dim member = p.fused.back(), gd = p.fused[p.fused.size() - 2];
    const outer_loops outer = outer_of(p.fused, 2);
    const index_t nk = count_of(outer.K), nr = count_of(outer.R), cg = member.extent;
    const group_blocking bl(fuse_slab_bytes / 4, sizeof(T), nr, cg, gd.extent);  // 256 KiB of x
    team(nt, [&] {
        const auto [wb, we] = split(nk * bl.count, thread_id(), team_size());
        std::vector<const T*> runs;
        simd::lanes<T> cm(std::size_t(bl.per * cg)), csc(cm.size()), csh(cm.size());
        for_group_blocks(outer.K, bl, gd.extent, wb, we, [&](const offsets& kk, index_t g0, index_t g1) {
            for (index_t gi = g0; gi < g1; ++gi) {
                moments m;
                runs_moments<Rms>(outer.R, 0, nr, x + kk.x + gi * gd.sx, cg, 1, m, runs);
                known(kk.stat + gi * gd.sstat, m, kk.param + gi * gd.sparam);
                const index_t o = (gi - g0) * cg;
                spread_group(k, kk, gi, gd, member, g, bt, cm.data() + o, csc.data() + o, csh.data() + o);
            }
            const index_t span = (g1 - g0) * cg;
            const wrapped_coefficients<T> wc(cm.data(), csc.data(), csh.data(), span);
            for_range(outer.R, 0, nr, [&](const offsets& r) {
                apply_flat_stores(stream, x + kk.x + r.x + g0 * gd.sx, y + kk.y + r.y + g0 * gd.sy, 0, span, span, wc);
            });
        });
        if (stream) simd::fence();
    });
}

/// GroupNorm on channels-last data, per kept index: per-channel column moments over the reduced
/// rows, each group's channels merged (Chan), then one multiply-add per element with per-channel
/// coefficients rstd_g * gamma_c. A group's run of C/G channels is too short to vectorize alone.
/// Threads take kept indices; where columns_split, they split the rows of each (split_columns).
template <bool Rms, class T, class Known>
void fused_grouped_columns(const plan& p, const T* x, T* y, coefficients<T>& k, const T* g, const T* bt, int nt, bool stream,
                           Known&& known) {
    const loop_dim member = p.fused.back(), gd = p.fused[p.fused.size() - 2];
    const outer_loops outer = outer_of(p.fused, 2);
    const loop_dims& K = outer.K;
    const loop_dims& R = outer.R;
    const index_t nk = count_of(K), cg = member.extent, groups = gd.extent, n = cg * groups;
    // per-channel coefficients of kept index kk from its channels' moments
    auto coefficients_of = [&](const offsets& kk, double count, const double* mean, const double* m2, T* cm, T* csc, T* csh) {
        for (index_t gi = 0; gi < groups; ++gi) {
            moments m;
            for (index_t c = gi * cg; c < (gi + 1) * cg; ++c) m.template merge<Rms>(count, mean[c], m2[c]);
            known(kk.stat + gi * gd.sstat, m, kk.param + gi * gd.sparam);  // folded parameters live on kept axes
            spread_group(k, kk, gi, gd, member, g, bt, cm + gi * cg, csc + gi * cg, csh + gi * cg);
        }
    };
    // coefficients_of into cm, csc and csh, as columns_per_kept and split_columns ask for them
    auto coefficients_into = [&](simd::lanes<T>& cm, simd::lanes<T>& csc, simd::lanes<T>& csh) {
        return [&](const offsets& kk, double count, const double* mean, const double* m2) {
            coefficients_of(kk, count, mean, m2, cm.data(), csc.data(), csh.data());
            return std::array<const T*, 3>{cm.data(), csc.data(), csh.data()};
        };
    };
    const loop_dim channels = group_channels(p);
    const bool pipelined = pipelined_columns(p, true, stream);
    if (columns_split(p, stream, nt)) {
        simd::lanes<T> cm(n), csc(n), csh(n);
        return split_columns<Rms>(K, R, channels, x, y, nt, stream, pipelined, coefficients_into(cm, csc, csh));
    }
    team(nt, [&] {
        const auto [kb, ke] = split(nk, thread_id(), team_size());
        simd::lanes<T> cm(n), csc(n), csh(n);
        columns_per_kept<Rms>(K, kb, ke, R, channels, x, y, static_cast<const T*>(nullptr), static_cast<const T*>(nullptr), stream,
                              pipelined, coefficients_into(cm, csc, csh));
        if (stream) simd::fence();
    });
}

/// Statistics and normalization per kept index, while its slab is in cache: x is read from
/// memory once. `known(s, moments, param offset)` turns each statistic into coefficients.
template <bool Rms, class T, class Known>
void fused(const plan& p, const T* x, T* y, coefficients<T>& k, const T* g, const T* bt, int nt, bool stream, Known&& known) {
    if (grouped_columns(p)) return fused_grouped_columns<Rms>(p, x, y, k, g, bt, nt, stream, known);
    if (group_blocks(p)) return fused_group_blocks<Rms>(p, x, y, k, g, bt, nt, stream, known);
    const loop_dim inner = p.fused.back();
    const outer_loops outer = outer_of(p.fused, 1);
    const loop_dims& K = outer.K;
    const loop_dims& R = outer.R;
    const index_t nk = count_of(K), nr = count_of(R), n = inner.extent;
    // rows with parameters along them: blocks of rows share each load of gamma and beta
    const bool row_blocks = inner.reduced && R.empty() && inner.sx == 1 && inner.sy == 1 && g && inner.sparam == 1;
    const bool pipelined = pipelined_rows(p, true, stream);
    const bool pipelined_cols = pipelined_columns(p, true, stream);
    // kept columns (InstanceNorm on channels-last data): a kept index's coefficients from its columns' moments
    auto column_coefficients = [&](const offsets& kk, double count, const double* mean, const double* m2) {
        for (index_t j = 0; j < n; ++j) {
            moments m;
            m.template merge<Rms>(count, mean[j], m2[j]);
            known(kk.stat + j * inner.sstat, m, kk.param + j * inner.sparam);
        }
        return std::array<const T*, 3>{k.mu + kk.stat, k.sc + kk.stat, k.sh + kk.stat};
    };
    if (!inner.reduced && columns_split(p, stream, nt)) return split_columns<Rms>(K, R, inner, x, y, nt, stream, pipelined_cols, column_coefficients);
    team(nt, [&] {
        const auto [kb, ke] = split(nk, thread_id(), team_size());
        if (!inner.reduced) {
            columns_per_kept<Rms>(K, kb, ke, R, inner, x, y, g, bt, stream, pipelined_cols, column_coefficients);
            if (stream) simd::fence();
            return;
        }
        if (row_blocks && stream) {
            pipelined_parameter_rows<Rms>(K, kb, ke, n, x, y, k, g, bt, known);
            simd::fence();
            return;
        }
        if (pipelined) {  // kept index kk's moments taken in the normalize sweep of the one before it
            // f(x offset, y offset, parameter offset) for each run of a kept index
            auto runs = [&](auto&& f) {
                if (R.empty()) return f(index_t(0), index_t(0), index_t(0));
                for_range(R, 0, nr, [&](const offsets& r) { f(r.x, r.y, r.param); });
            };
            auto par = [&](const T* a, const offsets& o, index_t rp) { return a ? a + o.param + rp : nullptr; };
            std::vector<const T*> rows;
            offsets prev{};
            bool first = true;
            for_range(K, kb, ke, [&](const offsets& kk) {
                moments m;
                if (first)
                    runs_moments<Rms>(R, 0, nr, x + kk.x, n, 1, m, rows);
                else
                    runs([&](index_t rx, index_t ry, index_t rp) {
                        apply_run_summing<Rms>(x + prev.x + rx, y + prev.y + ry, n, k.mu + prev.stat, k.sc + prev.stat,
                                               k.sh + prev.stat, par(g, prev, rp), par(bt, prev, rp), inner.sparam,
                                               x + kk.x + rx, m);
                    });
                known(kk.stat, m, kk.param);
                prev = kk, first = false;
            });
            if (!first)  // the last one's normalize sweep alone
                apply_rows_of<T>(true, R, 0, nr, inner, x + prev.x, y + prev.y, k.mu + prev.stat, k.sc + prev.stat,
                                 k.sh + prev.stat, par(g, prev, 0), par(bt, prev, 0));
            simd::fence();
            return;
        }
        moments acc;
        std::vector<const T*> rows;
        if (row_blocks) {  // blocks of rows: their statistics in one loop, then one sweep for all of them
            constexpr int NB = 2;
            const T* xs[NB];
            T* ys[NB];
            T mu[NB], sc[NB], sh[NB];
            index_t stat[NB], param[NB];
            int nb = 0;
            const T* g0 = nullptr;
            auto flush = [&] {  // through the cache: streaming rows took pipelined_parameter_rows
                if (nb == 0) return;  // (a thread of the team with no rows: g0 is still nullptr)
                const T* b0 = bt ? bt + (g0 - g) : nullptr;
                moments m[NB];
                if (nb == NB && !Rms)
                    accumulate_rows<NB>(xs, n, m);
                else  // RMSNorm's rows and the last, partial block: row by row (see accumulate_rows)
                    for (int r = 0; r < nb; ++r) accumulate_run<Rms>(xs[r], n, 1, m[r]);
                for (int r = 0; r < nb; ++r) {
                    known(stat[r], m[r], param[r]);
                    mu[r] = k.mu[stat[r]], sc[r] = k.sc[stat[r]], sh[r] = k.sh[stat[r]];
                }
                if (nb == NB)
                    apply_rows<NB>(xs, ys, n, mu, sc, sh, g0, b0);
                else
                    for (int r = 0; r < nb; ++r) apply_rows<1>(xs + r, ys + r, n, mu + r, sc + r, sh + r, g0, b0);
                nb = 0;
            };
            for_range(K, kb, ke, [&](const offsets& kk) {
                if (nb > 0 && g + kk.param != g0) flush();  // parameters that vary along kept axes too
                g0 = g + kk.param;
                xs[nb] = x + kk.x;
                ys[nb] = y + kk.y;
                stat[nb] = kk.stat, param[nb] = kk.param;
                if (++nb == NB) flush();
            });
            flush();
        } else for_range(K, kb, ke, [&](const offsets& kk) {
            acc = moments{};
            runs_moments<Rms>(R, 0, nr, x + kk.x, n, inner.sx, acc, rows);
            known(kk.stat, acc, kk.param);
            apply_rows_of<T>(stream, R, 0, nr, inner, x + kk.x, y + kk.y, k.mu + kk.stat, k.sc + kk.stat,
                             k.sh + kk.stat, g ? g + kk.param : nullptr, bt ? bt + kk.param : nullptr);
        });
        if (stream) simd::fence();
    });
}

/// Whether y goes out with streaming stores: once each of the `threads` threads' share of `bytes`
/// (x and y together) passes 1/4 of the last-level cache. At 16 MiB on one thread streaming
/// measured 1.6x (LayerNorm 2048x1024) to 2.2x (BatchNorm NCHW 8x256x32x32) faster than stores
/// through the cache. Between 1/4 and 3/8 (10 MiB: 1x320x64x64 on one thread; old and new
/// engines in one process, each its own y, each in both places, two runs), BatchNorm NHWC and
/// NCHW in training and evaluation, InstanceNorm and GroupNorm NHWC and GroupNorm NCHW streamed
/// in 0.65-1.22 of the time with y still in L3 from the call before (GroupNorm NCHW 0.65-0.69,
/// BatchNorm NCHW evaluation 0.93-1.33) and in 0.47-0.94 with y flushed before each call (a
/// store through the cache then first reads y's line from memory); at 4-8 MiB with y in L3,
/// streaming measured 0.79-1.56x the time (BatchNorm NHWC evaluation 1.28-1.56x), and 0.47-0.81
/// with y flushed. (The bound was 3/8, from an earlier measurement that found stores through the
/// cache up to 2.3x faster at 10 MiB on one thread; not reproduced with y in L3 or flushed. This
/// machine's L3 is shared with other tenants, so how much of it holds y varies.)
///
/// Channels-last columns (lane_columns) stream past half of it instead: their normalize sweep
/// reads x's rows from cache as it writes y, and stores through the cache leave y in L3 for what
/// reads it next. On this machine (a Zen 5 guest, 32 MiB of L3), one engine, NORMSPEC_LLC_BYTES
/// at 96 MiB (bounds tripled) against the detected 32 MiB, best of three alternations, with x
/// and y in L3 from the call before: one thread, 10.5-16.8 MiB of x and y (1x320x64x64,
/// 8x256x32x32, 1x320x80x80), GroupNorm and BatchNorm NHWC training at 0.66-0.78 of the time,
/// BatchNorm NHWC evaluation 0.77-1.02 (16x64x56x56, 12.8 MiB: 0.97-1.06); two threads,
/// shares of 10.5 and 15.7 MiB (2x320x64x64, 3x320x64x64), 0.65-0.78 (GroupNorm at 3x: 1.01).
/// After a 96 MiB sweep before each call, 0.89-1.24 (one thread). Past half, at one thread
/// (21-32 MiB), stores through the cache measured 0.88-1.35x: those stream as before.
inline bool stream_output(double bytes, int threads, double fraction) {
    return bytes / double(std::max(threads, 1)) > fraction * llc_bytes();
}

/// Channels-last columns: a contiguous kept run innermost, one statistic per lane (BatchNorm and
/// InstanceNorm on NHWC) or per group of lanes (GroupNorm on NHWC, grouped_columns)
inline bool lane_columns(const plan& p) {
    return grouped_columns(p) || (!p.fused.empty() && !p.fused.back().reduced && p.fused.back().sx == 1 && p.fused.back().sy == 1);
}

/// The fraction of the last-level cache that each thread's share of x and y passes to stream y
inline double stream_fraction(const plan& p) { return lane_columns(p) ? 0.5 : 0.25; }

/// Whether all of x and y (`bytes`) stream where the kept indices form a pipeline: past 3/8 of
/// the last-level cache, at any thread count (see decide()). At two threads, 10 MiB (GroupNorm
/// and BatchNorm NCHW training 1x320x64x64), streaming measured 1.0-1.33x the time with y in L3
/// and 0.55-0.78 with y flushed before each call: through the cache, as the benchmarks run.
inline bool stream_pipeline(double bytes) { return bytes > 0.375 * llc_bytes(); }

/// Whether the normalize sweep runs flat runs of short runs (not fused; parameters folded)
template <class T>
inline bool flat_runs_apply(const plan& p, bool fused) {
    if (fused || (p.has_params && !p.fold)) return false;
    const loop_dims outer(p.apply.begin(), p.apply.end() - 1);
    return flat_runs<T>(outer, p.apply.back());
}

}  // namespace detail

/// Below this much memory traffic (the bytes a call reads and writes: x and y forward, x, dy and
/// dx backward) a call runs on one thread. On a 2-core Zen 5 guest, calls at one thread count
/// over and over (the same binary forced to one and to two threads): one and two threads
/// measured alike at 0.8-1.1 MiB for LayerNorm, BatchNorm and GroupNorm NCHW and InstanceNorm
/// forward (110-140 thousand floats), and 0.75-0.9 MiB backward (64-75 thousand); at half of it
/// two threads took 1.35-2.0x the time of one, at twice 0.64-0.77x. (One- and two-thread calls
/// alternating in one process cross lower: forward 1.17x at 256 KiB, 0.84-0.86 at 512 KiB; see
/// reference.md, 'The parallel bound'.) Was 32768 elements (PyTorch's grain size), where two
/// threads took 2.1-2.2x one thread's time for LayerNorm 8x4096 in one benchmark run.
inline constexpr double default_parallel_bytes = 1024.0 * 1024;

namespace detail {
/// The parallel bound from the environment variable NORMSPEC_PARALLEL_BYTES (`env`, nullptr or
/// empty: unset, default_parallel_bytes; bytes, or K/M/G; 0: every call takes its threads;
/// anything else throws, naming the variable).
inline double parallel_bytes_from(const char* env) {
    if (!env || !*env) return default_parallel_bytes;
    if (std::string(env) == "0") return 0;
    const double v = cache_size_of(env);
    if (v <= 0)
        throw std::invalid_argument(std::string("normspec: NORMSPEC_PARALLEL_BYTES is '") + env +
                                    "'; expected a number of bytes, or with a K, M or G suffix (1M), or 0");
    return v;
}
}  // namespace detail

/// The traffic below which a call runs on one thread: NORMSPEC_PARALLEL_BYTES when the process
/// first asks, else default_parallel_bytes; a program may set it (each call reads it once).
inline std::atomic<double>& parallel_bytes() {
    static std::atomic<double> bytes{detail::parallel_bytes_from(std::getenv("NORMSPEC_PARALLEL_BYTES"))};
    return bytes;
}

/// The threads a call may take when `requested` (threads(n); 0: OpenMP's default) are asked for
inline int allowed_threads(int requested) { return requested > 0 ? requested : max_threads(); }

/// The threads a call of `elements` values of `element_bytes` each takes, `streams` of them read
/// or written (2 forward, 3 backward), when `requested` (0: OpenMP's default) are allowed.
inline int threads_for(index_t elements, std::size_t element_bytes, int streams, int requested) {
    const double traffic = double(elements) * double(element_bytes) * streams;
    return traffic < parallel_bytes().load(std::memory_order_relaxed) ? 1 : allowed_threads(requested);
}

/// How one call runs: what forward() does and `normspec plan` prints, decided in one place.
struct decision {
    int threads = 1;
    bool fused = false;            // statistics and normalization per kept index
    bool grouped_columns = false;  // ... with a group's channels merged from per-channel columns
    bool group_blocks = false;     // ... in blocks of groups with short runs, each row's span flat
    bool split_reduction = false;  // threads split the reduction: fewer kept indices than threads (kept columns: columns_split)
    bool stream = false;           // streaming stores for y
    bool stream_whole = false;     // ... for all of x and y past the threshold, not each thread's share (a pipeline)
    bool pipelined = false;        // fused: each kept index's normalize sweep takes the next one's moments
    bool use_running = false;      // evaluation with running statistics: no statistics sweep
    bool stats_in_order = false;   // unfused: the statistics of short runs in memory order (runs_statistics)
    bool flat_runs = false;        // unfused: the normalize sweep's short runs as one flat run per row
    bool small_call = false;       // one thread of several allowed: x and y under parallel_bytes()
};

template <class T>
decision decide(const plan& p, index_t total, int requested_threads, int schedule, bool use_running, bool in_place) {
    decision d;
    d.use_running = use_running;
    d.threads = threads_for(total, sizeof(T), 2, requested_threads);
    d.small_call = d.threads == 1 && allowed_threads(requested_threads) > 1;
    // Short runs back to back (BatchNorm NCHW's 7x7 planes) take two sweeps in memory order
    // instead: the statistics (runs_statistics), then one flat run per row. Time against blocks
    // of channels, same run: out of cache, 50x2048x7x7 at 0.73 (one thread) and 0.89 (two); in
    // cache, 8x2048x7x7 at 0.41 and 0.31, 16x512x7x7 at 0.79 and 0.81, 3x97x7x7 at 0.24. Where
    // grouped columns apply too (C*H*W up to 4096), only for runs of three vectors or more:
    // against them, 8x64x7x7 at 0.41 (one and two threads), 32x64x7x7 at 0.66 and 0.40; with
    // runs of 20-36 values at one thread 1.07-2x slower (64x32x4x5, 5x5, 6x6, 8x4).
    const bool in_order = !use_running && schedule == 0 && detail::runs_in_memory_order<T>(p) &&
                          detail::flat_runs_apply<T>(p, false) &&
                          (!detail::grouped_columns(p) || p.fused.back().extent >= 3 * simd::width<T>);
    // grouped columns read x per kept index, once per sweep, with any slab and any thread count
    d.grouped_columns = !use_running && schedule != 2 && !in_order && detail::grouped_columns(p);
    // (evaluation reads x in memory order, flat_runs: reading it from memory in one block's spans
    // of every row measured 1.4-1.9x slower on fwd_eval/batch_norm/NCHW/50x2048x7x7/t1, same run)
    d.group_blocks = !use_running && schedule != 2 && !in_order && detail::group_blocks(p);
    const double bytes = 2.0 * double(total) * sizeof(T);
    const bool share = detail::stream_output(bytes, d.threads, detail::stream_fraction(p));
    // kept columns whose threads split each kept index's rows (columns_split) run fused, with any
    // slab. Their stores stream by each thread's share alone: neither stream_whole
    // (pipelined_rows) nor the short-run rule below applies to them.
    const bool kept_split = detail::columns_split(p, !in_place && share, d.threads);
    d.fused = !use_running && !in_order &&
              (schedule == 1 || d.grouped_columns || d.group_blocks || (schedule == 0 && kept_split) ||
               (schedule == 0 && detail::fusable<T>(p, d.threads)));
    d.stats_in_order = !d.fused && !use_running && detail::runs_in_memory_order<T>(p);
    d.flat_runs = detail::flat_runs_apply<T>(p, d.fused);
    // Where the kept indices form a pipeline once y streams (pipelined_rows: rows, planes, rows
    // with gamma and beta along them), all of x and y past 3/8 of the last-level cache stream, at
    // any thread count: at two threads, 16 MiB of x and y, LayerNorm 2048x1024 and BatchNorm and
    // GroupNorm NCHW 8x256x32x32 measured 0.64-0.75 of the time of stores through the cache
    // (channels-last columns 0.76-1.32: those keep each thread's share as the rule).
    d.stream_whole = !in_place && !share && detail::stream_pipeline(bytes) && detail::pipelined_rows(p, d.fused, true);
    d.stream = !in_place && (share || d.stream_whole);
    // Short reduced runs (BatchNorm's 7x7 planes) would start and end every run with plain stores
    // in lines the streaming stores also write: plain stores throughout measured 3.7x faster
    // (fwd_eval/batch_norm/NCHW/50x2048x7x7/t1). Grouped columns and kept inner loops run long.
    // (Unless they form one flat run per row: flat_runs.)
    const loop_dim& run = d.fused ? p.fused.back() : p.apply.back();
    if (!d.grouped_columns && !d.group_blocks && run.reduced && run.extent < detail::stream_run_min && !d.flat_runs) d.stream = d.stream_whole = false;
    d.pipelined = detail::pipelined_rows(p, d.fused, d.stream) || detail::pipelined_columns(p, d.fused, d.stream);
    // The threads split the reduction: two sweeps with fewer kept indices than threads; fused kept
    // columns where columns_split
    d.split_reduction = d.fused && detail::kept_columns(p) ? kept_split
                                                           : !d.fused && !use_running && count_of(outer_of(p.stats, 1).K) < d.threads && d.threads > 1;
    return d;
}

/// The loops a call runs, for people: pattern, loop order, vector loop, sweeps, threads, stores.
inline std::string explain(const plan& p, const decision& d) {
    auto dims = [](const loop_dims& v) {
        std::string s;
        for (auto& L : v)
            s += "    " + std::string(L.reduced ? "reduce " : "keep   ") + L.name.str() + "  extent " + std::to_string(L.extent) +
                 ", x stride " + std::to_string(L.sx) + "\n";
        return s;
    };
    const auto& loops = d.fused ? p.fused : p.stats;
    const loop_dim& inner = loops.back();
    std::string s = "pattern: " + p.pattern() + "\n";
    s += "loops, outer to inner:\n" + dims(loops);
    if (d.grouped_columns)
        s += "vector loop: " + loops[loops.size() - 2].name.str() + "*" + inner.name.str() + " (contiguous channels, kept: one column per lane)\n";
    else
        s += "vector loop: " + inner.name.str() + (inner.sx == 1 ? " (contiguous" : " (strided: scalar") +
             std::string(inner.reduced ? ", reduced: one statistic per run)" : ", kept: one statistic per lane)") + "\n";
    const std::string pipelined_columns =
        ", pipelined: a block of rows at a time, the previous kept index's rows normalized (its x from cache) while the "
        "same rows of the next are asked for, whose column moments follow (x read once; reads and streaming stores at once)";
    if (d.grouped_columns)
        s += "sweeps: per kept index, per-channel column moments over the reduced rows, merged per group, then "
             "y = x * scale_c + shift_c" +
             (d.pipelined ? pipelined_columns : std::string(" (a second read of x, from cache when a kept index's data fits in 1 MiB)")) +
             "\n";
    else if (d.group_blocks)
        s += "sweeps: per block of " + loops[loops.size() - 2].name.str() + " (its data within 256 KiB): the moments of each " +
             loops[loops.size() - 2].name.str() + "'s short runs, then each row's span of the block as one flat run (x read once, "
             "y written in order)\n";
    else if (d.pipelined && !inner.reduced)
        s += "sweeps: fused per kept index" + pipelined_columns + "\n";
    else if (d.pipelined && inner.sparam == 1 && !p.fold)
        s += "sweeps: fused per kept index, pipelined: a chunk of " + std::to_string(chunk) +
             " values at a time, the previous row's chunk normalized (its x from cache, gamma and beta along it) while the "
             "same chunk of the next row is asked for, whose moments follow (x read once; reads and streaming stores at once)\n";
    else if (d.pipelined)
        s += "sweeps: fused per kept index, pipelined: its normalize sweep (its x from cache) is also the next kept index's "
             "runs read for its statistics (x read once; reads and streaming stores at once)\n";
    else if (d.fused)
        s += "sweeps: fused per kept index: statistics, then normalize while its data is in cache (x read once)\n";
    else {
        const std::string flat = d.flat_runs ? "; the short " + p.apply.back().name.str() + " runs of every " +
                                                   p.apply[p.apply.size() - 2].name.str() +
                                                   " back to back as one flat run (a vector may span two runs)"
                                             : "";
        if (d.use_running)
            s += "sweeps: one: every element, with the running statistics (evaluation)" + flat + "\n";
        else
            s += "sweeps: two: every statistic (one read of x" + std::string(d.stats_in_order ? ", in memory order" : "") +
                 "), then every element (a second read of x)" + flat + "\n";
    }
    s += std::string("parameters: ") + (!p.has_params ? "none" : p.fold ? "folded into per-statistic scale and shift" : "applied per element") + "\n";
    s += "threads: " + std::to_string(d.threads) +
         (d.small_call                ? " (x and y under " + std::to_string(long(parallel_bytes().load() / 1024)) +
                                            " KiB, the parallel bound: a team would cost more than it saves)"
          : d.threads == 1            ? ""
          : d.split_reduction         ? " (the reduction is split; partial moments merged)"
          : d.group_blocks            ? " over blocks of kept indices"
                                      : " over kept indices") +
         "\n";
    s += std::string("stores: ") +
         (!d.stream             ? "cached"
          : d.stream_whole ? "streaming (x and y exceed 3/8 of the last-level cache, and the kept indices form a pipeline)"
                                : std::string("streaming (each thread's share of x and y exceeds ") +
                                      "1/" + std::to_string(int(1 / detail::stream_fraction(p))) + " of the last-level cache)") +
         "\n";
    return s;
}

/// Runs spec on a.x into a.y (which may be a.x itself). The binding must come from bind() with
/// the same spec and x's extents.
template <class T>
void forward(const spec_desc& spec, const binding& b, const forward_args<T>& a) {
    if (!(a.eps > 0) || !std::isfinite(a.eps)) fail("eps must be a finite number > 0, got " + std::to_string(a.eps));
    if (!(a.momentum >= 0 && a.momentum <= 1)) fail("momentum must be in [0, 1], got " + std::to_string(a.momentum));
    const bool running = a.running_mean != nullptr;
    const bool use_running = spec.couples_batch && !a.train;
    if (use_running && !running) fail("eval mode of a norm whose statistics cross the batch needs running statistics");
    if (spec.couples_batch && a.train && running && b.reduction_count < 2)
        fail("training with running statistics needs more than one value per statistic, but the reduction spans " +
             std::to_string(b.reduction_count));

    const bool has_params = a.gamma != nullptr || a.beta != nullptr;
    simd::lanes<T> ones;
    const T* g = a.gamma;
    const T* bt = a.beta;
    if (has_params && !g) ones.assign(b.param_count, T(1)), g = ones.data();
    const plan p = make_plan(b, a.x, a.y, has_params);
    const index_t total = a.x.size();
    const decision d = decide<T>(p, total, a.threads, a.schedule, use_running, a.y.data == a.x.data);
    const int nt = d.threads;

    if (total == 0) return;  // an empty kept axis: no statistic, nothing to normalize
    const auto n = static_cast<std::size_t>(b.stat_count);
    detail::coefficients<T> k(b.stat_count);
    const bool stream = d.stream;
    const T* gp = has_params && !p.fold ? g : nullptr;  // parameters left for the normalize sweep
    const T* bp = has_params && !p.fold ? bt : nullptr;

    // A statistic is known: save it, update the running estimate, and make its coefficients
    // (gamma and beta folded in when they live on kept axes; pidx is then their offset).
    auto known = [&](index_t s, double mean, double var, double unbiased, index_t pidx) {
        const double rstd = 1.0 / std::sqrt(var + a.eps);
        if (a.save_mean) a.save_mean[s] = T(mean);
        if (a.save_rstd) a.save_rstd[s] = T(rstd);
        if (running && spec.couples_batch && a.train) {
            const double mom = a.momentum;
            a.running_mean[s] = T((1 - mom) * double(a.running_mean[s]) + mom * mean);
            a.running_var[s] = T((1 - mom) * double(a.running_var[s]) + mom * unbiased);
        }
        double scale = rstd, shift = 0;
        if (p.fold) {
            scale *= double(g[pidx]);
            shift = bt ? double(bt[pidx]) : 0.0;
        }
        k.mu[s] = T(mean);
        k.sc[s] = T(scale);
        k.sh[s] = T(shift - (mean - double(k.mu[s])) * scale);  // what rounding the mean lost
    };
    auto from_moments = [&](index_t s, const moments& m, index_t pidx) {
        known(s, spec.rms ? 0.0 : m.mean, m.variance(), m.unbiased_variance(), pidx);
    };

    if (d.fused) {
        if (spec.rms)
            detail::fused<true>(p, a.x.data, a.y.data, k, gp, bp, nt, stream, from_moments);
        else
            detail::fused<false>(p, a.x.data, a.y.data, k, gp, bp, nt, stream, from_moments);
        return;
    }

    // two sweeps: every statistic first, then every element
    simd::lanes<index_t> param_of(p.fold ? n : 0);
    if (p.fold) for_range(p.kept, 0, count_of(p.kept), [&](const offsets& o) { param_of[o.stat] = o.param; });
    if (use_running) {
        for (index_t s = 0; s < b.stat_count; ++s)
            known(s, double(a.running_mean[s]), double(a.running_var[s]), 0.0, p.fold ? param_of[s] : 0);
    } else {
        const auto m = spec.rms ? detail::statistics<true>(p, a.x.data, b.stat_count, nt, d.stats_in_order, stream)
                                : detail::statistics<false>(p, a.x.data, b.stat_count, nt, d.stats_in_order, stream);
        for (index_t s = 0; s < b.stat_count; ++s) from_moments(s, m[s], p.fold ? param_of[s] : 0);
    }
    if (stream)
        detail::normalize<true>(p, a.x.data, a.y.data, k, gp, bp, nt, d.flat_runs);
    else
        detail::normalize<false>(p, a.x.data, a.y.data, k, gp, bp, nt, d.flat_runs);
}

}  // namespace normspec::engine

#endif  // NORMSPEC_ENGINE_FORWARD_HPP

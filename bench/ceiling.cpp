// normspec_ceiling: how close a normalization of rows out of cache can come to the copy_nt limit
// on this machine, whatever the kernel does inside its structure; and where normspec stands.
//
// Per shape R x D (R rows of D floats, split over the threads by rows; x and y each on a 4 KiB
// boundary, as in normspec_bench), interleaved in one process (each repetition in a random order,
// each variant after a sweep over 64 MiB of other data), each figure the median of the
// repetitions:
//   copy_nt    y = x with streaming stores (the limit the benchmark report divides by)
//   read       the sum of x (reading alone: no stores)
//   two-phase  per row, the sums of x, then y = (x - mean) * rstd with streaming stores:
//              LayerNorm without its parameters, in the structure of normspec's fused rows,
//              written with the engine's vector layer and nothing else. Its sums are plain
//              (x and x^2 in float, about 0): less work than normspec's shifted sums in chunks,
//              which keep the variance of data far from 0 (float 1e4 + N(0,1)); fine for this
//              program's data, not for a library
//   pipelined  two-phase's work with each row's normalize sweep also reading the next row for its
//              sums (simd::for_each_store_summing: the structure of normspec's fused rows out of
//              cache, where the reads from memory and the streaming stores go on at once)
//   one sweep  per row, the sums of x and the stores of y in the same sweep over x (y from the
//              previous row's statistics: a wrong result, but what LayerNorm would cost if its
//              statistics were known before x is read; a bound, not a kernel)
//   normspec   forward() of norm<reduce<D>> (LayerNorm without parameters: two-phase's work),
//              training mode, into the same y
// copy_nt is printed as GB/s under the report's traffic model (x read, y written), the others as
// fractions of it (read: the bytes of x over the time). Out of cache, two-phase and pipelined
// against the report's target (0.85 of copy_nt) say what each structure reaches here, and
// normspec against pipelined what its engine leaves on the table.
#include <normspec/normspec.hpp>
#include <xtensor/xadapt.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <random>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {
namespace simd = normspec::engine::simd;
using index_t = normspec::engine::index_t;
using V = simd::vec<float>;

struct shape {
    index_t rows, cols;
};

// n floats on a 4 KiB boundary (the benchmark's placement of inputs and outputs)
struct page_buffer {
    std::unique_ptr<float[], decltype(&std::free)> data;
    explicit page_buffer(std::size_t n)
        : data(static_cast<float*>(std::aligned_alloc(4096, (n * sizeof(float) + 4095) / 4096 * 4096)), &std::free) {
        if (!data) throw std::bad_alloc();
    }
};

enum variant { copy_nt, read_only, two_phase, pipelined, one_sweep, normspec_forward, variants };
volatile float kept;  // what the reads computed, so that they are not optimized away

// mean and 1/sqrt(var + eps) of a row from its sums about 0
void coefficients(double lin, double sq, index_t n, float& mean, float& rstd) {
    const double m = lin / double(n);
    mean = float(m);
    rstd = float(1.0 / std::sqrt(std::max(0.0, sq / double(n) - m * m) + 1e-5));
}

// one pass of variant v over rows [r0, r1); returns a value that depends on every read (kept live)
float run_rows(variant v, const float* x, float* y, index_t r0, index_t r1, index_t n) {
    float live = 0;
    float mean = 0, rstd = 1;  // one sweep: the previous row's
    auto row_coefficients = [&](const float* xr) {  // mean and rstd of row xr from its plain sums
        float lin = 0, sq = 0;
        simd::shifted_sums(&xr, 1, n, 0.0f, lin, sq);
        coefficients(lin, sq, n, mean, rstd);
    };
    for (index_t r = r0; r < r1; ++r) {
        const float* xr = x + r * n;
        float* yr = y + r * n;
        switch (v) {
            case copy_nt:
                simd::for_each_store<true>(yr, n, [&](auto load) { return load(xr); });
                break;
            case read_only:
                live += simd::sum(xr, n);
                break;
            case two_phase: {
                row_coefficients(xr);
                const V m(mean), s(rstd);
                simd::for_each_store<true>(yr, n, [&](auto load) { return (load(xr) - m) * s; });
                break;
            }
            case pipelined: {
                if (r == r0) row_coefficients(xr);  // the first row's sums on their own
                const V m(mean), s(rstd);
                auto op = [=](auto load) { return (load(xr) - m) * s; };
                if (r + 1 == r1) {  // the last row's sweep alone
                    simd::for_each_store<true>(yr, n, op);
                    break;
                }
                float lin = 0, sq = 0;
                simd::for_each_store_summing<true>(yr, n, xr + n, 0.0f, lin, sq, op);
                coefficients(lin, sq, n, mean, rstd);
                break;
            }
            case one_sweep: {
                V lin(0.0f), sq(0.0f);
                const V m(mean), s(rstd);
                simd::for_each_store<true>(yr, n, [&](auto load) {
                    const V a = load(xr);
                    lin += a;
                    sq = xsimd::fma(a, a, sq);
                    return (a - m) * s;
                });
                coefficients(xsimd::hadd(lin), xsimd::hadd(sq), n, mean, rstd);
                break;
            }
            default:
                break;
        }
    }
    if (v != read_only) simd::fence();
    return live + mean;
}

using plain_norm = normspec::norm<normspec::reduce<normspec::axes::D>>;

double seconds_of(variant v, const float* x, float* y, const shape& s, int threads, float& sink) {
    const auto t0 = std::chrono::steady_clock::now();
    if (v == normspec_forward) {
        const std::size_t n = std::size_t(s.rows) * std::size_t(s.cols);
        const std::vector<std::size_t> dims{std::size_t(s.rows), std::size_t(s.cols)};
        auto xa = xt::adapt(x, n, xt::no_ownership(), dims);
        auto ya = xt::adapt(y, n, xt::no_ownership(), dims);
        using namespace normspec::axes;
        const auto saved = normspec::forward(plain_norm{}, normspec::named<T, D>(xa), normspec::out(ya), normspec::threads(threads));
        sink += saved.rstd.data()[0];
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }
    float live = 0;
#pragma omp parallel num_threads(threads) reduction(+ : live)
    {
#ifdef _OPENMP
        const index_t t = omp_get_thread_num(), nt = omp_get_num_threads();
#else
        const index_t t = 0, nt = 1;
#endif
        live += run_rows(v, x, y, s.rows * t / nt, s.rows * (t + 1) / nt, s.cols);
    }
    sink += live;
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

int usage(const char* why) {
    std::fprintf(stderr,
                 "normspec_ceiling: %s\nusage: normspec_ceiling [--shape RxD]... [--threads T]... [--reps N]\n"
                 "  (default: --shape 4096x4096 --shape 2048x3136 --shape 32x200704 --threads 1 --threads 2 --reps 15)\n",
                 why);
    return 2;
}

}  // namespace

int main(int argc, char** argv) {
    std::vector<shape> shapes;
    std::vector<int> thread_counts;
    int reps = 15;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (i + 1 >= argc) return usage(("no value after " + a).c_str());
        const char* v = argv[++i];
        if (a == "--shape") {
            long r = 0, d = 0;
            if (std::sscanf(v, "%ldx%ld", &r, &d) != 2 || r < 1 || d < 1) return usage("--shape takes RxD with R, D >= 1");
            shapes.push_back({index_t(r), index_t(d)});
        } else if (a == "--threads") {
            const int t = std::atoi(v);
            if (t < 1) return usage("--threads takes a count >= 1");
            thread_counts.push_back(t);
        } else if (a == "--reps") {
            reps = std::atoi(v);
            if (reps < 1) return usage("--reps takes a count >= 1");
        } else {
            return usage(("unknown option " + a).c_str());
        }
    }
    if (shapes.empty()) shapes = {{4096, 4096}, {2048, 3136}, {32, 200704}};
    if (thread_counts.empty()) thread_counts = {1, 2};

    std::printf("| shape | thr | copy_nt GB/s | read | two-phase | pipelined | one sweep | normspec |\n|---|---|---|---|---|---|---|---|\n");
    float sink = 0;
    std::mt19937 rng(12345);
    constexpr std::size_t flush_count = std::size_t(16) << 20;  // 64 MiB of floats
    const page_buffer flush(flush_count);
    std::fill(flush.data.get(), flush.data.get() + flush_count, 1.0f);
    for (const shape& s : shapes) {
        const std::size_t n = std::size_t(s.rows) * std::size_t(s.cols);
        const page_buffer xb(n), yb(n);
        float* const x = xb.data.get();
        float* const y = yb.data.get();
        for (std::size_t i = 0; i < n; ++i) x[i] = float(i % 1021) * 0.01f - 5.0f, y[i] = 0.0f;
        // two-phase, pipelined and normspec compute the same y: checked once per shape before timing
        seconds_of(two_phase, x, y, s, 1, sink);
        const std::vector<float> expected(y, y + n);
        for (variant v : {pipelined, normspec_forward}) {
            std::fill(y, y + n, 0.0f);
            seconds_of(v, x, y, s, 1, sink);
            double worst = 0;
            for (std::size_t i = 0; i < n; ++i) worst = std::max(worst, double(std::fabs(y[i] - expected[i])));
            if (!(worst <= 1e-3)) {
                std::fprintf(stderr, "normspec_ceiling: %s's y differs from two-phase's by %g at %ldx%ld\n",
                             v == pipelined ? "pipelined" : "normspec", worst, long(s.rows), long(s.cols));
                return 1;
            }
        }
        for (int threads : thread_counts) {
            std::vector<double> times[variants];
            int order[variants];
            for (int v = 0; v < variants; ++v) order[v] = v;
            for (int r = 0; r < reps; ++r) {
                // each repetition in its own random order, each variant after the same sweep over
                // another 64 MiB: none starts with what the one before it left in the caches or
                // in flight (an order fixed once for all measured up to 0.15 of copy_nt apart)
                std::shuffle(order, order + variants, rng);
                for (int v : order) {
                    sink += simd::sum(flush.data.get(), index_t(flush_count));
                    times[v].push_back(seconds_of(variant(v), x, y, s, threads, sink));
                }
            }
            double gbps[variants];
            for (int v = 0; v < variants; ++v) {
                std::sort(times[v].begin(), times[v].end());
                const double bytes = double(v == read_only ? 1 : 2) * double(n) * sizeof(float);  // read: x alone
                gbps[v] = bytes / times[v][times[v].size() / 2] / 1e9;
            }
            std::printf("| %ldx%ld | t%d | %.1f | %.2f | %.2f | %.2f | %.2f | %.2f |\n", long(s.rows), long(s.cols), threads,
                        gbps[copy_nt], gbps[read_only] / gbps[copy_nt], gbps[two_phase] / gbps[copy_nt],
                        gbps[pipelined] / gbps[copy_nt], gbps[one_sweep] / gbps[copy_nt], gbps[normspec_forward] / gbps[copy_nt]);
        }
    }
    std::printf("(fractions of copy_nt's GB/s, each the median of %d repetitions in random order; "
                "read counts the bytes of x, the others x read and y written)\n",
                reps);
    kept = sink;
    return 0;
}

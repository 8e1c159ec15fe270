// The limits: copy_nt (read x, write y with streaming stores that skip the read-for-ownership)
// and memcpy, both over the same bytes as one forward pass, split across the threads.
#include "bench.hpp"

#include <immintrin.h>

#include <cstring>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {
using bench::bench_case;

struct copy_runner : bench::owned_output {
    bool streaming;
    copy_runner(const bench_case& c_, const bench::inputs& in_, bool nt) : owned_output(c_, bench::op::fwd_train, in_), streaming(nt) {}
    void run() override {
        const std::int64_t n = std::int64_t(out.size());
#pragma omp parallel
        {
#ifdef _OPENMP
            const int t = omp_get_thread_num(), nt = omp_get_num_threads();
#else
            const int t = 0, nt = 1;
#endif
            std::int64_t b = n * t / nt, e = n * (t + 1) / nt;
            const float* src = in.x.data();
            float* dst = out.data();
            if (!streaming) {
                std::memcpy(dst + b, src + b, std::size_t(e - b) * sizeof(float));
            } else {
                while (b < e && (reinterpret_cast<std::uintptr_t>(dst + b) % 32) != 0) dst[b] = src[b], ++b;
                std::int64_t i = b;
                for (; i + 8 <= e; i += 8) _mm256_stream_ps(dst + i, _mm256_loadu_ps(src + i));
                for (; i < e; ++i) dst[i] = src[i];
                _mm_sfence();
            }
        }
    }
};

const bench::registration reg_nt("copy_nt", [](const bench_case& c, bench::op, int, const bench::inputs& in) {
    return std::unique_ptr<bench::runner>(std::make_unique<copy_runner>(c, in, true));
});
const bench::registration reg_memcpy("memcpy", [](const bench_case& c, bench::op, int, const bench::inputs& in) {
    return std::unique_ptr<bench::runner>(std::make_unique<copy_runner>(c, in, false));
});
}  // namespace

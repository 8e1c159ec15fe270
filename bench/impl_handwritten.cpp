// handwritten: what a user writes by hand: a straightforward two-pass OpenMP loop per norm and
// layout (mean, then variance around it, then normalize), float arithmetic, no SIMD intrinsics.
#include "bench.hpp"

#include <cmath>

namespace {
using bench::bench_case;
using std::int64_t;

struct hw_runner : bench::owned_output {
    using owned_output::owned_output;

    // rows of length n, parameters along the row (LayerNorm, RMSNorm, LayerNorm over C,H,W)
    void rows(int64_t count, int64_t n, bool rms) {
        const float* x = in.x.data();
        float* y = out.data();
#pragma omp parallel for
        for (int64_t r = 0; r < count; ++r) {
            const float* xr = x + r * n;
            float* yr = y + r * n;
            float mean = 0, var = 0;
            if (!rms) {
                for (int64_t i = 0; i < n; ++i) mean += xr[i];
                mean /= float(n);
            }
            for (int64_t i = 0; i < n; ++i) var += (xr[i] - mean) * (xr[i] - mean);
            const float rstd = 1.0f / std::sqrt(var / float(n) + bench::eps);
            for (int64_t i = 0; i < n; ++i)
                yr[i] = (xr[i] - mean) * rstd * in.gamma[i] + (rms ? 0.0f : in.beta[i]);
        }
    }

    // NCHW with statistics per (n, group of channels): contiguous runs of cg*HW (IN: cg = 1)
    void planes(int64_t groups) {
        const int64_t N = c.N(), C = c.C(), HW = c.HW(), cg = C / groups, len = cg * HW;
#pragma omp parallel for
        for (int64_t p = 0; p < N * groups; ++p) {
            const float* xr = in.x.data() + p * len;
            float* yr = out.data() + p * len;
            float mean = 0, var = 0;
            for (int64_t i = 0; i < len; ++i) mean += xr[i];
            mean /= float(len);
            for (int64_t i = 0; i < len; ++i) var += (xr[i] - mean) * (xr[i] - mean);
            const float rstd = 1.0f / std::sqrt(var / float(len) + bench::eps);
            const int64_t g = p % groups;
            for (int64_t i = 0; i < len; ++i) {
                const int64_t ch = g * cg + i / HW;
                yr[i] = (xr[i] - mean) * rstd * in.gamma[ch] + in.beta[ch];
            }
        }
    }

    // NHWC with statistics per (n, group of channels) over H,W (IN: groups = C)
    void channels_last(int64_t groups) {
        const int64_t N = c.N(), C = c.C(), HW = c.HW(), cg = C / groups;
#pragma omp parallel for
        for (int64_t n = 0; n < N; ++n) {
            const float* xn = in.x.data() + n * HW * C;
            float* yn = out.data() + n * HW * C;
            std::vector<float> mean(groups, 0.0f), var(groups, 0.0f);
            for (int64_t p = 0; p < HW; ++p)
                for (int64_t ch = 0; ch < C; ++ch) mean[ch / cg] += xn[p * C + ch];
            for (auto& m : mean) m /= float(HW * cg);
            for (int64_t p = 0; p < HW; ++p)
                for (int64_t ch = 0; ch < C; ++ch) {
                    const float d = xn[p * C + ch] - mean[ch / cg];
                    var[ch / cg] += d * d;
                }
            for (auto& v : var) v = 1.0f / std::sqrt(v / float(HW * cg) + bench::eps);
            for (int64_t p = 0; p < HW; ++p)
                for (int64_t ch = 0; ch < C; ++ch)
                    yn[p * C + ch] = (xn[p * C + ch] - mean[ch / cg]) * var[ch / cg] * in.gamma[ch] + in.beta[ch];
        }
    }

    void batch_norm() {
        const int64_t N = c.N(), C = c.C(), HW = c.HW();
        const float* x = in.x.data();
        std::vector<float> mean(C, 0.0f), rstd(C, 0.0f);
        const bool train = o == bench::op::fwd_train;
        auto at = [&](int64_t n, int64_t ch, int64_t p) { return c.nhwc() ? (n * HW + p) * C + ch : (n * C + ch) * HW + p; };
        if (train) {
#pragma omp parallel for
            for (int64_t ch = 0; ch < C; ++ch) {
                float s = 0, q = 0;
                for (int64_t n = 0; n < N; ++n)
                    for (int64_t p = 0; p < HW; ++p) s += x[at(n, ch, p)];
                const float m = s / float(N * HW);
                for (int64_t n = 0; n < N; ++n)
                    for (int64_t p = 0; p < HW; ++p) q += (x[at(n, ch, p)] - m) * (x[at(n, ch, p)] - m);
                mean[ch] = m;
                rstd[ch] = 1.0f / std::sqrt(q / float(N * HW) + bench::eps);
                const float cnt = float(N * HW);
                rm[ch] = (1 - bench::momentum) * rm[ch] + bench::momentum * m;
                rv[ch] = (1 - bench::momentum) * rv[ch] + bench::momentum * q / (cnt - 1);
            }
        } else {
            for (int64_t ch = 0; ch < C; ++ch) mean[ch] = rm[ch], rstd[ch] = 1.0f / std::sqrt(rv[ch] + bench::eps);
        }
#pragma omp parallel for
        for (int64_t n = 0; n < N; ++n)
            for (int64_t ch = 0; ch < C; ++ch)
                for (int64_t p = 0; p < HW; ++p) {
                    const int64_t i = at(n, ch, p);
                    out[i] = (x[i] - mean[ch]) * rstd[ch] * in.gamma[ch] + in.beta[ch];
                }
    }

    void run() override {
        if (c.norm == "layer_norm" || c.norm == "rms_norm") rows(c.shape[0], c.shape[1], c.norm == "rms_norm");
        else if (c.norm == "layer_norm_cnn") rows(c.N(), c.size() / c.N(), false);
        else if (c.norm == "batch_norm") batch_norm();
        else {
            const int64_t groups = c.norm == "instance_norm" ? c.C() : c.groups;
            c.nhwc() ? channels_last(groups) : planes(groups);
        }
    }
};

const bench::registration reg("handwritten", [](const bench_case& c, bench::op o, int, const bench::inputs& in) {
    if (o == bench::op::bwd) return std::unique_ptr<bench::runner>();  // forward only
    return std::unique_ptr<bench::runner>(std::make_unique<hw_runner>(c, o, in));
});
}  // namespace

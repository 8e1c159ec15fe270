// libtorch (libtorch-dev 1.13) CPU kernels: at::native_batch_norm,
// at::native_layer_norm, at::native_group_norm, at::instance_norm; RMSNorm as the composite
// x * rsqrt(mean(x^2) + eps) * w. NHWC inputs are channels-last tensors over the same memory.
// bwd: at::native_batch_norm_backward, at::native_layer_norm_backward, at::native_group_norm_backward
// from the statistics of one forward; InstanceNorm and RMSNorm by autograd over a retained graph.
#include "bench.hpp"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/autograd.h>

namespace {
using bench::bench_case;

struct torch_runner : bench::owned_output {
    at::Tensor x, w, b, run_mean, run_var, result;
    at::Tensor dy, save_mean, save_rstd, xg, wg, bg, yg;  // bwd
    mutable at::Tensor checked;

    torch_runner(const bench_case& c_, bench::op o_, int threads, const bench::inputs& in)
        : owned_output(c_, o_, in) {
        at::set_num_threads(threads);
        auto f = at::TensorOptions().dtype(at::kFloat);
        std::vector<std::int64_t> sizes(c.shape.begin(), c.shape.end()), strides;
        if (c.shape.size() == 4 && c.nhwc()) {
            const auto C = c.shape[1], H = c.shape[2], W = c.shape[3];
            strides = {H * W * C, 1, W * C, C};
        } else {
            strides.assign(sizes.size(), 1);
            for (int d = int(sizes.size()) - 2; d >= 0; --d) strides[d] = strides[d + 1] * sizes[d + 1];
        }
        x = at::from_blob(const_cast<float*>(in.x.data()), sizes, strides, f);
        std::vector<std::int64_t> psizes{in.param_size};
        if (c.norm == "layer_norm_cnn") psizes = {c.shape[1], c.shape[2], c.shape[3]};
        w = at::from_blob(const_cast<float*>(in.gamma.data()), psizes, f);
        b = at::from_blob(const_cast<float*>(in.beta.data()), psizes, f);
        run_mean = at::from_blob(rm.data(), {std::int64_t(rm.size())}, f);
        run_var = at::from_blob(rv.data(), {std::int64_t(rv.size())}, f);
        if (o == bench::op::bwd) prepare_backward(in);
    }
    void prepare_backward(const bench::inputs& in) {
        std::vector<std::int64_t> sizes(x.sizes().begin(), x.sizes().end()), strides(x.strides().begin(), x.strides().end());
        dy = at::from_blob(const_cast<float*>(in.dy.data()), sizes, strides, at::TensorOptions().dtype(at::kFloat));
        if (c.norm == "batch_norm") {
            auto r = at::native_batch_norm(x, w, b, run_mean, run_var, true, bench::momentum, bench::eps);
            save_mean = std::get<1>(r), save_rstd = std::get<2>(r);
        } else if (c.norm == "layer_norm" || c.norm == "layer_norm_cnn") {
            auto shape = c.norm == "layer_norm" ? std::vector<std::int64_t>{c.shape[1]}
                                                : std::vector<std::int64_t>{c.shape[1], c.shape[2], c.shape[3]};
            auto r = at::native_layer_norm(x, shape, w, b, bench::eps);
            save_mean = std::get<1>(r), save_rstd = std::get<2>(r);
        } else if (c.norm == "group_norm" && !c.nhwc()) {
            auto r = at::native_group_norm(x, w, b, c.N(), c.C(), c.HW(), c.groups, bench::eps);
            save_mean = std::get<1>(r), save_rstd = std::get<2>(r);
        } else {  // autograd: the graph of one forward, kept for every backward
            xg = x.detach().requires_grad_(true);
            wg = w.detach().requires_grad_(true);
            if (c.norm == "group_norm") {
                // native_group_norm_backward on channels-last data is wrong in 1.13 (max diff 11.7 against
                // autograd); at::group_norm's autograd is right
                bg = b.detach().requires_grad_(true);
                yg = at::group_norm(xg, c.groups, wg, bg, bench::eps);
            } else if (c.norm == "instance_norm") {
                bg = b.detach().requires_grad_(true);
                yg = at::instance_norm(xg, wg, bg, {}, {}, true, bench::momentum, bench::eps, false);
            } else {
                yg = xg * at::rsqrt(xg.pow(2).mean(-1, true) + bench::eps) * wg;
            }
        }
    }
    void run_backward() {
        const std::array<bool, 3> all{true, true, true};
        if (c.norm == "batch_norm") {
            result = std::get<0>(at::native_batch_norm_backward(dy, x, w, run_mean, run_var, save_mean, save_rstd, true, bench::eps, all));
        } else if (c.norm == "layer_norm" || c.norm == "layer_norm_cnn") {
            auto shape = c.norm == "layer_norm" ? std::vector<std::int64_t>{c.shape[1]}
                                                : std::vector<std::int64_t>{c.shape[1], c.shape[2], c.shape[3]};
            result = std::get<0>(at::native_layer_norm_backward(dy, x, shape, save_mean, save_rstd, w, b, all));
        } else if (c.norm == "group_norm" && !c.nhwc()) {
            result = std::get<0>(at::native_group_norm_backward(dy, x, save_mean, save_rstd, w, c.N(), c.C(), c.HW(), c.groups, all));
        } else {
            std::vector<at::Tensor> inputs{xg, wg};
            if (bg.defined()) inputs.push_back(bg);
            result = torch::autograd::grad({yg}, inputs, {dy}, /*retain_graph=*/true)[0];
        }
    }
    void run() override {
        if (o == bench::op::bwd) return run_backward();
        const bool train = o == bench::op::fwd_train;
        if (c.norm == "batch_norm") {
            // native_batch_norm.out has no CPU kernel in 1.13: the allocating form it is
            result = std::get<0>(at::native_batch_norm(x, w, b, run_mean, run_var, train, bench::momentum, bench::eps));
        } else if (c.norm == "layer_norm") {
            result = std::get<0>(at::native_layer_norm(x, {c.shape[1]}, w, b, bench::eps));
        } else if (c.norm == "layer_norm_cnn") {
            result = std::get<0>(at::native_layer_norm(x, {c.shape[1], c.shape[2], c.shape[3]}, w, b, bench::eps));
        } else if (c.norm == "group_norm") {
            result = std::get<0>(at::native_group_norm(x, w, b, c.N(), c.C(), c.HW(), c.groups, bench::eps));
        } else if (c.norm == "instance_norm") {
            result = at::instance_norm(x, w, b, {}, {}, true, bench::momentum, bench::eps, false);
        } else {  // rms_norm
            result = x * at::rsqrt(x.pow(2).mean(-1, true) + bench::eps) * w;
        }
    }
    const float* y() const override {
        // in the case's memory layout, for the check (not timed)
        checked = c.shape.size() == 4 && c.nhwc() ? result.contiguous(at::MemoryFormat::ChannelsLast) : result.contiguous();
        return checked.data_ptr<float>();
    }
};

const bench::registration reg("libtorch", [](const bench_case& c, bench::op o, int t, const bench::inputs& in) {
    // instance_norm's backward on channels-last data is wrong in 1.13 (max diff 12 against its own
    // contiguous result): there is no correct libtorch kernel to time
    if (o == bench::op::bwd && c.norm == "instance_norm" && c.nhwc()) return std::unique_ptr<bench::runner>();
    return std::unique_ptr<bench::runner>(std::make_unique<torch_runner>(c, o, t, in));
});
}  // namespace

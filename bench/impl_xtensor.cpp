// xtensor: the naive expression a user of xtensor writes: xt::mean and the variance over the
// reduced axes (keep_dims), then one broadcast expression for y. Single-threaded.
#include "bench.hpp"

#include <xtensor/xadapt.hpp>
#include <xtensor/xmath.hpp>
#include <xtensor/xreducer.hpp>
#include <xtensor/xnoalias.hpp>
#include <xtensor/xview.hpp>

namespace {
using bench::bench_case;
using std::size_t;

struct xt_runner : bench::owned_output {
    using owned_output::owned_output;

    /// x's shape with the reduced axes set to 1 (what keep_dims would give; keep_dims itself
    /// returns a wrong rank on adaptors in xtensor 0.24.3)
    template <class Shape, class Axes>
    static std::vector<size_t> kept_shape(const Shape& shape, const Axes& axes) {
        std::vector<size_t> k(shape.begin(), shape.end());
        for (auto a : axes) k[a] = 1;
        return k;
    }

    template <class Shape, class Axes, class PShape>
    void norm(const Shape& shape, const Axes& axes, const PShape& pshape, bool rms) {
        auto x = xt::adapt(in.x.data(), in.x.size(), xt::no_ownership(), shape);
        auto y = xt::adapt(out.data(), out.size(), xt::no_ownership(), shape);
        auto g = xt::adapt(in.gamma.data(), in.gamma.size(), xt::no_ownership(), pshape);
        auto b = xt::adapt(in.beta.data(), in.beta.size(), xt::no_ownership(), pshape);
        const auto kd = kept_shape(shape, axes);
        if (rms) {
            xt::xarray<float> ms = xt::mean(xt::square(x), axes);
            ms.reshape(kd);
            xt::noalias(y) = x / xt::sqrt(ms + bench::eps) * g;
            return;
        }
        xt::xarray<float> mean = xt::mean(x, axes);
        mean.reshape(kd);
        xt::xarray<float> var = xt::mean(xt::square(x - mean), axes);
        var.reshape(kd);
        xt::noalias(y) = (x - mean) / xt::sqrt(var + bench::eps) * g + b;
    }

    void batch_norm_eval(const std::vector<size_t>& shape, const std::vector<size_t>& pshape) {
        auto x = xt::adapt(in.x.data(), in.x.size(), xt::no_ownership(), shape);
        auto y = xt::adapt(out.data(), out.size(), xt::no_ownership(), shape);
        auto g = xt::adapt(in.gamma.data(), in.gamma.size(), xt::no_ownership(), pshape);
        auto b = xt::adapt(in.beta.data(), in.beta.size(), xt::no_ownership(), pshape);
        auto m = xt::adapt(rm.data(), rm.size(), xt::no_ownership(), pshape);
        auto v = xt::adapt(rv.data(), rv.size(), xt::no_ownership(), pshape);
        xt::noalias(y) = (x - m) / xt::sqrt(v + bench::eps) * g + b;
    }

    void run() override {
        const size_t N = size_t(c.N()), C = size_t(c.C()), HW = size_t(c.HW());
        using V = std::vector<size_t>;
        if (c.norm == "layer_norm" || c.norm == "rms_norm") {
            norm(V{size_t(c.shape[0]), size_t(c.shape[1])}, V{1}, V{size_t(c.shape[1])}, c.norm == "rms_norm");
        } else if (c.norm == "layer_norm_cnn") {
            norm(V{N, C, HW}, V{1, 2}, V{C, HW}, false);
        } else if (c.norm == "batch_norm") {
            const V shape = c.nhwc() ? V{N, HW, C} : V{N, C, HW};
            const V pshape = c.nhwc() ? V{C} : V{C, 1};
            if (o == bench::op::fwd_eval) return batch_norm_eval(shape, pshape);
            norm(shape, c.nhwc() ? V{0, 1} : V{0, 2}, pshape, false);
        } else {
            const size_t G = c.norm == "instance_norm" ? C : size_t(c.groups), cg = C / G;
            if (c.nhwc())
                norm(V{N, HW, G, cg}, V{1, 3}, V{G, cg}, false);
            else
                norm(V{N, G, cg, HW}, V{2, 3}, V{G, cg, 1}, false);
        }
    }
};

const bench::registration reg("xtensor", [](const bench_case& c, bench::op o, int, const bench::inputs& in) {
    if (o == bench::op::bwd) return std::unique_ptr<bench::runner>();  // forward only
    return std::unique_ptr<bench::runner>(std::make_unique<xt_runner>(c, o, in));
});
}  // namespace

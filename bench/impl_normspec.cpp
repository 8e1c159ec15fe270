// normspec: the zoo's aliases on raw buffers through xt::adapt, output preallocated; bwd runs
// backward() from the statistics of one training-mode forward, dx into a preallocated buffer.
#include "bench.hpp"

#include <normspec/normspec.hpp>
#include <xtensor/xadapt.hpp>

namespace {
using namespace normspec;

template <class Spec, class... A>
struct ns_runner : bench::owned_output {
    int threads;
    std::vector<std::size_t> shape;
    ns_runner(const bench::bench_case& c_, bench::op o_, int t, const bench::inputs& in_) : owned_output(c_, o_, in_), threads(t) {
        if (c.shape.size() == 4 && c.nhwc())
            shape = {std::size_t(c.shape[0]), std::size_t(c.shape[2]), std::size_t(c.shape[3]), std::size_t(c.shape[1])};
        else
            shape.assign(c.shape.begin(), c.shape.end());
    }
    using saved_t = saved_stats<float, Spec::template stat_axes<A...>::size>;
    saved_t saved;  // bwd: the statistics of a training-mode forward, taken once

    template <class X, class G>
    auto backward_into(const X& x, const G& g) {
        auto dy = xt::adapt(in.dy.data(), in.dy.size(), xt::no_ownership(), shape);
        auto dx = xt::adapt(out.data(), out.size(), xt::no_ownership(), shape);
        if constexpr (Spec::has_gamma)
            return backward(Spec{}, named<A...>(x), dy, saved, gamma(g), normspec::out(dx), normspec::threads(this->threads));
        else
            return backward(Spec{}, named<A...>(x), dy, saved, normspec::out(dx), normspec::threads(this->threads));
    }

    void run() override {
        if (o == bench::op::bwd) {
            auto x = xt::adapt(in.x.data(), in.x.size(), xt::no_ownership(), shape);
            std::vector<std::size_t> pshape{std::size_t(in.param_size)};
            if (c.norm == "layer_norm_cnn") pshape = {std::size_t(c.shape[1]), std::size_t(c.shape[2]), std::size_t(c.shape[3])};
            auto g = xt::adapt(in.gamma.data(), in.gamma.size(), xt::no_ownership(), pshape);
            if (saved.rstd.size() == 0) {  // first call: the forward, in training mode
                o = bench::op::fwd_train;
                run();
                o = bench::op::bwd;
            }
            backward_into(x, g);
            return;
        }
        auto x = xt::adapt(in.x.data(), in.x.size(), xt::no_ownership(), shape);
        auto y = xt::adapt(out.data(), out.size(), xt::no_ownership(), shape);
        std::vector<std::size_t> pshape{std::size_t(in.param_size)};
        if (c.norm == "layer_norm_cnn") pshape = {std::size_t(c.shape[1]), std::size_t(c.shape[2]), std::size_t(c.shape[3])};
        auto g = xt::adapt(in.gamma.data(), in.gamma.size(), xt::no_ownership(), pshape);
        auto b = xt::adapt(in.beta.data(), in.beta.size(), xt::no_ownership(), pshape);
        const auto mode_ = o == bench::op::fwd_train ? mode::train : mode::eval;
        if constexpr (Spec::has_running_stats) {
            auto m = xt::adapt(rm.data(), rm.size(), xt::no_ownership(), std::vector<std::size_t>{rm.size()});
            auto v = xt::adapt(rv.data(), rv.size(), xt::no_ownership(), std::vector<std::size_t>{rv.size()});
            saved = forward(Spec{}, named<A...>(x), gamma(g), beta(b), running(m, v), mode_, normspec::out(y), normspec::threads(this->threads));
        } else if constexpr (Spec::runtime_groups) {
            saved = forward(Spec{}, named<A...>(x), gamma(g), beta(b), num_groups(c.groups), mode_, normspec::out(y), normspec::threads(this->threads));
        } else if constexpr (Spec::has_beta) {
            saved = forward(Spec{}, named<A...>(x), gamma(g), beta(b), mode_, normspec::out(y), normspec::threads(this->threads));
        } else {
            saved = forward(Spec{}, named<A...>(x), gamma(g), mode_, normspec::out(y), normspec::threads(this->threads));
        }
    }
};

template <class Spec, class... A>
std::unique_ptr<bench::runner> make(const bench::bench_case& c, bench::op o, int t, const bench::inputs& in) {
    return std::make_unique<ns_runner<Spec, A...>>(c, o, t, in);
}

const bench::registration reg("normspec", [](const bench::bench_case& c, bench::op o, int t,
                                             const bench::inputs& in) -> std::unique_ptr<bench::runner> {
    const bool nhwc = c.nhwc();
    if (c.norm == "batch_norm") return nhwc ? make<batch_norm, N, H, W, C>(c, o, t, in) : make<batch_norm, N, C, H, W>(c, o, t, in);
    if (c.norm == "instance_norm")
        return nhwc ? make<instance_norm, N, H, W, C>(c, o, t, in) : make<instance_norm, N, C, H, W>(c, o, t, in);
    if (c.norm == "group_norm") return nhwc ? make<group_norm<>, N, H, W, C>(c, o, t, in) : make<group_norm<>, N, C, H, W>(c, o, t, in);
    if (c.norm == "layer_norm_cnn") return make<layer_norm_cnn, N, C, H, W>(c, o, t, in);
    if (c.norm == "layer_norm") return make<layer_norm, T, D>(c, o, t, in);
    if (c.norm == "rms_norm") return make<rms_norm, T, D>(c, o, t, in);
    return nullptr;
});
}  // namespace

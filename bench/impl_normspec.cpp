// normspec: the zoo's aliases on raw buffers through xt::adapt (made once per runner), output
// preallocated; bwd runs backward() from the statistics of one training-mode forward, dx, dgamma
// and dbeta into preallocated buffers (as oneDNN's are).
#include "bench.hpp"

#include <normspec/normspec.hpp>
#include <xtensor/xadapt.hpp>

namespace {
using namespace normspec;

/// xt::adapt over a float buffer with a given shape, the type every tensor below has
using view = decltype(xt::adapt(static_cast<float*>(nullptr), std::size_t(0), xt::no_ownership(), std::vector<std::size_t>{}));
inline view adapt(const float* p, std::size_t n, std::vector<std::size_t> shape) {
    return xt::adapt(const_cast<float*>(p), n, xt::no_ownership(), std::move(shape));
}

template <class Spec, class... A>
struct ns_runner : bench::owned_output {
    int threads;
    std::vector<std::size_t> shape, pshape;
    // the tensors are adapted once, as oneDNN's memory objects are made once: a call then costs
    // what the library does, not the harness's shape copies
    std::vector<float> dgv, dbv;  // bwd: dgamma and dbeta
    view x, y, dy, g, b, rmv, rvv, dg, db;
    ns_runner(const bench::bench_case& c_, bench::op o_, int t, const bench::inputs& in_)
        : owned_output(c_, o_, in_), threads(t), shape(layout_shape(c_)), pshape(param_shape(c_, in_)),
          dgv(in_.gamma.size()), dbv(in_.gamma.size()),
          x(adapt(in.x.data(), in.x.size(), shape)), y(adapt(out.data(), out.size(), shape)),
          dy(adapt(in.dy.data(), in.dy.size(), shape)), g(adapt(in.gamma.data(), in.gamma.size(), pshape)),
          b(adapt(in.beta.data(), in.beta.size(), pshape)), rmv(adapt(rm.data(), rm.size(), {rm.size()})),
          rvv(adapt(rv.data(), rv.size(), {rv.size()})), dg(adapt(dgv.data(), dgv.size(), pshape)),
          db(adapt(dbv.data(), dbv.size(), pshape)) {}
    static std::vector<std::size_t> layout_shape(const bench::bench_case& c) {
        if (c.shape.size() == 4 && c.nhwc())
            return {std::size_t(c.shape[0]), std::size_t(c.shape[2]), std::size_t(c.shape[3]), std::size_t(c.shape[1])};
        return {c.shape.begin(), c.shape.end()};
    }
    static std::vector<std::size_t> param_shape(const bench::bench_case& c, const bench::inputs& in) {
        if (c.norm == "layer_norm_cnn") return {std::size_t(c.shape[1]), std::size_t(c.shape[2]), std::size_t(c.shape[3])};
        return {std::size_t(in.param_size)};
    }
    using saved_t = saved_stats<float, Spec::template stat_axes<A...>::size>;
    saved_t saved;  // bwd: the statistics of a training-mode forward, taken once

    void run() override {
        if (o == bench::op::bwd) {
            if (saved.rstd.size() == 0) {  // first call: the forward, in training mode
                o = bench::op::fwd_train;
                run();
                o = bench::op::bwd;
            }
            // dx into the output buffer (y's view), dgamma and dbeta into theirs
            if constexpr (Spec::has_beta)
                backward(Spec{}, named<A...>(x), dy, saved, gamma(g), normspec::out(y), out_dgamma(dg), out_dbeta(db),
                         normspec::threads(threads));
            else if constexpr (Spec::has_gamma)
                backward(Spec{}, named<A...>(x), dy, saved, gamma(g), normspec::out(y), out_dgamma(dg), normspec::threads(threads));
            else
                backward(Spec{}, named<A...>(x), dy, saved, normspec::out(y), normspec::threads(threads));
            return;
        }
        const auto mode_ = o == bench::op::fwd_train ? mode::train : mode::eval;
        if constexpr (Spec::has_running_stats)
            saved = forward(Spec{}, named<A...>(x), gamma(g), beta(b), running(rmv, rvv), mode_, normspec::out(y), normspec::threads(threads));
        else if constexpr (Spec::runtime_groups)
            saved = forward(Spec{}, named<A...>(x), gamma(g), beta(b), num_groups(c.groups), mode_, normspec::out(y), normspec::threads(threads));
        else if constexpr (Spec::has_beta)
            saved = forward(Spec{}, named<A...>(x), gamma(g), beta(b), mode_, normspec::out(y), normspec::threads(threads));
        else
            saved = forward(Spec{}, named<A...>(x), gamma(g), mode_, normspec::out(y), normspec::threads(threads));
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

// normspec/dynamic.hpp
// The forward pass when the spec and the tensor's names are only known at run time (the CLI,
// a model read from a config file): a spec_desc from describe<Spec>(), names as strings,
// xt::xarray data. Same engine, same checks as forward(), reported as exceptions.
#ifndef NORMSPEC_DYNAMIC_HPP
#define NORMSPEC_DYNAMIC_HPP

#include "backward.hpp"
#include "engine/backward.hpp"
#include "engine/forward.hpp"
#include "named.hpp"

#include <optional>
#include <string_view>
#include <vector>

namespace normspec {

template <class T>
struct dynamic_inputs {
    const xt::xarray<T>* gamma = nullptr;
    const xt::xarray<T>* beta = nullptr;
    xt::xarray<T>* running_mean = nullptr;  // updated in place in training mode
    xt::xarray<T>* running_var = nullptr;
    double eps = 1e-5, momentum = 0.1;
    mode run_mode = mode::train;
    std::ptrdiff_t groups = 0;
    int threads = 0;
};

template <class T>
struct dynamic_result {
    xt::xarray<T> y, mean, rstd;  // mean is empty for rms specs
    std::vector<std::string> stat_axes;
};

template <class T>
dynamic_result<T> forward_dynamic(const spec_desc& spec, const std::vector<std::string_view>& names, const xt::xarray<T>& x,
                                  const dynamic_inputs<T>& in) {
    auto xs = detail::lower<const T>(x);
    const engine::binding b = engine::bind(spec, names, xs.shape.data(), xs.rank, in.groups);
    if (spec.kind == param_kind::none && (in.gamma || in.beta)) engine::fail("gamma or beta given to a norm without parameters");
    if (spec.kind != param_kind::affine && in.beta) engine::fail("beta given to a norm without beta");
    if ((in.running_mean != nullptr) != (in.running_var != nullptr)) engine::fail("running mean and running var go together");
    if (in.running_mean && !spec.couples_batch)
        engine::fail("running statistics given to a norm whose reduce<...> holds no batch axis");

    engine::forward_args<T> a;
    a.x = xs;
    a.eps = in.eps;
    a.momentum = in.momentum;
    a.train = in.run_mode == mode::train;
    a.threads = in.threads;
    const auto pnames = engine::param_axis_names(b);
    std::optional<xt::xarray<T>> gp, bp, rm, rv;
    if (in.gamma) a.gamma = detail::parameter_data<T>("gamma", pnames, b.param_shape, *in.gamma, gp, "the tensor's");
    if (in.beta) a.beta = detail::parameter_data<T>("beta", pnames, b.param_shape, *in.beta, bp, "the tensor's");
    if (in.running_mean) {
        rm.emplace(detail::packed_checked<T>("running_mean", b.stat_names, b.stat_shape, *in.running_mean, "the statistics'"));
        rv.emplace(detail::packed_checked<T>("running_var", b.stat_names, b.stat_shape, *in.running_var, "the statistics'"));
        a.running_mean = rm->data();
        a.running_var = rv->data();
    }
    dynamic_result<T> r;
    r.stat_axes.assign(b.stat_names.begin(), b.stat_names.end());
    std::vector<std::size_t> stat_shape(b.stat_shape.begin(), b.stat_shape.end());
    if (!spec.rms) r.mean = xt::xarray<T>::from_shape(stat_shape);
    r.rstd = xt::xarray<T>::from_shape(stat_shape);
    a.save_mean = spec.rms ? nullptr : r.mean.data();
    a.save_rstd = r.rstd.data();
    r.y = xt::xarray<T>::from_shape(x.shape());
    a.y = detail::lower<T>(r.y);
    engine::forward(spec, b, a);
    if (in.running_mean && a.train) {
        *in.running_mean = *rm;
        *in.running_var = *rv;
    }
    return r;
}

template <class T>
struct dynamic_gradients {
    xt::xarray<T> dx, dgamma, dbeta;  // dgamma, dbeta empty where the spec has none
};

/// The backward pass of forward_dynamic: gradients of sum(dy * y) from its saved statistics.
template <class T>
dynamic_gradients<T> backward_dynamic(const spec_desc& spec, const std::vector<std::string_view>& names, const xt::xarray<T>& x,
                                      const xt::xarray<T>& dy, const dynamic_result<T>& saved, const dynamic_inputs<T>& in) {
    engine::backward_args<T> a;
    a.x = detail::lower<const T>(x);
    const engine::binding b = engine::bind(spec, names, a.x.shape.data(), a.x.rank, in.groups);
    const engine::axis_names xnames(names.begin(), names.end());
    engine::check_extents("dy", xnames, detail::shape_of(x), detail::shape_of(dy).data(), int(dy.dimension()), "x's");
    a.dy = detail::lower<const T>(dy);
    std::optional<xt::xarray<T>> mean, rstd, gp;
    detail::saved_into<T>(b, spec.rms, saved, mean, rstd, a);
    if (in.gamma) a.gamma = detail::parameter_data<T>("gamma", engine::param_axis_names(b), b.param_shape, *in.gamma, gp, "the tensor's");
    a.constant_stats = spec.couples_batch && in.run_mode == mode::eval;
    a.threads = in.threads;
    dynamic_gradients<T> g;
    g.dx = xt::xarray<T>::from_shape(x.shape());
    a.dx = detail::lower<T>(g.dx);
    std::vector<std::size_t> pshape(b.param_shape.begin(), b.param_shape.end());
    if (spec.kind != param_kind::none) g.dgamma = xt::xarray<T>::from_shape(pshape), a.dgamma = g.dgamma.data();
    if (spec.kind == param_kind::affine) g.dbeta = xt::xarray<T>::from_shape(pshape), a.dbeta = g.dbeta.data();
    engine::backward(spec, b, a);
    return g;
}

}  // namespace normspec

#endif  // NORMSPEC_DYNAMIC_HPP

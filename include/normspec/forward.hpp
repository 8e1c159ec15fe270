// normspec/forward.hpp
// forward(spec, named<...>(x), keywords...): the forward pass of any spec on xtensor data.
//   - training mode (default): batch statistics; returns y (unless out() is given) and the saved
//     mean and rstd = 1/sqrt(var + eps), shaped as the statistic axes in layout order; norms with
//     running statistics update them: running = (1 - m) * running + m * batch, with the unbiased
//     variance going into running_var (PyTorch's convention, m = 0.1);
//   - eval mode: norms with running statistics normalize with them; the others take the same path
//     as training, since their type says train and eval do not differ.
// Every check that the types allow is a static_assert; the rest throw std::invalid_argument.
#ifndef NORMSPEC_FORWARD_HPP
#define NORMSPEC_FORWARD_HPP

#include "engine/forward.hpp"
#include "named.hpp"
#include "spec.hpp"

#include <xtensor/xtensor.hpp>

namespace normspec {

/// Statistics a training step saves for the backward pass, shaped as the statistic axes in
/// layout order (BatchNorm (C), LayerNorm (B,T), InstanceNorm (N,C), GroupNorm (N,G)).
/// For rms specs `mean` is empty: nothing is subtracted.
template <class T, std::size_t K>
struct saved_stats {
    xt::xtensor<T, K> mean, rstd;
};

template <class T, std::size_t R, std::size_t K>
struct forward_result : saved_stats<T, K> {
    xt::xtensor<T, R> y;
};

namespace detail {

template <class Axis, class List>
constexpr std::size_t index_in() {
    return []<class... A>(axis_list<A...>) {
        std::size_t i = 0, found = 0;
        ((std::is_same_v<Axis, A> ? (found = i, ++i) : ++i), ...);
        return found;
    }(List{});
}

template <class S, class TensorAxes, class X, class P, class Which>
constexpr bool check_static_extents() {
    using XS = static_extents<std::decay_t<X>>;
    using PS = static_extents<std::decay_t<P>>;
    if constexpr (XS::known && PS::known) {
        return []<class... PA, std::size_t... I>(axis_list<PA...>, std::index_sequence<I...>) {
            return ([]<class Axis, std::size_t Pos>() {
                constexpr std::size_t e = XS::impl::value[index_in<Axis, TensorAxes>()];
                constexpr std::size_t p = Pos < PS::impl::value.size() ? PS::impl::value[Pos] : 0;
                return diagnostic::require<e == p, diagnostic::parameter_extent_differs_from_tensor, Axis, Which,
                                           std::integral_constant<std::size_t, p>, std::integral_constant<std::size_t, e>>();
            }.template operator()<PA, I>() && ...);
        }(typename S::param_axes{}, std::make_index_sequence<S::param_axes::size>{});
    }
    return true;
}

template <class S, class TensorAxes, class X>
constexpr bool check_static_groups() {
    using XS = static_extents<std::decay_t<X>>;
    if constexpr (S::grouped && S::static_groups != dynamic && XS::known) {
        using A = typename S::group_axis;
        if constexpr (contains_v<A, TensorAxes>) {
            constexpr std::size_t e = XS::impl::value[index_in<A, TensorAxes>()];
            return diagnostic::require<e % S::static_groups == 0, diagnostic::groups_do_not_divide_extent, A,
                                       std::integral_constant<std::size_t, S::static_groups>,
                                       std::integral_constant<std::size_t, e>>();
        }
    }
    return true;
}

struct none {};
/// kw::find's fallback where a keyword may be absent: an object, since find returns a reference
/// to its fallback and a temporary none{} would be gone by the time the result is used
inline constexpr none absent{};

}  // namespace detail

template <spec S, class E, class... A, class... Kw>
auto forward(S, const named_tensor<E, A...>& xn, Kw&&... kws) {
    using X = std::decay_t<E>;
    using T = std::decay_t<typename X::value_type>;
    using TensorAxes = axis_list<A...>;
    using StatAxes = typename S::template stat_axes<A...>;
    constexpr std::size_t R = sizeof...(A), K = StatAxes::size;

    // ---- compile-time checks: one diagnostic per misuse ----
    constexpr bool ok_type = diagnostic::require<std::is_same_v<T, float> || std::is_same_v<T, double>,
                                                 diagnostic::forward_needs_float_or_double, T>();
    constexpr bool ok_bind = check_binding<S, TensorAxes>();
    constexpr bool ok_kw = (diagnostic::require<kw::is_keyword<std::decay_t<Kw>>::value,
                                                diagnostic::forward_takes_no_such_argument, std::decay_t<Kw>>() && ...);
    constexpr bool ok_beta =
        diagnostic::require<S::has_beta || !kw::has<kw::is_beta, Kw...>, diagnostic::beta_given_to_a_norm_without_beta, S>();
    constexpr bool ok_gamma = diagnostic::require<S::has_gamma || !kw::has<kw::is_gamma, Kw...>,
                                                  diagnostic::gamma_given_to_a_norm_without_parameters, S>();
    constexpr bool ok_running = diagnostic::require<S::has_running_stats || !kw::has<kw::is_running, Kw...>,
                                                    diagnostic::running_stats_given_to_a_norm_without_them, S>();
    constexpr bool ok_groups_given = diagnostic::require<S::runtime_groups || !kw::has<kw::is_groups, Kw...>,
                                                         diagnostic::groups_count_given_to_a_norm_without_runtime_groups, S>();
    constexpr bool ok_groups_needed = diagnostic::require<!S::runtime_groups || kw::has<kw::is_groups, Kw...>,
                                                          diagnostic::runtime_groups_need_num_groups, S>();
    auto&& g_kw = kw::find<kw::is_gamma>(detail::absent, kws...);
    auto&& b_kw = kw::find<kw::is_beta>(detail::absent, kws...);
    using GK = std::decay_t<decltype(g_kw)>;
    using BK = std::decay_t<decltype(b_kw)>;
    constexpr bool ok_static = [] {
        bool ok = detail::check_static_groups<S, TensorAxes, X>();
        if constexpr (!std::is_same_v<GK, detail::none>)
            ok = ok && detail::check_static_extents<S, TensorAxes, X, decltype(GK::e), struct gamma_extent>();
        if constexpr (!std::is_same_v<BK, detail::none>)
            ok = ok && detail::check_static_extents<S, TensorAxes, X, decltype(BK::e), struct beta_extent>();
        return ok;
    }();
    constexpr bool ok = ok_type && ok_bind && ok_kw && ok_beta && ok_gamma && ok_running && ok_groups_given &&
                        ok_groups_needed && ok_static;
    if constexpr (!ok) {
        return;  // the diagnostics above say why
    } else {
        // ---- run time ----
        static const spec_desc desc = describe<S>();
        engine::forward_args<T> args;
        args.eps = kw::find<kw::is_eps>(kw::eps_t{1e-5}, kws...).value;
        args.momentum = kw::find<kw::is_momentum>(kw::momentum_t{0.1}, kws...).value;
        args.threads = kw::find<kw::is_threads>(kw::threads_t{0}, kws...).value;
        args.train = kw::find<kw::is_mode>(mode::train, kws...) == mode::train;
        args.schedule = static_cast<int>(kw::find<kw::is_schedule>(schedule::automatic, kws...));
        const auto groups = kw::find<kw::is_groups>(kw::groups_t{0}, kws...).value;

        // x: its own memory when it has some, else evaluated once
        const auto& xe = detail::memory_of<T>(xn);
        auto xs = detail::lower<const T>(xe);
        const engine::binding b = engine::bind(desc, engine::axis_views{A::name...}, xs.shape.data(), xs.rank, groups);
        args.x = xs;

        // parameters: packed in canonical order, checked against the tensor's extents
        std::optional<xt::xarray<T>> gp, bp;
        const auto pnames = engine::param_axis_names(b);
        if constexpr (!std::is_same_v<GK, detail::none>)
            args.gamma = detail::parameter_data<T>("gamma", pnames, b.param_shape, g_kw.e, gp, "the tensor's");
        if constexpr (!std::is_same_v<BK, detail::none>)
            args.beta = detail::parameter_data<T>("beta", pnames, b.param_shape, b_kw.e, bp, "the tensor's");

        // statistics out
        saved_stats<T, K> saved;
        std::array<std::size_t, K> stat_shape{};
        for (std::size_t i = 0; i < K; ++i) stat_shape[i] = static_cast<std::size_t>(b.stat_shape[i]);
        if (!S::is_rms) saved.mean = xt::xtensor<T, K>::from_shape(stat_shape);
        saved.rstd = xt::xtensor<T, K>::from_shape(stat_shape);
        args.save_mean = S::is_rms ? nullptr : saved.mean.data();
        args.save_rstd = saved.rstd.data();

        // running statistics: packed, updated, written back
        std::optional<xt::xarray<T>> rm, rv;
        auto&& r_kw = kw::find<kw::is_running>(detail::absent, kws...);
        constexpr bool has_running = !std::is_same_v<std::decay_t<decltype(r_kw)>, detail::none>;
        if constexpr (has_running) {
            rm.emplace(detail::packed_checked<T>("running_mean", b.stat_names, b.stat_shape, r_kw.mean, "the statistics'"));
            rv.emplace(detail::packed_checked<T>("running_var", b.stat_names, b.stat_shape, r_kw.var, "the statistics'"));
            args.running_mean = rm->data();
            args.running_var = rv->data();
        }

        auto write_back = [&] {
            if constexpr (has_running) {
                if (args.train) {
                    r_kw.mean = *rm;
                    r_kw.var = *rv;
                }
            }
        };
        auto&& o_kw = kw::find<kw::is_out>(detail::absent, kws...);
        if constexpr (!std::is_same_v<std::decay_t<decltype(o_kw)>, detail::none>) {
            using O = std::decay_t<decltype(o_kw.e)>;
            auto& oe = o_kw.e;
            const engine::axis_names xnames{A::name...};
            engine::check_extents("out", xnames, detail::shape_of(xe), detail::shape_of(oe).data(), int(oe.dimension()), "x's");
            if constexpr (detail::has_memory<O> && !std::is_const_v<std::remove_reference_t<decltype(*oe.data())>>) {
                args.y = detail::lower<T>(oe);
                engine::forward(desc, b, args);
            } else {
                xt::xarray<T> tmp = xt::xarray<T>::from_shape(xe.shape());
                args.y = detail::lower<T>(tmp);
                engine::forward(desc, b, args);
                oe = tmp;
            }
            write_back();
            return saved;
        } else {
            forward_result<T, R, K> res;
            std::array<std::size_t, R> shape{};
            for (std::size_t d = 0; d < R; ++d) shape[d] = xe.shape()[d];
            res.y = xt::xtensor<T, R>::from_shape(shape);
            args.y = detail::lower<T>(res.y);
            engine::forward(desc, b, args);
            write_back();
            static_cast<saved_stats<T, K>&>(res) = std::move(saved);
            return res;
        }
    }
}

}  // namespace normspec

#endif  // NORMSPEC_FORWARD_HPP

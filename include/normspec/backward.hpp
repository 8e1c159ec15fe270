// normspec/backward.hpp
// backward(spec, named<...>(x), dy, saved, keywords...): gradients of any spec, from the forward's
// saved statistics (pass the forward's result as it is). Returns dx (shaped as x) and, for specs
// with parameters, dgamma and dbeta (shaped as gamma). Keywords: gamma(g) (the forward's gamma;
// omitted: 1), mode::eval (a norm with running statistics then treats them as constants, as its
// forward did), out(dx) (write dx there, any layout; the result's dx is then empty),
// out_dgamma(t) and out_dbeta(t) (likewise for dgamma and dbeta, shaped as gamma), threads(n).
#ifndef NORMSPEC_BACKWARD_HPP
#define NORMSPEC_BACKWARD_HPP

#include "engine/backward.hpp"
#include "forward.hpp"

namespace normspec {

template <class T, std::size_t R, std::size_t P>
struct backward_result {
    xt::xtensor<T, R> dx;
    xt::xtensor<T, P> dgamma, dbeta;  // empty where the spec has no gamma or beta
};

namespace kw {
template <class E>
struct out_dgamma_t { E e; };
template <class E>
struct out_dbeta_t { E e; };
template <class K> struct is_out_dgamma : std::bool_constant<is_v<K, out_dgamma_t>> {};
template <class K> struct is_out_dbeta : std::bool_constant<is_v<K, out_dbeta_t>> {};
template <class K>
struct is_backward_keyword
    : std::bool_constant<is_gamma<K>::value || is_threads<K>::value || is_mode<K>::value || is_out<K>::value ||
                         is_out_dgamma<K>::value || is_out_dbeta<K>::value> {};
}  // namespace kw

/// Write backward()'s dgamma (dbeta) into this tensor, shaped as gamma (any layout, any value
/// type), instead of returning a new one: no allocation per training step.
template <class E> auto out_dgamma(E&& e) { return kw::out_dgamma_t<E>{std::forward<E>(e)}; }
template <class E> auto out_dbeta(E&& e) { return kw::out_dbeta_t<E>{std::forward<E>(e)}; }

namespace detail {
/// Fills engine arguments for the saved statistics (anything with .mean and .rstd), checking their
/// extents: their own memory when row-major in T (what forward() returns), else copies.
template <class T, class Saved>
void saved_into(const engine::binding& b, bool rms, const Saved& saved, std::optional<xt::xarray<T>>& mean,
                std::optional<xt::xarray<T>>& rstd, engine::backward_args<T>& a) {
    a.rstd = parameter_data<T>("saved rstd", b.stat_names, b.stat_shape, saved.rstd, rstd, "the statistics'");
    if (!rms) a.mean = parameter_data<T>("saved mean", b.stat_names, b.stat_shape, saved.mean, mean, "the statistics'");
}

/// An output keyword's tensor gets what was computed in `tmp` (when its own memory could not take it).
template <class K, class Tmp>
void copy_back(K& k, const std::optional<Tmp>& tmp) {
    if constexpr (!std::is_same_v<std::decay_t<K>, none>) {
        if (tmp) k.e = *tmp;
    }
}

/// Where a parameter gradient goes. Without a keyword (k is none): the result's tensor `own`.
/// With out_dgamma/out_dbeta: the caller's tensor, its extents checked against gamma's; its
/// memory when it is row-major T, else `tmp`, which the caller copies into it after the call.
template <class T, std::size_t P, class K>
T* gradient_target(const char* what, const engine::binding& b, K& k, xt::xtensor<T, P>& own, std::optional<xt::xarray<T>>& tmp) {
    std::array<std::size_t, P> shape{};
    for (std::size_t i = 0; i < P; ++i) shape[i] = std::size_t(b.param_shape[i]);
    if constexpr (std::is_same_v<std::decay_t<K>, none>) {
        own = xt::xtensor<T, P>::from_shape(shape);
        return own.data();
    } else {
        const auto got = shape_of(k.e);
        engine::check_extents(what, engine::param_axis_names(b), b.param_shape, got.data(), int(got.size()), "gamma's");
        if (T* p = packed_memory<T>(k.e)) return p;
        tmp.emplace(xt::xarray<T>::from_shape(shape));
        return tmp->data();
    }
}
}  // namespace detail

template <spec S, class E, class... A, class DY, class U, std::size_t K, class... Kw>
auto backward(S, const named_tensor<E, A...>& xn, const DY& dy, const saved_stats<U, K>& saved, Kw&&... kws) {
    using X = std::decay_t<E>;
    using T = std::decay_t<typename X::value_type>;
    using TensorAxes = axis_list<A...>;
    using StatAxes = typename S::template stat_axes<A...>;
    constexpr std::size_t R = sizeof...(A), P = S::param_axes::size;

    constexpr bool ok_type = diagnostic::require<std::is_same_v<T, float> || std::is_same_v<T, double>,
                                                 diagnostic::forward_needs_float_or_double, T>();
    constexpr bool ok_bind = check_binding<S, TensorAxes>();
    constexpr bool ok_rank = diagnostic::require<K == StatAxes::size, diagnostic::saved_statistics_do_not_match_the_tensor,
                                                 StatAxes, std::integral_constant<std::size_t, K>>();
    constexpr bool ok_kw = (diagnostic::require<kw::is_backward_keyword<std::decay_t<Kw>>::value,
                                                diagnostic::backward_takes_no_such_argument, std::decay_t<Kw>>() && ...);
    constexpr bool ok_gamma = diagnostic::require<S::has_gamma || !kw::has<kw::is_gamma, Kw...>,
                                                  diagnostic::gamma_given_to_a_norm_without_parameters, S>();
    constexpr bool ok_dgamma = diagnostic::require<S::has_gamma || !kw::has<kw::is_out_dgamma, Kw...>,
                                                   diagnostic::out_dgamma_given_to_a_norm_without_parameters, S>();
    constexpr bool ok_dbeta = diagnostic::require<S::has_beta || !kw::has<kw::is_out_dbeta, Kw...>,
                                                  diagnostic::out_dbeta_given_to_a_norm_without_beta, S>();
    if constexpr (!(ok_type && ok_bind && ok_rank && ok_kw && ok_gamma && ok_dgamma && ok_dbeta)) {
        return;  // the diagnostics above say why
    } else {
        static const spec_desc desc = describe<S>();
        const auto& xe = detail::memory_of<T>(xn);
        engine::backward_args<T> args;
        args.x = detail::lower<const T>(xe);
        args.threads = kw::find<kw::is_threads>(kw::threads_t{0}, kws...).value;
        const bool eval = kw::find<kw::is_mode>(mode::train, kws...) == mode::eval;
        args.constant_stats = eval && S::has_running_stats;
        const auto groups = S::grouped ? engine::index_t(saved.rstd.shape()[K - 1]) : 0;  // G from the statistics
        const engine::binding b = engine::bind(desc, engine::axis_views{A::name...}, args.x.shape.data(), args.x.rank,
                                               S::runtime_groups && K > 0 ? groups : 0);
        const engine::axis_names xnames{A::name...};
        // dy: its own memory when it has it, in T
        std::optional<xt::xarray<T>> dy_copy;
        if constexpr (detail::has_memory<DY> && std::is_same_v<std::decay_t<typename DY::value_type>, T>) {
            engine::check_extents("dy", xnames, detail::shape_of(xe), detail::shape_of(dy).data(), int(dy.dimension()), "x's");
            args.dy = detail::lower<const T>(dy);
        } else {
            dy_copy.emplace(detail::packed_checked<T>("dy", xnames, detail::shape_of(xe), dy, "x's"));
            args.dy = detail::lower<const T>(*dy_copy);
        }
        std::optional<xt::xarray<T>> mean, rstd, gp;
        detail::saved_into<T>(b, S::is_rms, saved, mean, rstd, args);
        auto&& g_kw = kw::find<kw::is_gamma>(detail::absent, kws...);
        if constexpr (!std::is_same_v<std::decay_t<decltype(g_kw)>, detail::none>)
            args.gamma = detail::parameter_data<T>("gamma", engine::param_axis_names(b), b.param_shape, g_kw.e, gp, "the tensor's");

        backward_result<T, R, P> res;
        auto&& o_kw = kw::find<kw::is_out>(detail::absent, kws...);
        using OK = std::decay_t<decltype(o_kw)>;
        std::optional<xt::xarray<T>> dx_tmp;  // for an out() without memory of its own
        if constexpr (!std::is_same_v<OK, detail::none>) {
            using O = std::decay_t<decltype(o_kw.e)>;
            engine::check_extents("out", xnames, detail::shape_of(xe), detail::shape_of(o_kw.e).data(), int(o_kw.e.dimension()), "x's");
            if constexpr (detail::has_memory<O> && std::is_same_v<std::decay_t<typename O::value_type>, T>) {
                args.dx = detail::lower<T>(o_kw.e);
            } else {
                dx_tmp.emplace(xt::xarray<T>::from_shape(xe.shape()));
                args.dx = detail::lower<T>(*dx_tmp);
            }
        } else {
            std::array<std::size_t, R> shape{};
            for (std::size_t d = 0; d < R; ++d) shape[d] = xe.shape()[d];
            res.dx = xt::xtensor<T, R>::from_shape(shape);
            args.dx = detail::lower<T>(res.dx);
        }
        auto&& dg_kw = kw::find<kw::is_out_dgamma>(detail::absent, kws...);
        auto&& db_kw = kw::find<kw::is_out_dbeta>(detail::absent, kws...);
        std::optional<xt::xarray<T>> dg_tmp, db_tmp;  // for targets that are not row-major T
        if constexpr (S::has_gamma) args.dgamma = detail::gradient_target<T, P>("out_dgamma", b, dg_kw, res.dgamma, dg_tmp);
        if constexpr (S::has_beta) args.dbeta = detail::gradient_target<T, P>("out_dbeta", b, db_kw, res.dbeta, db_tmp);
        engine::backward(desc, b, args);
        detail::copy_back(o_kw, dx_tmp);
        detail::copy_back(dg_kw, dg_tmp);
        detail::copy_back(db_kw, db_tmp);
        return res;
    }
}

}  // namespace normspec

#endif  // NORMSPEC_BACKWARD_HPP

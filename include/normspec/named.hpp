// normspec/named.hpp
// Binding specs to xtensor data:
//   named<N,C,H,W>(x)  names the dimensions of any xtensor container, view, adaptor or expression;
//   keyword arguments of forward(): gamma(g), beta(b), running(mean, var), out(y), eps(e),
//   momentum(m), num_groups(G), threads(n), mode::train / mode::eval;
//   lowering of xtensor objects to the engine's strided views.
#ifndef NORMSPEC_NAMED_HPP
#define NORMSPEC_NAMED_HPP

#include "diagnostics.hpp"
#include "engine/plan.hpp"
#include "spec.hpp"

#include <xtensor/xarray.hpp>
#include <xtensor/xshape.hpp>
#include <xtensor/xutils.hpp>

#include <optional>
#include <type_traits>
#include <utility>

namespace normspec {

/// Static extents of an xtensor type (xt::xtensor_fixed), if it has them.
template <class X, class = void>
struct static_extents {
    static constexpr bool known = false;
};
template <class X>
struct static_extents<X, std::void_t<typename X::shape_type>> {
    template <class S>
    struct of {
        static constexpr bool known = false;
    };
    template <std::size_t... I>
    struct of<xt::fixed_shape<I...>> {
        static constexpr bool known = true;
        static constexpr std::array<std::size_t, sizeof...(I)> value{I...};
    };
    using impl = of<typename X::shape_type>;
    static constexpr bool known = impl::known;
};

/// A tensor whose dimensions have axis names, in memory order of its dimensions.
template <class E, class... A>
struct named_tensor {
    using expression = std::decay_t<E>;
    using axes = axis_list<A...>;
    E expr;  // a reference for lvalues, a value for temporaries (views)
};

template <axis_tag... A, class E>
auto named(E&& e) {
    using X = std::decay_t<E>;
    using L = axis_list<A...>;
    [[maybe_unused]] constexpr bool distinct = diagnostic::require<!has_duplicates_v<L>, diagnostic::named_gives_an_axis_twice, L>();
    if constexpr (requires { typename X::shape_type; }) {
        constexpr auto dim = xt::static_dimension<typename X::shape_type>::value;
        [[maybe_unused]] constexpr bool rank_ok = diagnostic::require<dim < 0 || dim == sizeof...(A), diagnostic::named_rank_differs_from_tensor_rank, L,
                                          std::integral_constant<long, dim>>();
    }
    return named_tensor<E, A...>{std::forward<E>(e)};
}

enum class mode { train, eval };

/// How the two steps meet the data (Halide's word): `fused` computes each kept index's statistics
/// and normalizes it while its data is in cache; `two_sweeps` takes every statistic first; the
/// default picks fused when a kept index's data fits in cache and there is one for every thread.
/// Results agree to rounding; the schedule is for benchmarks and tests.
enum class schedule { automatic = 0, fused = 1, two_sweeps = 2 };

namespace kw {
template <class E>
struct gamma_t { E e; };
template <class E>
struct beta_t { E e; };
template <class M, class V>
struct running_t { M mean; V var; };
template <class E>
struct out_t { E e; };
struct eps_t { double value; };
struct momentum_t { double value; };
struct groups_t { std::ptrdiff_t value; };
struct threads_t { int value; };

template <class K, template <class...> class Tmpl>
inline constexpr bool is_v = false;
template <template <class...> class Tmpl, class... P>
inline constexpr bool is_v<Tmpl<P...>, Tmpl> = true;

/// The first keyword for which Pred holds, or `fallback`.
template <template <class> class Pred, class Fallback>
decltype(auto) find(Fallback&& fallback) { return std::forward<Fallback>(fallback); }
template <template <class> class Pred, class Fallback, class K, class... Rest>
decltype(auto) find(Fallback&& fallback, K&& k, Rest&&... rest) {
    if constexpr (Pred<std::decay_t<K>>::value)
        return std::forward<K>(k);
    else
        return find<Pred>(std::forward<Fallback>(fallback), std::forward<Rest>(rest)...);
}
template <template <class> class Pred, class... K>
inline constexpr bool has = (Pred<std::decay_t<K>>::value || ...);

template <class K> struct is_gamma : std::bool_constant<is_v<K, gamma_t>> {};
template <class K> struct is_beta : std::bool_constant<is_v<K, beta_t>> {};
template <class K> struct is_running : std::bool_constant<is_v<K, running_t>> {};
template <class K> struct is_out : std::bool_constant<is_v<K, out_t>> {};
template <class K> struct is_eps : std::is_same<K, eps_t> {};
template <class K> struct is_momentum : std::is_same<K, momentum_t> {};
template <class K> struct is_groups : std::is_same<K, groups_t> {};
template <class K> struct is_threads : std::is_same<K, threads_t> {};
template <class K> struct is_mode : std::is_same<K, mode> {};
template <class K> struct is_schedule : std::is_same<K, schedule> {};
template <class K>
struct is_keyword : std::bool_constant<is_gamma<K>::value || is_beta<K>::value || is_running<K>::value || is_out<K>::value ||
                                       is_eps<K>::value || is_momentum<K>::value || is_groups<K>::value ||
                                       is_threads<K>::value || is_mode<K>::value || is_schedule<K>::value> {};
}  // namespace kw

template <class E> auto gamma(E&& e) { return kw::gamma_t<E>{std::forward<E>(e)}; }
template <class E> auto beta(E&& e) { return kw::beta_t<E>{std::forward<E>(e)}; }
/// Running mean and variance, updated in place in training mode, used in evaluation mode.
template <class M, class V> auto running(M&& mean, V&& var) { return kw::running_t<M, V>{std::forward<M>(mean), std::forward<V>(var)}; }
/// Write y into this tensor (any layout, or x itself) instead of returning a new one.
template <class E> auto out(E&& e) { return kw::out_t<E>{std::forward<E>(e)}; }
inline kw::eps_t eps(double e) { return {e}; }
inline kw::momentum_t momentum(double m) { return {m}; }
inline kw::groups_t num_groups(std::ptrdiff_t g) { return {g}; }
inline kw::threads_t threads(int n) { return {n}; }

namespace detail {

template <class X>
inline constexpr bool has_memory = xt::has_data_interface<std::decay_t<X>>::value;

/// An engine view of an xtensor object with memory (container, strided view, adaptor).
template <class T, class X>
engine::strided<T> lower(X& x) {
    engine::strided<T> s;
    s.rank = static_cast<int>(x.dimension());
    if (s.rank > engine::max_rank) engine::fail("tensors of rank > 8 are not supported");
    s.data = x.data() + x.data_offset();
    for (int d = 0; d < s.rank; ++d) {
        s.shape[d] = static_cast<engine::index_t>(x.shape()[d]);
        s.strides[d] = static_cast<engine::index_t>(x.strides()[d]);
    }
    return s;
}

/// A named tensor's own memory when it has some, else (a lazy expression) its values evaluated once.
template <class T, class E, class... A>
decltype(auto) memory_of(const named_tensor<E, A...>& xn) {
    if constexpr (has_memory<E>)
        return (xn.expr);
    else
        return xt::xarray<T>(xn.expr);
}

template <class X>
engine::extents shape_of(const X& x) {
    engine::extents v;
    for (std::size_t d = 0; d < x.dimension(); ++d) v.push_back(static_cast<engine::index_t>(x.shape()[d]));
    return v;
}

/// A small tensor (parameters, running statistics) copied row-major as T, after checking that
/// it has the extents `extents` on the axes `axes`; `whose` names where those come from.
template <class T, class E>
xt::xarray<T> packed_checked(std::string_view what, const engine::axis_names& axes, const engine::extents& extents,
                             const E& e, std::string_view whose) {
    xt::xarray<T> p(e);
    engine::check_extents(what, axes, extents, shape_of(p).data(), int(p.dimension()), whose);
    return p;
}

/// Whether a tensor with memory lies row-major and packed (steps along extent-1 axes aside).
template <class X>
bool row_major(const X& e) {
    engine::index_t stride = 1;
    for (std::size_t d = e.dimension(); d-- > 0;) {
        const auto extent = engine::index_t(e.shape()[d]);
        if (extent != 1 && engine::index_t(e.strides()[d]) != stride) return false;
        stride *= extent;
    }
    return true;
}

/// e's own memory when it is row-major T, so that it can be read or written as a packed array
/// in place; else nullptr (another value type, another layout, or no memory: a lazy expression).
template <class T, class X>
auto packed_memory(X& e) -> std::conditional_t<std::is_const_v<X>, const T*, T*> {
    using D = std::decay_t<X>;
    if constexpr (has_memory<D> && std::is_same_v<std::decay_t<typename D::value_type>, T>) {
        if (row_major(e)) return e.data() + e.data_offset();
    }
    return nullptr;
}

/// A parameter tensor as a row-major T pointer, after checking its extents: its own memory when
/// it already is one (no copy), else a copy packed into `storage` (left empty otherwise: an
/// xt::xarray, even an empty one, allocates).
template <class T, class E>
const T* parameter_data(std::string_view what, const engine::axis_names& axes, const engine::extents& extents,
                        const E& e, std::optional<xt::xarray<T>>& storage, std::string_view whose) {
    if (const T* p = packed_memory<T>(e)) {
        const auto shape = shape_of(e);
        engine::check_extents(what, axes, extents, shape.data(), int(shape.size()), whose);
        return p;
    }
    storage.emplace(packed_checked<T>(what, axes, extents, e, whose));
    return storage->data();
}


}  // namespace detail
}  // namespace normspec

#endif  // NORMSPEC_NAMED_HPP

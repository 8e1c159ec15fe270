// normspec/axes.hpp
// Axis tags and axis lists: the vocabulary every spec is written in.
//   - fixed_string: a string usable as a template argument (axis names);
//   - axis<"Name", role, rank>: base of every axis tag; role says batch/sequence/feature;
//   - the built-in axes N, C, H, W (images) and B, T, D (sequences);
//   - axis_list<A...>: an ordered list of axes, with its canonical (sorted) form.
// A user declares a new axis in one line:  struct Head : normspec::axis<"Head"> {};
#ifndef NORMSPEC_AXES_HPP
#define NORMSPEC_AXES_HPP

#include <boost/hana/basic_tuple.hpp>
#include <boost/hana/contains.hpp>
#include <boost/hana/count.hpp>
#include <boost/hana/sort.hpp>
#include <boost/hana/tuple.hpp>
#include <boost/hana/type.hpp>
#include <boost/hana/unpack.hpp>

#include <algorithm>
#include <cstddef>
#include <string>
#include <string_view>
#include <type_traits>

namespace normspec {

/// A string literal as a structural value, so it can name an axis at compile time.
template <std::size_t L>
struct fixed_string {
    char chars[L]{};
    constexpr fixed_string(const char (&s)[L]) { std::copy_n(s, L, chars); }
    constexpr std::string_view view() const { return {chars, L - 1}; }
};

/// What an axis means for coupling: statistics across a batch axis couple examples,
/// statistics across a sequence axis mix tokens (and padding) of one example.
enum class role { feature, batch, sequence };

/// Base of every axis tag. `rank` orders axes canonically (built-ins first, then by name).
template <fixed_string Name, role Role = role::feature, int Rank = 1000>
struct axis {
    static constexpr std::string_view name = Name.view();
    static constexpr role axis_role = Role;
    static constexpr int rank = Rank;
};

template <class A>
concept axis_tag = requires {
    { A::name } -> std::convertible_to<std::string_view>;
    { A::axis_role } -> std::convertible_to<role>;
    { A::rank } -> std::convertible_to<int>;
};

namespace axes {
struct N : axis<"N", role::batch, 0> {};
struct B : axis<"B", role::batch, 1> {};
struct T : axis<"T", role::sequence, 2> {};
struct C : axis<"C", role::feature, 3> {};
struct H : axis<"H", role::feature, 4> {};
struct W : axis<"W", role::feature, 5> {};
struct D : axis<"D", role::feature, 6> {};
}  // namespace axes

/// An ordered list of axes. Never exposes Hana types to users.
template <class... A>
struct axis_list {
    static constexpr std::size_t size = sizeof...(A);
    static constexpr auto hana() { return boost::hana::tuple_t<A...>; }
};

namespace detail {

template <class X, class Y>
constexpr bool axis_less() {
    if (X::rank != Y::rank) return X::rank < Y::rank;
    return X::name < Y::name;
}

template <class X, class... A>
constexpr bool list_contains = (std::is_same_v<X, A> || ...);

template <class X, class List>
struct contains_impl;
template <class X, class... A>
struct contains_impl<X, axis_list<A...>> {
    static constexpr bool value = boost::hana::contains(boost::hana::tuple_t<A...>, boost::hana::type_c<X>);
};

template <class List>
struct sorted_impl;
template <class... A>
struct sorted_impl<axis_list<A...>> {
    static constexpr auto sorted = boost::hana::sort(boost::hana::tuple_t<A...>, [](auto x, auto y) {
        return boost::hana::bool_c<axis_less<typename decltype(x)::type, typename decltype(y)::type>()>;
    });
    using type = typename decltype(boost::hana::unpack(
        sorted, [](auto... t) { return boost::hana::type_c<axis_list<typename decltype(t)::type...>>; }))::type;
};
template <>
struct sorted_impl<axis_list<>> {
    using type = axis_list<>;
};

template <class List>
struct has_duplicates;
template <class... A>
struct has_duplicates<axis_list<A...>> {
    static constexpr bool value =
        ((decltype(boost::hana::count(boost::hana::tuple_t<A...>, boost::hana::type_c<A>))::value != 1) || ... || false);
};

template <class List, template <class> class Pred>
struct filter_impl;
template <template <class> class Pred>
struct filter_impl<axis_list<>, Pred> {
    using type = axis_list<>;
};
template <class X, class... Rest, template <class> class Pred>
struct filter_impl<axis_list<X, Rest...>, Pred> {
    using tail = typename filter_impl<axis_list<Rest...>, Pred>::type;
    template <class L>
    struct push;
    template <class... R>
    struct push<axis_list<R...>> {
        using type = axis_list<X, R...>;
    };
    using type = std::conditional_t<Pred<X>::value, typename push<tail>::type, tail>;
};

}  // namespace detail

/// True if axis X is in the list.
template <class X, class List>
inline constexpr bool contains_v = detail::contains_impl<X, List>::value;

/// The canonical order of a list: by rank, then by name. reduce<W,N,H> and reduce<N,H,W> are one type.
template <class List>
using sorted_t = typename detail::sorted_impl<List>::type;

template <class List>
inline constexpr bool has_duplicates_v = detail::has_duplicates<List>::value;

/// The axes of List for which Pred<A>::value holds, in List's order.
template <class List, template <class> class Pred>
using filter_t = typename detail::filter_impl<List, Pred>::type;

/// The axes of List that are not in Other, in List's order.
template <class List, class Other>
struct without {
    template <class A>
    struct pred : std::bool_constant<!contains_v<A, Other>> {};
    using type = filter_t<List, pred>;
};
template <class List, class Other>
using without_t = typename without<List, Other>::type;

/// True if every axis of Sub is in Super.
template <class Sub, class Super>
inline constexpr bool subset_v = std::is_same_v<without_t<Sub, Super>, axis_list<>>;

template <class List>
inline constexpr bool any_batch_v = false;
template <class... A>
inline constexpr bool any_batch_v<axis_list<A...>> = ((A::axis_role == role::batch) || ... || false);

template <class List>
inline constexpr bool any_batch_or_sequence_v = false;
template <class... A>
inline constexpr bool any_batch_or_sequence_v<axis_list<A...>> =
    ((A::axis_role != role::feature) || ... || false);

/// "N,H,W": the names of a list, for messages and tables.
template <class List>
struct list_names;
template <class... A>
struct list_names<axis_list<A...>> {
    static std::string str() {
        std::string s;
        ((s += (s.empty() ? "" : ","), s += A::name), ...);
        return s;
    }
};
template <class List>
std::string names_of() { return list_names<List>::str(); }

}  // namespace normspec

#endif  // NORMSPEC_AXES_HPP

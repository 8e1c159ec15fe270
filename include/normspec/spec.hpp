// normspec/spec.hpp
// norm<Clauses...>: the one generic norm. It parses its clauses into a canonical basic_norm type
// (clause order and axis order do not matter), checks the spec on its own (static_assert), and
// derives the facts the seed's table states: statistic and parameter axes, couples_batch,
// has_running_stats, packing_safe. describe<Spec>() lowers a spec to the runtime descriptor
// the engine runs; check_binding<Spec, axis_list<...>>() checks a spec against a tensor's names.
#ifndef NORMSPEC_SPEC_HPP
#define NORMSPEC_SPEC_HPP

#include "axes.hpp"
#include "clauses.hpp"
#include "diagnostics.hpp"

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace normspec {

/// The axis of group indices that groups<A, G> adds to the statistics (printed "G").
template <class A>
struct group_of : axis<"G", role::feature, A::rank> {
    using split_axis = A;
};

/// A spec in canonical form. Users write norm<...>; this is what it names.
template <class Reduce, class Params, param_kind Kind, class GroupAxis, std::size_t G, bool Rms>
struct basic_norm {
    using reduce_axes = Reduce;
    using param_axes = Params;
    using group_axis = GroupAxis;  // void when the spec has no groups<> clause
    static constexpr param_kind params = Kind;
    static constexpr bool has_gamma = Kind != param_kind::none;
    static constexpr bool has_beta = Kind == param_kind::affine;
    static constexpr bool is_rms = Rms;
    static constexpr bool grouped = !std::is_void_v<GroupAxis>;
    static constexpr std::size_t static_groups = G;  // 0 (dynamic) when given at run time
    static constexpr bool runtime_groups = grouped && G == dynamic;

    /// Statistics across a batch axis couple the examples of a batch.
    static constexpr bool couples_batch = any_batch_v<Reduce>;
    /// Such a norm keeps running estimates for evaluation: train and eval differ.
    static constexpr bool has_running_stats = couples_batch;
    static constexpr bool train_eval_differ = has_running_stats;
    /// No batch or sequence axis is reduced: padding and packed sequences cannot leak
    /// into another example's statistics.
    static constexpr bool packing_safe = !any_batch_or_sequence_v<Reduce>;

  private:
    template <class A>
    struct stat_axis {
        using type = std::conditional_t<std::is_same_v<A, GroupAxis>, group_of<A>, A>;
    };
    template <class List>
    struct stats_of;
    template <class... A>
    struct stats_of<axis_list<A...>> {
        template <class X>
        struct kept : std::bool_constant<!contains_v<X, Reduce> || std::is_same_v<X, GroupAxis>> {};
        template <class L>
        struct map;
        template <class... K>
        struct map<axis_list<K...>> {
            using type = axis_list<typename stat_axis<K>::type...>;
        };
        using type = typename map<filter_t<axis_list<A...>, kept>>::type;
    };

  public:
    /// The axes the statistics (mean, rstd) are indexed by, for a tensor named TensorAxes...:
    /// the tensor's axes minus the reduced ones, with group_of<A> in place of a grouped axis.
    template <class... TensorAxes>
    using stat_axes = typename stats_of<axis_list<TensorAxes...>>::type;
};

namespace detail {

template <class Cl>
struct clause_kind {
    static constexpr int reduce = 0, param = 0, rms = 0, groups = 0;
    static constexpr bool known = false;
};
template <class L>
struct clause_kind<clause::reduce_clause<L>> {
    static constexpr int reduce = 1, param = 0, rms = 0, groups = 0;
    static constexpr bool known = true;
};
template <class L, param_kind K>
struct clause_kind<clause::param_clause<L, K>> {
    static constexpr int reduce = 0, param = 1, rms = 0, groups = 0;
    static constexpr bool known = true;
};
template <>
struct clause_kind<clause::rms_clause> {
    static constexpr int reduce = 0, param = 0, rms = 1, groups = 0;
    static constexpr bool known = true;
};
template <class A, std::size_t G>
struct clause_kind<clause::groups_clause<A, G>> {
    static constexpr int reduce = 0, param = 0, rms = 0, groups = 1;
    static constexpr bool known = true;
};

// Pick the one clause of a kind (or a default) out of the pack.
template <class Default, template <class> class Is, class... Cl>
struct pick {
    using type = Default;
};
template <class Default, template <class> class Is, class First, class... Rest>
struct pick<Default, Is, First, Rest...> {
    using type = std::conditional_t<Is<First>::value, First, typename pick<Default, Is, Rest...>::type>;
};
template <class Cl>
struct is_reduce : std::bool_constant<clause_kind<Cl>::reduce == 1> {};
template <class Cl>
struct is_param : std::bool_constant<clause_kind<Cl>::param == 1> {};
template <class Cl>
struct is_groups : std::bool_constant<clause_kind<Cl>::groups == 1> {};

struct no_groups {
    using axis = void;
    static constexpr std::size_t count = 0;
};

template <class... Cl>
struct parse {
    static constexpr bool known = (diagnostic::require<clause_kind<Cl>::known, diagnostic::norm_clause_is_not_a_clause, Cl>() && ...);
    static constexpr bool one_reduce = diagnostic::require<(clause_kind<Cl>::reduce + ... + 0) == 1,
                                                           diagnostic::norm_needs_one_reduce_clause, Cl...>();
    static constexpr bool one_param = diagnostic::require<(clause_kind<Cl>::param + ... + 0) <= 1,
                                                          diagnostic::norm_has_more_than_one_parameter_clause, Cl...>();
    static constexpr bool one_groups = diagnostic::require<(clause_kind<Cl>::groups + ... + 0) <= 1,
                                                           diagnostic::norm_has_more_than_one_groups_clause, Cl...>();
    static constexpr bool one_rms =
        diagnostic::require<(clause_kind<Cl>::rms + ... + 0) <= 1, diagnostic::norm_repeats_rms, Cl...>();
    static constexpr bool is_rms = (clause_kind<Cl>::rms + ... + 0) > 0;

    using reduce_clause = typename pick<clause::reduce_clause<axis_list<>>, is_reduce, Cl...>::type;
    using param_clause = typename pick<clause::param_clause<axis_list<>, param_kind::none>, is_param, Cl...>::type;
    using groups_clause = typename pick<no_groups, is_groups, Cl...>::type;
    using R = typename reduce_clause::axes;
    using P = typename param_clause::axes;
    static constexpr param_kind kind = param_clause::kind;
    using GA = typename groups_clause::axis;

    static constexpr bool reduce_nonempty =
        !one_reduce || diagnostic::require<(R::size > 0), diagnostic::reduce_is_empty, reduce_clause>();
    static constexpr bool reduce_distinct =
        diagnostic::require<!has_duplicates_v<R>, diagnostic::reduce_names_an_axis_twice, R>();
    static constexpr bool param_distinct =
        kind == param_kind::scale
            ? diagnostic::require<!has_duplicates_v<P>, diagnostic::scale_names_an_axis_twice, P>()
            : diagnostic::require<!has_duplicates_v<P>, diagnostic::affine_names_an_axis_twice, P>();
    static constexpr bool groups_reduced = [] {
        if constexpr (std::is_void_v<GA>)
            return true;
        else
            return diagnostic::require<contains_v<GA, R>, diagnostic::groups_splits_an_axis_that_is_not_reduced, GA, R>();
    }();
    static constexpr bool rms_without_beta =
        diagnostic::require<!(is_rms && kind == param_kind::affine), diagnostic::rms_has_no_beta, P>();

    // Naming every check here instantiates them all (static members are otherwise lazy);
    // & rather than && so that one failure does not hide the next.
    static constexpr bool ok = known & one_reduce & one_param & one_groups & one_rms & reduce_nonempty & reduce_distinct &
                               param_distinct & groups_reduced & rms_without_beta;
    using type = std::conditional_t<ok, basic_norm<R, P, kind, GA, groups_clause::count, is_rms>,
                                    basic_norm<R, P, kind, GA, groups_clause::count, is_rms>>;
};

}  // namespace detail

/// The one generic norm. Clause order and axis order do not change the type.
template <class... Clauses>
using norm = typename detail::parse<Clauses...>::type;

template <class S>
inline constexpr bool is_spec_v = false;
template <class R, class P, param_kind K, class G, std::size_t N, bool Rms>
inline constexpr bool is_spec_v<basic_norm<R, P, K, G, N, Rms>> = true;
template <class S>
concept spec = is_spec_v<S>;

/// A spec as a value the engine (and the CLI) can run: axis names in canonical order.
struct spec_desc {
    std::vector<std::string_view> reduce;
    std::vector<std::string_view> params;
    param_kind kind = param_kind::none;
    bool rms = false;
    std::string_view group_axis;  // empty: no groups
    std::size_t static_groups = 0;
    bool couples_batch = false;
    bool packing_safe = true;
};

namespace detail {
template <class List>
struct name_vector;
template <class... A>
struct name_vector<axis_list<A...>> {
    static std::vector<std::string_view> get() { return {A::name...}; }
};
}  // namespace detail

template <spec S>
spec_desc describe() {
    spec_desc d;
    d.reduce = detail::name_vector<typename S::reduce_axes>::get();
    d.params = detail::name_vector<typename S::param_axes>::get();
    d.kind = S::params;
    d.rms = S::is_rms;
    if constexpr (S::grouped) d.group_axis = S::group_axis::name;
    d.static_groups = S::static_groups;
    d.couples_batch = S::couples_batch;
    d.packing_safe = S::packing_safe;
    return d;
}

/// "norm<reduce<N,H,W>, affine<C>>": a spec written out, canonical order.
inline std::string to_string(const spec_desc& d) {
    auto join = [](const std::vector<std::string_view>& v) {
        std::string s;
        for (auto n : v) s += (s.empty() ? "" : ",") + std::string(n);
        return s;
    };
    std::string s = "norm<reduce<" + join(d.reduce) + ">";
    if (d.kind != param_kind::none)
        s += std::string(d.kind == param_kind::affine ? ", affine<" : ", scale<") + join(d.params) + ">";
    if (!d.group_axis.empty())
        s += ", groups<" + std::string(d.group_axis) + "," +
             (d.static_groups ? std::to_string(d.static_groups) : std::string("dynamic")) + ">";
    if (d.rms) s += ", rms";
    return s + ">";
}

template <spec S>
std::string to_string() { return to_string(describe<S>()); }

/// Checks at compile time that spec S can run on a tensor named TensorAxes: each failure is
/// one diagnostic naming the clause, the axis and the tensor's names.
template <spec S, class TensorAxes>
constexpr bool check_binding() {
    constexpr bool distinct = diagnostic::require<!has_duplicates_v<TensorAxes>, diagnostic::named_gives_an_axis_twice, TensorAxes>();
    constexpr bool reduce_ok = []<class... A>(axis_list<A...>) {
        return (diagnostic::require<contains_v<A, TensorAxes>, diagnostic::reduce_axis_not_in_tensor, A, TensorAxes>() && ...);
    }(typename S::reduce_axes{});
    constexpr bool params_ok = []<class... A>(axis_list<A...>) {
        if constexpr (S::params == param_kind::scale)
            return (diagnostic::require<contains_v<A, TensorAxes>, diagnostic::scale_axis_not_in_tensor, A, TensorAxes>() && ...);
        else
            return (diagnostic::require<contains_v<A, TensorAxes>, diagnostic::affine_axis_not_in_tensor, A, TensorAxes>() && ...);
    }(typename S::param_axes{});
    return distinct && reduce_ok && params_ok;
}

}  // namespace normspec

#endif  // NORMSPEC_SPEC_HPP

// normspec/diagnostics.hpp
// One class template per compile-time misuse. Each is instantiated only when its check fails,
// so the compiler prints "In instantiation of 'diagnostic::<what>_<axis, context>'" (naming the
// axis and the clause) right above the static_assert message, which always starts with "normspec:".
// docs/diagnostics.md lists every message with the compile-fail test that checks it.
#ifndef NORMSPEC_DIAGNOSTICS_HPP
#define NORMSPEC_DIAGNOSTICS_HPP

#include <cstddef>

namespace normspec::diagnostic {

template <class...>
inline constexpr bool always_false = false;

/// Instantiates Diag<Ctx...> (and so its static_assert) only when Ok is false.
template <bool Ok, template <class...> class Diag, class... Ctx>
constexpr bool require() {
    if constexpr (!Ok) (void)sizeof(Diag<Ctx...>);
    return Ok;
}

// ---- the spec alone -------------------------------------------------------------------------
template <class... Clauses>
struct norm_needs_one_reduce_clause {
    static_assert(always_false<Clauses...>, "normspec: norm<> needs exactly one reduce<...> clause");
};
template <class... Clauses>
struct norm_has_more_than_one_parameter_clause {
    static_assert(always_false<Clauses...>,
                  "normspec: norm<> takes at most one affine<...> or scale<...> clause");
};
template <class... Clauses>
struct norm_has_more_than_one_groups_clause {
    static_assert(always_false<Clauses...>, "normspec: norm<> takes at most one groups<A, G> clause");
};
template <class... Clauses>
struct norm_repeats_rms {
    static_assert(always_false<Clauses...>, "normspec: norm<> names rms more than once");
};
template <class Clause>
struct norm_clause_is_not_a_clause {
    static_assert(always_false<Clause>,
                  "normspec: norm<> takes only reduce<...>, affine<...>, scale<...>, rms and groups<A, G> clauses");
};
template <class Reduce>
struct reduce_is_empty {
    static_assert(always_false<Reduce>, "normspec: reduce<> is empty: a norm reduces across at least one axis");
};
template <class Axes>
struct reduce_names_an_axis_twice {
    static_assert(always_false<Axes>, "normspec: reduce<...> names an axis twice");
};
template <class Axes>
struct affine_names_an_axis_twice {
    static_assert(always_false<Axes>, "normspec: affine<...> names an axis twice");
};
template <class Axes>
struct scale_names_an_axis_twice {
    static_assert(always_false<Axes>, "normspec: scale<...> names an axis twice");
};
template <class Axis, class ReducedAxes>
struct groups_splits_an_axis_that_is_not_reduced {
    static_assert(always_false<Axis>, "normspec: groups<A, G> splits an axis A that reduce<...> does not reduce");
};
template <class AffineAxes>
struct rms_has_no_beta {
    static_assert(always_false<AffineAxes>,
                  "normspec: rms subtracts no mean, so it takes scale<...> (gamma only), not affine<...> (gamma and beta)");
};

// ---- the spec bound to a tensor's names -----------------------------------------------------
template <class TensorAxes>
struct named_gives_an_axis_twice {
    static_assert(always_false<TensorAxes>, "normspec: named<...> gives the same axis name twice");
};
template <class TensorAxes, class Rank>
struct named_rank_differs_from_tensor_rank {
    static_assert(always_false<TensorAxes>,
                  "normspec: named<...> gives a different number of names than the tensor has dimensions");
};
template <class Axis, class TensorAxes>
struct reduce_axis_not_in_tensor {
    static_assert(always_false<Axis>, "normspec: reduce<...> names an axis that the tensor does not have");
};
template <class Axis, class TensorAxes>
struct affine_axis_not_in_tensor {
    static_assert(always_false<Axis>, "normspec: affine<...> names an axis that the tensor does not have");
};
template <class Axis, class TensorAxes>
struct scale_axis_not_in_tensor {
    static_assert(always_false<Axis>, "normspec: scale<...> names an axis that the tensor does not have");
};

// ---- the call's arguments -------------------------------------------------------------------
template <class Spec>
struct beta_given_to_a_norm_without_beta {
    static_assert(always_false<Spec>,
                  "normspec: beta(...) given to a norm without beta (its spec has scale<...> or no affine<...>)");
};
template <class Spec>
struct gamma_given_to_a_norm_without_parameters {
    static_assert(always_false<Spec>,
                  "normspec: gamma(...) given to a norm without parameters (its spec has no affine<...> or scale<...>)");
};
template <class Spec>
struct running_stats_given_to_a_norm_without_them {
    static_assert(always_false<Spec>,
                  "normspec: running(...) given to a norm whose reduce<...> holds no batch axis, so it has no running statistics");
};
template <class Spec>
struct groups_count_given_to_a_norm_without_runtime_groups {
    static_assert(always_false<Spec>,
                  "normspec: num_groups(...) given to a norm without groups<A, dynamic>");
};
template <class Spec>
struct runtime_groups_need_num_groups {
    static_assert(always_false<Spec>,
                  "normspec: a norm with groups<A, dynamic> needs num_groups(G) in the call");
};
template <class Keyword>
struct forward_takes_no_such_argument {
    static_assert(always_false<Keyword>,
                  "normspec: forward() takes named<...>(x), then only gamma(), beta(), running(), out(), eps(), momentum(), "
                  "num_groups(), threads(), a mode and a schedule");
};
template <class ValueType>
struct forward_needs_float_or_double {
    static_assert(always_false<ValueType>, "normspec: forward() runs on float or double tensors");
};
template <class StatAxes, class SavedRank>
struct saved_statistics_do_not_match_the_tensor {
    static_assert(always_false<StatAxes>,
                  "normspec: backward() got saved statistics of another rank than this spec's statistic axes on this tensor");
};
template <class Keyword>
struct backward_takes_no_such_argument {
    static_assert(always_false<Keyword>,
                  "normspec: backward() takes named<...>(x), dy, the forward's saved statistics, then only gamma(), "
                  "out(), out_dgamma(), out_dbeta(), threads() and a mode");
};
template <class Spec>
struct out_dgamma_given_to_a_norm_without_parameters {
    static_assert(always_false<Spec>,
                  "normspec: out_dgamma(...) given to a norm without parameters (its spec has no affine<...> or scale<...>)");
};
template <class Spec>
struct out_dbeta_given_to_a_norm_without_beta {
    static_assert(always_false<Spec>,
                  "normspec: out_dbeta(...) given to a norm without beta (its spec has scale<...> or no affine<...>)");
};
template <class Axis, class Which, class ParamExtent, class TensorExtent>
struct parameter_extent_differs_from_tensor {
    static_assert(always_false<Axis>,
                  "normspec: a gamma/beta extent differs from the tensor's extent on the same axis");
};
template <class Axis, class Groups, class Extent>
struct groups_do_not_divide_extent {
    static_assert(always_false<Axis>, "normspec: groups<A, G>: G does not divide the extent of axis A");
};

}  // namespace normspec::diagnostic

#endif  // NORMSPEC_DIAGNOSTICS_HPP

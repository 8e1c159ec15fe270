// normspec/clauses.hpp
// The clauses a norm is written in:
//   reduce<A...>  statistics are taken across these axes, per index of all others;
//   affine<A...>  learnable gamma and beta on these axes;
//   scale<A...>   learnable gamma only;
//   rms           the statistic is the root mean square, no mean is subtracted;
//   groups<A, G>  reduced axis A is split into G contiguous groups (G = dynamic: given at run time).
// Axis order inside a clause does not change meaning: each clause is stored in canonical order,
// so reduce<W,N,H> and reduce<N,H,W> are the same type.
#ifndef NORMSPEC_CLAUSES_HPP
#define NORMSPEC_CLAUSES_HPP

#include "axes.hpp"

#include <cstddef>

namespace normspec {

enum class param_kind { none, scale, affine };

namespace clause {
template <class List>
struct reduce_clause {
    using axes = List;
};
template <class List, param_kind Kind>
struct param_clause {
    using axes = List;
    static constexpr param_kind kind = Kind;
};
struct rms_clause {};
template <class Axis, std::size_t G>
struct groups_clause {
    using axis = Axis;
    static constexpr std::size_t count = G;
};
}  // namespace clause

/// G = dynamic: the number of groups is given at run time.
inline constexpr std::size_t dynamic = 0;

template <axis_tag... A>
using reduce = clause::reduce_clause<sorted_t<axis_list<A...>>>;
template <axis_tag... A>
using affine = clause::param_clause<sorted_t<axis_list<A...>>, param_kind::affine>;
template <axis_tag... A>
using scale = clause::param_clause<sorted_t<axis_list<A...>>, param_kind::scale>;
using rms = clause::rms_clause;
template <axis_tag A, std::size_t G = dynamic>
using groups = clause::groups_clause<A, G>;

}  // namespace normspec

#endif  // NORMSPEC_CLAUSES_HPP

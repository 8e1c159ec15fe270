// Compile-only: each alias of the zoo is exactly its spelled-out norm<>, and order of axes or
// clauses does not change a spec's type.
#include <normspec/zoo.hpp>

#include <type_traits>

namespace {
using namespace normspec;
using std::is_same_v;

// the seed's table, one line each
static_assert(is_same_v<batch_norm, norm<reduce<N, H, W>, affine<C>>>);
static_assert(is_same_v<layer_norm_cnn, norm<reduce<C, H, W>, affine<C, H, W>>>);
static_assert(is_same_v<layer_norm, norm<reduce<D>, affine<D>>>);
static_assert(is_same_v<instance_norm, norm<reduce<H, W>, affine<C>>>);
static_assert(is_same_v<group_norm<32>, norm<reduce<C, H, W>, affine<C>, groups<C, 32>>>);
static_assert(is_same_v<group_norm<>, norm<reduce<C, H, W>, affine<C>, groups<C, dynamic>>>);
static_assert(is_same_v<rms_norm, norm<reduce<D>, scale<D>, rms>>);

// canonical forms: axis order inside a clause and clause order do not matter
static_assert(is_same_v<reduce<W, N, H>, reduce<N, H, W>>);
static_assert(is_same_v<batch_norm, norm<affine<C>, reduce<H, W, N>>>);
static_assert(is_same_v<rms_norm, norm<rms, scale<D>, reduce<D>>>);
static_assert(is_same_v<group_norm<4>, norm<groups<C, 4>, affine<C>, reduce<W, C, H>>>);
// but a different spec is a different type
static_assert(!is_same_v<layer_norm, rms_norm>);
static_assert(!is_same_v<group_norm<4>, group_norm<8>>);

// user axes declare in one line and sort after the built-ins, then by name
struct Head : axis<"Head"> {};
struct Dh : axis<"Dh"> {};
using qk_norm = norm<reduce<Dh>, scale<Dh>, rms>;
static_assert(is_same_v<reduce<Head, Dh, T>, reduce<T, Dh, Head>>);
static_assert(is_same_v<qk_norm::reduce_axes, axis_list<Dh>>);
static_assert(is_spec_v<qk_norm> && !is_spec_v<int>);
}  // namespace

// Compile-fail: misuse visible in the spec alone. Without a FAIL_ macro this compiles (the same
// line, well-formed); each FAIL_ macro flips it into one misuse. Spec headers only: no xtensor.
#include <normspec/zoo.hpp>

using namespace normspec;

#if defined(FAIL_EMPTY_REDUCE)
using spec_under_test = norm<reduce<>, affine<C>>;
#elif defined(FAIL_REDUCE_TWICE)
using spec_under_test = norm<reduce<H, W, H>, affine<C>>;
#elif defined(FAIL_AFFINE_TWICE)
using spec_under_test = norm<reduce<D>, affine<D, D>>;
#elif defined(FAIL_SCALE_TWICE)
using spec_under_test = norm<reduce<D>, scale<D, D>, rms>;
#elif defined(FAIL_GROUPS_NOT_REDUCED)
using spec_under_test = norm<reduce<H, W>, affine<C>, groups<C, 4>>;
#elif defined(FAIL_RMS_WITH_BETA)
using spec_under_test = norm<reduce<D>, affine<D>, rms>;
#elif defined(FAIL_NO_REDUCE)
using spec_under_test = norm<affine<D>>;
#elif defined(FAIL_TWO_REDUCE)
using spec_under_test = norm<reduce<D>, reduce<T>>;
#elif defined(FAIL_TWO_PARAMETER_CLAUSES)
using spec_under_test = norm<reduce<D>, affine<D>, scale<D>>;
#elif defined(FAIL_TWO_GROUPS)
using spec_under_test = norm<reduce<C, H, W>, groups<C, 2>, groups<C, 4>>;
#elif defined(FAIL_RMS_TWICE)
using spec_under_test = norm<reduce<D>, scale<D>, rms, rms>;
#elif defined(FAIL_NOT_A_CLAUSE)
using spec_under_test = norm<reduce<D>, float>;
#else
using spec_under_test = norm<reduce<D>, affine<D>>;
#endif

static_assert(is_spec_v<spec_under_test>);

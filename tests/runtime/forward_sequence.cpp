// The sequence norms (LayerNorm over D, RMSNorm) and user-written specs against the float64
// reference: float and double, odd shapes, (B,T,D), (T,D), and strided views.
#include "helpers.hpp"

using namespace normspec;

namespace {
const std::vector<std::vector<std::size_t>> seq_shapes{{3, 7, 5}, {1, 1, 13}, {2, 3, 1}, {2, 5, 37}, {1, 3, 1031}, {4, 2, 8}};

template <class Spec, class V>
void sequence_layouts() {
    for (auto shape : seq_shapes) {
        CAPTURE(shape);
        xt::xarray<V> btd = xt::cast<V>(th::randn(shape, 0.25));
        th::check_against_reference<Spec, B, T, D>(btd);
        xt::xarray<V> td = xt::view(btd, 0, xt::all(), xt::all());
        th::check_against_reference<Spec, T, D>(td);
        // D strided by 2 inside a wider buffer
        xt::xarray<V> wide = xt::cast<V>(th::randn({shape[0], shape[1], 2 * shape[2]}, -1.0));
        auto every_other = xt::view(wide, xt::all(), xt::all(), xt::range(0, 2 * shape[2], 2));
        th::check_against_reference<Spec, B, T, D>(every_other);
        // time-major: (T,B,D) names on the same data
        th::check_against_reference<Spec, T, B, D>(btd);
    }
}
}  // namespace

TEST_CASE_TEMPLATE("layer_norm matches the reference", V, float, double) { sequence_layouts<layer_norm, V>(); }
TEST_CASE_TEMPLATE("rms_norm matches the reference", V, float, double) { sequence_layouts<rms_norm, V>(); }

// A user-declared axis and a variant that is no alias: per-head QK-norm on (B,T,Heads,Dh).
struct Heads : axis<"Heads"> {};
struct Dh : axis<"Dh"> {};
using qk_norm = norm<reduce<Dh>, scale<Dh>, rms>;
using head_layer_norm = norm<reduce<Dh>, affine<Heads, Dh>>;
using plain_norm = norm<reduce<T, D>>;

TEST_CASE_TEMPLATE("user-written specs match the reference", V, float, double) {
    xt::xarray<V> x = xt::cast<V>(th::randn({2, 5, 3, 11}, 0.3));
    th::check_against_reference<qk_norm, B, T, Heads, Dh>(x);
    th::check_against_reference<head_layer_norm, B, T, Heads, Dh>(x);
    xt::xarray<V> y = xt::cast<V>(th::randn({3, 7, 5}));
    th::check_against_reference<plain_norm, B, T, D>(y);
}

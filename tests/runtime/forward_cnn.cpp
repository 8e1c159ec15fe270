// The CNN norms (BatchNorm, LayerNorm over C,H,W, InstanceNorm, GroupNorm) against the float64
// reference: float and double, odd shapes (primes, extent 1, tails shorter than a SIMD vector),
// NCHW, NHWC, and strided views that are not contiguous.
#include "helpers.hpp"

#include <xtensor/xmanipulation.hpp>

using namespace normspec;

namespace {

const std::vector<std::vector<std::size_t>> cnn_shapes{
    {2, 3, 5, 7}, {1, 13, 1, 9}, {3, 1, 4, 1}, {5, 7, 3, 2}, {1, 1, 1, 1}, {4, 12, 6, 5}, {2, 36, 3, 3}};

template <class Spec, class V>
void cnn_all_layouts(long groups_of_c = 0) {
    for (auto shape : cnn_shapes) {
        if (Spec::grouped && shape[1] % std::size_t(groups_of_c ? groups_of_c : Spec::static_groups) != 0) continue;
        CAPTURE(shape);
        xt::xarray<V> nchw = xt::cast<V>(th::randn(shape, 0.5, 2.0));
        th::check_against_reference<Spec, N, C, H, W>(nchw, groups_of_c);
        xt::xarray<V> nhwc = xt::transpose(nchw, {0, 2, 3, 1});
        th::check_against_reference<Spec, N, H, W, C>(nhwc, groups_of_c);
        // a non-contiguous view of a larger tensor
        auto big_shape = shape;
        big_shape[0] *= 2, big_shape[3] += 3;
        xt::xarray<V> big = xt::cast<V>(th::randn(big_shape));
        auto strided = xt::view(big, xt::range(0, big_shape[0], 2), xt::all(), xt::all(), xt::range(1, shape[3] + 1));
        th::check_against_reference<Spec, N, C, H, W>(strided, groups_of_c);
        // a transposed view (no copy): NCHW data read as NHWC names
        auto transposed = xt::transpose(nchw, {0, 2, 3, 1});
        th::check_against_reference<Spec, N, H, W, C>(transposed, groups_of_c);

        // the same numbers on every layout
        auto [g, b] = th::params_for<Spec, N, C, H, W>(shape);
        auto y1 = th::call<Spec, N, C, H, W>(nchw, g, b, groups_of_c).y;
        auto y2 = th::call<Spec, N, H, W, C>(nhwc, g, b, groups_of_c).y;
        CHECK(th::rel_err(xt::transpose(y2, {0, 3, 1, 2}), y1) < th::tolerance<V>());
    }
}

}  // namespace

TEST_CASE_TEMPLATE("batch_norm matches the reference on every layout", V, float, double) {
    cnn_all_layouts<batch_norm, V>();
}
TEST_CASE_TEMPLATE("layer_norm_cnn matches the reference on every layout", V, float, double) {
    cnn_all_layouts<layer_norm_cnn, V>();
}
TEST_CASE_TEMPLATE("instance_norm matches the reference on every layout", V, float, double) {
    cnn_all_layouts<instance_norm, V>();
}
TEST_CASE_TEMPLATE("group_norm with a compile-time G matches the reference", V, float, double) {
    cnn_all_layouts<group_norm<3>, V>();
}
TEST_CASE_TEMPLATE("channels-last rows of a few whole vectors (coefficients held in registers) match the reference", V, float,
                   double) {
    // NHWC at channel counts of one to four vectors of AVX-512 or AVX2 and past them: the
    // normalize sweep over the flat run of rows holds each vector's coefficients in registers
    for (std::size_t c : {8, 16, 24, 32, 48, 64, 72}) {
        CAPTURE(c);
        xt::xarray<V> nhwc = xt::cast<V>(th::randn({3, 5, 11, c}, 0.5, 2.0));
        th::check_against_reference<batch_norm, N, H, W, C>(nhwc);
        th::check_against_reference<instance_norm, N, H, W, C>(nhwc);
        th::check_against_reference<group_norm<>, N, H, W, C>(nhwc, long(c / 8));
    }
}
TEST_CASE_TEMPLATE("group_norm with a run-time G matches the reference for G = 1, 4, C", V, float, double) {
    for (long g : {1L, 4L, 12L}) {
        CAPTURE(g);
        cnn_all_layouts<group_norm<>, V>(g);
    }
}

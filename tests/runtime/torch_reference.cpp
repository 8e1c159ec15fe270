// Cross-checks against PyTorch: tests/reference/*/ holds float32 inputs and float64 outputs that
// PyTorch computed (tests/reference/generate.py). Each alias runs on NCHW and on NHWC data.
#include "helpers.hpp"

#include <xtensor/xmanipulation.hpp>
#include <xtensor/xnpy.hpp>

#include <filesystem>

using namespace normspec;

namespace {

std::string ref_path(const std::string& c, const std::string& f) { return std::string(NORMSPEC_REFERENCE_DIR) + "/" + c + "/" + f + ".npy"; }
xt::xarray<float> in(const std::string& c, const std::string& f) { return xt::load_npy<float>(ref_path(c, f)); }
xt::xarray<double> want(const std::string& c, const std::string& f) { return xt::load_npy<double>(ref_path(c, f)); }

constexpr double tol = 2e-6;  // relative to the largest reference value; the target is 2e-5

template <class Spec, class... Kw>
void check_cnn(const std::string& c, Kw&&... kw) {
    CAPTURE(c);
    xt::xtensor<float, 4> x = in(c, "x");
    auto g = in(c, "gamma"), b = in(c, "beta");
    auto r = forward(Spec{}, named<N, C, H, W>(x), gamma(g), beta(b), kw...);
    CHECK(th::rel_err(r.y, want(c, "y")) < tol);
    CHECK(th::rel_err(r.mean, want(c, "mean")) < tol);
    CHECK(th::rel_err(r.rstd, want(c, "rstd")) < tol);
    xt::xtensor<float, 4> nhwc = xt::transpose(x, {0, 2, 3, 1});
    auto rh = forward(Spec{}, named<N, H, W, C>(nhwc), gamma(g), beta(b), kw...);
    CHECK(th::rel_err(xt::transpose(rh.y, {0, 3, 1, 2}), want(c, "y")) < tol);
    CHECK(th::rel_err(rh.mean, want(c, "mean")) < tol);
}

}  // namespace

TEST_CASE("batch_norm, training: y, saved statistics and running statistics match PyTorch") {
    const std::string c = "batch_norm_train";
    for (int layout = 0; layout < 2; ++layout) {
        CAPTURE(layout);
        xt::xtensor<float, 4> x = in(c, "x");
        xt::xtensor<float, 1> rm = in(c, "running_mean"), rv = in(c, "running_var");
        auto g = in(c, "gamma"), b = in(c, "beta");
        xt::xtensor<float, 4> y;
        xt::xtensor<float, 1> mean, rstd;
        if (layout == 0) {
            auto r = forward(batch_norm{}, named<N, C, H, W>(x), gamma(g), beta(b), running(rm, rv));
            y = r.y, mean = r.mean, rstd = r.rstd;
        } else {
            xt::xtensor<float, 4> nhwc = xt::transpose(x, {0, 2, 3, 1});
            auto r = forward(batch_norm{}, named<N, H, W, C>(nhwc), gamma(g), beta(b), running(rm, rv));
            y = xt::transpose(r.y, {0, 3, 1, 2}), mean = r.mean, rstd = r.rstd;
        }
        CHECK(th::rel_err(y, want(c, "y")) < tol);
        CHECK(th::rel_err(mean, want(c, "mean")) < tol);
        CHECK(th::rel_err(rstd, want(c, "rstd")) < tol);
        CHECK(th::rel_err(rm, want(c, "running_mean_out")) < tol);
        CHECK(th::rel_err(rv, want(c, "running_var_out")) < tol);
    }
}

TEST_CASE("batch_norm, evaluation, matches PyTorch") {
    const std::string c = "batch_norm_eval";
    xt::xtensor<float, 1> rm = in(c, "running_mean"), rv = in(c, "running_var");
    check_cnn<batch_norm>(c, running(rm, rv), mode::eval);
    CHECK(th::rel_err(rm, in(c, "running_mean")) == 0.0);
}

TEST_CASE("layer_norm_cnn, instance_norm and group_norm (G = 1, 4, C) match PyTorch") {
    check_cnn<layer_norm_cnn>("layer_norm_cnn");
    check_cnn<layer_norm_cnn>("layer_norm_cnn", mode::eval);
    check_cnn<instance_norm>("instance_norm");
    check_cnn<group_norm<1>>("group_norm_1");
    check_cnn<group_norm<4>>("group_norm_4");
    check_cnn<group_norm<12>>("group_norm_12");
    check_cnn<group_norm<>>("group_norm_4", num_groups(4));
}

TEST_CASE("layer_norm and rms_norm match PyTorch, also on the large-offset input") {
    for (std::string c : {"layer_norm", "layer_norm_large_offset"}) {
        CAPTURE(c);
        xt::xtensor<float, 3> x = in(c, "x");
        auto r = forward(layer_norm{}, named<B, T, D>(x), gamma(in(c, "gamma")), beta(in(c, "beta")));
        CHECK(th::rel_err(r.y, want(c, "y")) < tol);
        CHECK(th::rel_err(r.mean, want(c, "mean")) < tol);
        CHECK(th::rel_err(r.rstd, want(c, "rstd")) < tol);
    }
    xt::xtensor<float, 3> x = in("rms_norm", "x");
    auto r = forward(rms_norm{}, named<B, T, D>(x), gamma(in("rms_norm", "gamma")));
    CHECK(th::rel_err(r.y, want("rms_norm", "y")) < tol);
    CHECK(th::rel_err(r.rstd, want("rms_norm", "rstd")) < tol);
}

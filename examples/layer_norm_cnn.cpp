// LayerNorm over (C,H,W), with gamma and beta on (C,H,W): one statistic per image.
#include "example_check.hpp"

#include <normspec/normspec.hpp>
#include <xtensor/xrandom.hpp>

int main() {
    using namespace normspec;
    xt::random::seed(2);
    xt::xtensor<double, 4> x = xt::random::randn<double>({4, 3, 8, 8}, 5.0, 3.0);
    xt::xtensor<double, 3> g = xt::ones<double>({3, 8, 8}), b = xt::zeros<double>({3, 8, 8});
    auto r = forward(layer_norm_cnn{}, named<N, C, H, W>(x), gamma(g), beta(b));
    std::printf("statistics per image: %zu means, first %.4f\n", r.mean.size(), r.mean(0));
    expect(r.mean.size() == 4, "one mean per image");
    const double var = xt::variance(xt::view(r.y, 1))();
    expect(std::abs(var - 1.0) < 1e-4, "each image has unit variance");
}

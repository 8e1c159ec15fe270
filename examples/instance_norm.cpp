// InstanceNorm: statistics per (image, channel), over H and W.
#include "example_check.hpp"

#include <normspec/normspec.hpp>
#include <xtensor/xrandom.hpp>

int main() {
    using namespace normspec;
    xt::random::seed(4);
    xt::xtensor<float, 4> x = xt::random::randn<float>({2, 3, 9, 11}, 1.0f, 2.0f);
    auto r = forward(instance_norm{}, named<N, C, H, W>(x));
    std::printf("statistics shape: %zu x %zu\n", r.mean.shape()[0], r.mean.shape()[1]);
    expect(r.mean.shape()[0] == 2 && r.mean.shape()[1] == 3, "one statistic per (N, C)");
    expect(std::abs(xt::mean(xt::view(r.y, 1, 2))()) < 1e-5f, "each plane is centred");
}

// GroupNorm, G fixed at compile time and G given at run time: the same numbers.
#include "example_check.hpp"

#include <normspec/normspec.hpp>
#include <xtensor/xrandom.hpp>

int main() {
    using namespace normspec;
    xt::random::seed(5);
    xt::xtensor<float, 4> x = xt::random::randn<float>({2, 32, 6, 6});
    xt::xtensor<float, 1> g = xt::ones<float>({32}), b = xt::zeros<float>({32});
    auto fixed = forward(group_norm<8>{}, named<N, C, H, W>(x), gamma(g), beta(b));
    auto runtime = forward(group_norm<>{}, named<N, C, H, W>(x), gamma(g), beta(b), num_groups(8));
    std::printf("statistics shape (N, G): %zu x %zu\n", fixed.rstd.shape()[0], fixed.rstd.shape()[1]);
    expect(fixed.rstd.shape()[1] == 8, "one statistic per group");
    expect(fixed.y == runtime.y, "compile-time and run-time G agree");
}

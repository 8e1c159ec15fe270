// RMSNorm: no centring, gamma only; the saved statistic is rstd = 1/sqrt(mean(x^2) + eps).
#include "example_check.hpp"

#include <normspec/normspec.hpp>
#include <xtensor/xrandom.hpp>

int main() {
    using namespace normspec;
    xt::xtensor<float, 2> x{{3, 4, 0, 0}, {1, 1, 1, 1}};  // T,D
    xt::xtensor<float, 1> g = xt::ones<float>({4});
    auto r = forward(rms_norm{}, named<T, D>(x), gamma(g), eps(1e-12));
    std::printf("rstd of token 0: %.6f (mean square 6.25)\n", r.rstd(0));
    expect(std::abs(r.rstd(0) - 0.4f) < 1e-6f, "rstd = 1/sqrt(6.25)");
    expect(std::abs(r.y(1, 2) - 1.0f) < 1e-6f, "a constant token maps to gamma");
    expect(r.mean.size() == 0, "no mean is saved: nothing is subtracted");
}

// Transformer LayerNorm in a pre-norm residual block, x + f(norm(x)), on one sequence
// (batch size 1 is fine: statistics stay inside a token).
#include "example_check.hpp"

#include <normspec/normspec.hpp>
#include <xtensor/xrandom.hpp>

int main() {
    using namespace normspec;
    xt::random::seed(3);
    xt::xtensor<float, 3> x = xt::random::randn<float>({1, 7, 64}, 0.0f, 4.0f);  // B,T,D
    xt::xtensor<float, 1> g = xt::ones<float>({64}), b = xt::zeros<float>({64});
    auto h = forward(layer_norm{}, named<B, T, D>(x), gamma(g), beta(b));
    xt::xtensor<float, 3> f = 0.5f * xt::tanh(h.y);  // a stand-in sublayer
    xt::xtensor<float, 3> next = x + f;
    std::printf("token 0: mean %.4f rstd %.4f\n", h.mean(0, 0), h.rstd(0, 0));
    expect(layer_norm::packing_safe && !layer_norm::couples_batch, "LayerNorm is packing-safe");
    expect(std::abs(xt::mean(xt::view(h.y, 0, 3))()) < 1e-5f, "each token is centred");
    expect(next.shape() == x.shape(), "the residual stream keeps its shape");
}

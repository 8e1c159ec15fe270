// BatchNorm on a channels-last image batch: a training step (batch statistics, running
// statistics updated with momentum 0.1), then evaluation with the running statistics.
#include "example_check.hpp"

#include <normspec/normspec.hpp>
#include <xtensor/xrandom.hpp>
#include <xtensor/xview.hpp>

int main() {
    using namespace normspec;
    xt::random::seed(1);
    xt::xtensor<float, 4> x = 3.0f + 2.0f * xt::random::randn<float>({8, 5, 5, 16});  // N,H,W,C
    xt::xtensor<float, 1> g = xt::ones<float>({16}), b = xt::zeros<float>({16});
    xt::xtensor<float, 1> running_mean = xt::zeros<float>({16}), running_var = xt::ones<float>({16});

    auto train = forward(batch_norm{}, named<N, H, W, C>(x), gamma(g), beta(b), running(running_mean, running_var));
    std::printf("batch mean of channel 0: %.4f, running mean now %.4f\n", train.mean(0), running_mean(0));
    expect(std::abs(running_mean(0) - 0.1f * train.mean(0)) < 1e-6f, "running = 0.9 * running + 0.1 * batch");
    expect(std::abs(xt::mean(xt::view(train.y, xt::all(), xt::all(), xt::all(), 0))()) < 1e-5f, "train output is centred");

    auto eval = forward(batch_norm{}, named<N, H, W, C>(x), gamma(g), beta(b), running(running_mean, running_var), mode::eval);
    expect(xt::mean(eval.y)() > 1.0f, "eval uses running statistics, which have not caught up yet");
    static_assert(batch_norm::train_eval_differ && !batch_norm::packing_safe);
}

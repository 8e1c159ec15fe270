// A variant that is no alias: per-head QK-norm, RMS over the head dimension Dh of (B,T,Heads,Dh),
// with a learnable scale per Dh. Two new axes, one line each; the spec is one line too.
#include "example_check.hpp"

#include <normspec/normspec.hpp>
#include <xtensor/xrandom.hpp>

struct Heads : normspec::axis<"Heads"> {};
struct Dh : normspec::axis<"Dh"> {};
using qk_norm = normspec::norm<normspec::reduce<Dh>, normspec::scale<Dh>, normspec::rms>;

int main() {
    using namespace normspec;
    static_assert(qk_norm::packing_safe && !qk_norm::has_running_stats && !qk_norm::has_beta);
    std::printf("%s\n", to_string<qk_norm>().c_str());
    xt::random::seed(6);
    xt::xtensor<float, 4> q = xt::random::randn<float>({2, 5, 4, 16}, 0.0f, 3.0f);
    xt::xtensor<float, 1> g = xt::ones<float>({16});
    auto r = forward(qk_norm{}, named<B, T, Heads, Dh>(q), gamma(g));
    expect(r.rstd.shape() == std::array<std::size_t, 3>{2, 5, 4}, "one statistic per (B, T, head)");
    const float ms = xt::mean(xt::square(xt::view(r.y, 1, 2, 3)))();
    expect(std::abs(ms - 1.0f) < 1e-3f, "each head vector has unit mean square");
}

// A project outside normspec's tree, built against the installed package.
#include <normspec/normspec.hpp>

#include <cmath>
#include <iostream>

int main() {
    using namespace normspec;
    xt::xtensor<float, 2> x{{1, 2, 3, 4}, {2, 2, 2, 2}};
    xt::xtensor<float, 1> g{1, 1, 1, 1};
    auto r = forward(rms_norm{}, named<T, D>(x), gamma(g));
    const double want = 1.0 / std::sqrt(7.5 + 1e-5);  // row 0: mean of squares 7.5
    if (std::abs(r.rstd(0) - want) > 1e-6) return 1;
    std::cout << "rms_norm ok\n";
}

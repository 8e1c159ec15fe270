// Compile-time baseline: xtensor's containers and one expression, nothing of normspec.
#include <xtensor/xtensor.hpp>

int main() {
    xt::xtensor<float, 4> img = xt::ones<float>({2, 8, 4, 4});
    xt::xtensor<float, 4> y = img * 2.0f + 1.0f;
    return y(0, 0, 0, 0) == 3.0f ? 0 : 1;
}

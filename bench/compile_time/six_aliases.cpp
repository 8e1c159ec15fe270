// Compile-time measurement: a translation unit that runs all six aliases (float).
#include <normspec/normspec.hpp>

int main() {
    using namespace normspec;
    xt::xtensor<float, 4> img = xt::ones<float>({2, 8, 4, 4});
    xt::xtensor<float, 3> seq = xt::ones<float>({2, 3, 8});
    xt::xtensor<float, 1> c = xt::ones<float>({8});
    xt::xtensor<float, 3> chw = xt::ones<float>({8, 4, 4});
    float sum = 0;
    sum += forward(batch_norm{}, named<N, C, H, W>(img), gamma(c), beta(c)).y(0, 0, 0, 0);
    sum += forward(layer_norm_cnn{}, named<N, C, H, W>(img), gamma(chw), beta(chw)).y(0, 0, 0, 0);
    sum += forward(layer_norm{}, named<B, T, D>(seq), gamma(c), beta(c)).y(0, 0, 0);
    sum += forward(instance_norm{}, named<N, C, H, W>(img), gamma(c), beta(c)).y(0, 0, 0, 0);
    sum += forward(group_norm<4>{}, named<N, C, H, W>(img), gamma(c), beta(c)).y(0, 0, 0, 0);
    sum += forward(rms_norm{}, named<B, T, D>(seq), gamma(c)).y(0, 0, 0);
    return sum == sum ? 0 : 1;
}

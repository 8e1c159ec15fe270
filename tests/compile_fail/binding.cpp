// Compile-fail: misuse visible when a spec meets a tensor's names, types and the call's arguments.
// Without a FAIL_ macro every call here is well-formed and compiles.
#include <normspec/normspec.hpp>

#include <xtensor/xfixed.hpp>

using namespace normspec;

void under_test() {
    xt::xtensor<float, 3> x = xt::zeros<float>({2, 3, 4});
    xt::xtensor<float, 1> g = xt::ones<float>({4});
    xt::xtensor<float, 1> m = xt::zeros<float>({4}), v = xt::ones<float>({4});
    xt::xtensor<float, 4> img = xt::zeros<float>({2, 4, 3, 3});
    xt::xtensor_fixed<float, xt::xshape<2, 3, 5>> fixed_x;
    xt::xtensor_fixed<float, xt::xshape<5>> fixed_g;
    xt::xtensor_fixed<float, xt::xshape<2, 6, 3, 3>> fixed_img;
#if defined(FAIL_REDUCE_AXIS_MISSING)
    forward(batch_norm{}, named<B, T, D>(x));
#elif defined(FAIL_AFFINE_AXIS_MISSING)
    forward(norm<reduce<T>, affine<C>>{}, named<B, T, D>(x));
#elif defined(FAIL_SCALE_AXIS_MISSING)
    forward(norm<reduce<D>, scale<W>, rms>{}, named<B, T, D>(x));
#elif defined(FAIL_NAMED_TWICE)
    forward(layer_norm{}, named<B, D, D>(x));
#elif defined(FAIL_NAMED_RANK)
    forward(layer_norm{}, named<T, D>(x));
#elif defined(FAIL_BETA_ON_RMS)
    forward(rms_norm{}, named<B, T, D>(x), gamma(g), beta(g));
#elif defined(FAIL_GAMMA_WITHOUT_PARAMETERS)
    forward(norm<reduce<D>>{}, named<B, T, D>(x), gamma(g));
#elif defined(FAIL_RUNNING_ON_LAYER_NORM)
    forward(layer_norm{}, named<B, T, D>(x), running(m, v));
#elif defined(FAIL_NUM_GROUPS_ON_STATIC_GROUPS)
    forward(group_norm<2>{}, named<N, C, H, W>(img), num_groups(2));
#elif defined(FAIL_NUM_GROUPS_MISSING)
    forward(group_norm<>{}, named<N, C, H, W>(img));
#elif defined(FAIL_UNKNOWN_ARGUMENT)
    forward(layer_norm{}, named<B, T, D>(x), 1e-5);
#elif defined(FAIL_INTEGER_TENSOR)
    xt::xtensor<int, 3> ints = xt::zeros<int>({2, 3, 4});
    forward(layer_norm{}, named<B, T, D>(ints));
#elif defined(FAIL_FIXED_GAMMA_EXTENT)
    xt::xtensor_fixed<float, xt::xshape<4>> short_g;
    forward(layer_norm{}, named<B, T, D>(fixed_x), gamma(short_g));
#elif defined(FAIL_FIXED_GROUPS_DO_NOT_DIVIDE)
    forward(group_norm<4>{}, named<N, C, H, W>(fixed_img));
#elif defined(FAIL_BACKWARD_SAVED_RANK)
    auto saved = forward(layer_norm{}, named<B, T, D>(x));  // statistics on <B,T>; batch_norm's are on <C>
    backward(batch_norm{}, named<N, C, H, W>(img), img, saved);
#elif defined(FAIL_BACKWARD_UNKNOWN_ARGUMENT)
    auto saved = forward(batch_norm{}, named<N, C, H, W>(img), running(m, v));
    backward(batch_norm{}, named<N, C, H, W>(img), img, saved, running(m, v));
#elif defined(FAIL_OUT_DGAMMA_WITHOUT_PARAMETERS)
    auto saved = forward(norm<reduce<D>>{}, named<B, T, D>(x));
    backward(norm<reduce<D>>{}, named<B, T, D>(x), x, saved, out_dgamma(g));
#elif defined(FAIL_OUT_DBETA_ON_RMS)
    auto saved = forward(rms_norm{}, named<B, T, D>(x), gamma(g));
    backward(rms_norm{}, named<B, T, D>(x), x, saved, gamma(g), out_dgamma(m), out_dbeta(v));
#else
    forward(batch_norm{}, named<N, C, H, W>(img), running(m, v));
    auto saved = forward(rms_norm{}, named<B, T, D>(x), gamma(g));
    backward(rms_norm{}, named<B, T, D>(x), x, saved, gamma(g), mode::eval, threads(1));
    backward(rms_norm{}, named<B, T, D>(x), x, saved, gamma(g), out_dgamma(m));
    forward(layer_norm{}, named<B, T, D>(x), gamma(g), beta(g));
    forward(rms_norm{}, named<B, T, D>(x), gamma(g), eps(1e-6), threads(1));
    forward(group_norm<>{}, named<N, C, H, W>(img), num_groups(2));
    forward(group_norm<3>{}, named<N, C, H, W>(fixed_img));
    forward(layer_norm{}, named<B, T, D>(fixed_x), gamma(fixed_g), beta(fixed_g));
#endif
}

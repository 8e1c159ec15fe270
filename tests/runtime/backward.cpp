// The backward pass: against PyTorch autograd (float32 inputs, float64 references), against central
// finite differences in double on odd shapes and strided views, gradient-sum identities, errors.
#include "helpers.hpp"

#include <xtensor/xadapt.hpp>
#include <xtensor/xmanipulation.hpp>
#include <xtensor/xnpy.hpp>

using namespace normspec;

namespace {

xt::xarray<float> in(const std::string& c, const std::string& f) {
    return xt::load_npy<float>(std::string(NORMSPEC_REFERENCE_DIR) + "/" + c + "/" + f + ".npy");
}
xt::xarray<double> want(const std::string& c, const std::string& f) {
    return xt::load_npy<double>(std::string(NORMSPEC_REFERENCE_DIR) + "/" + c + "/" + f + ".npy");
}
constexpr double tol = 2e-6;  // relative to the largest reference value; the target is 2e-5

/// forward (with its keywords) then backward (in mode m) on NCHW and on NHWC data; dx, dgamma,
/// dbeta against autograd's
template <class Spec, class... Kw>
void check_cnn(const std::string& c, mode m, Kw&&... kw) {
    CAPTURE(c);
    xt::xtensor<float, 4> x = in(c, "x"), dy = in(c, "dy");
    auto g = in(c, "gamma"), b = in(c, "beta");
    auto r = forward(Spec{}, named<N, C, H, W>(x), gamma(g), beta(b), kw...);
    auto grad = backward(Spec{}, named<N, C, H, W>(x), dy, r, gamma(g), m);
    CHECK(th::rel_err(grad.dx, want(c, "dx")) < tol);
    CHECK(th::rel_err(grad.dgamma, want(c, "dgamma")) < tol);
    CHECK(th::rel_err(grad.dbeta, want(c, "dbeta")) < tol);
    xt::xtensor<float, 4> xh = xt::transpose(x, {0, 2, 3, 1}), dyh = xt::transpose(dy, {0, 2, 3, 1});
    auto rh = forward(Spec{}, named<N, H, W, C>(xh), gamma(g), beta(b), kw...);
    auto gh = backward(Spec{}, named<N, H, W, C>(xh), dyh, rh, gamma(g), m);
    CHECK(th::rel_err(xt::transpose(gh.dx, {0, 3, 1, 2}), want(c, "dx")) < tol);
    CHECK(th::rel_err(gh.dgamma, want(c, "dgamma")) < tol);
    CHECK(th::rel_err(gh.dbeta, want(c, "dbeta")) < tol);
}

/// dx of L = sum(dy * y) by central differences, element by element through x (any view)
template <class Spec, class... A, class X, class... Kw>
xt::xarray<double> numeric_dx(X& x, const xt::xarray<double>& dy, Kw&&... kw) {
    xt::xarray<double> dx = xt::zeros<double>(dy.shape());
    std::size_t i = 0;
    for (auto it = x.begin(); it != x.end(); ++it, ++i) {
        const double x0 = *it, h = 1e-6 * std::max(1.0, std::abs(x0));
        *it = x0 + h;
        const double lp = xt::sum(dy * forward(Spec{}, named<A...>(x), kw...).y)();
        *it = x0 - h;
        const double lm = xt::sum(dy * forward(Spec{}, named<A...>(x), kw...).y)();
        *it = x0;
        dx.data()[i] = (lp - lm) / (2 * h);
    }
    return dx;
}

template <class Spec, class... A, class X>
void check_finite_differences(X& x, long groups = 0) {
    xt::xarray<double> xv = x;
    std::vector<std::size_t> shape(xv.shape().begin(), xv.shape().end());
    const xt::xarray<double> dy = th::randn(shape);
    auto [g, b] = th::params_for<Spec, A...>(shape);
    auto run = [&](auto&&... extra) {
        auto with = [&](auto&&... more) {
            if constexpr (Spec::has_beta)
                return forward(Spec{}, named<A...>(x), gamma(g), beta(b), more..., extra...);
            else if constexpr (Spec::has_gamma)
                return forward(Spec{}, named<A...>(x), gamma(g), more..., extra...);
            else
                return forward(Spec{}, named<A...>(x), more..., extra...);
        };
        if constexpr (Spec::runtime_groups) return with(num_groups(groups));
        else return with();
    };
    const auto r = run();
    auto grad = [&] {
        if constexpr (Spec::has_gamma) return backward(Spec{}, named<A...>(x), dy, r, gamma(g));
        else return backward(Spec{}, named<A...>(x), dy, r);
    }();
    xt::xarray<double> numeric;
    if constexpr (Spec::runtime_groups) {
        if constexpr (Spec::has_beta) numeric = numeric_dx<Spec, A...>(x, dy, gamma(g), beta(b), num_groups(groups));
    } else if constexpr (Spec::has_beta) {
        numeric = numeric_dx<Spec, A...>(x, dy, gamma(g), beta(b));
    } else if constexpr (Spec::has_gamma) {
        numeric = numeric_dx<Spec, A...>(x, dy, gamma(g));
    } else {
        numeric = numeric_dx<Spec, A...>(x, dy);
    }
    CHECK(th::rel_err(grad.dx, numeric) < 1e-6);
    if constexpr (Spec::has_beta) {
        // dbeta = sum of dy and dgamma = sum of dy * xhat per parameter: y = xhat * gamma + beta
        const auto r0 = [&] {
            if constexpr (Spec::runtime_groups) return forward(Spec{}, named<A...>(x), num_groups(groups));
            else return forward(Spec{}, named<A...>(x));
        }();
        const xt::xarray<double> xhat = r0.y;  // no parameters: y is xhat
        xt::xarray<double> dg = xt::zeros<double>(g.shape()), db = xt::zeros<double>(g.shape());
        // accumulate by parameter index with the reference's indexing
        const std::vector<std::string_view> names{A::name...};
        const auto d = describe<Spec>();
        std::vector<std::size_t> idx(shape.size());
        for (std::size_t flat = 0; flat < xhat.size(); ++flat) {
            std::size_t rest = flat;
            for (std::size_t k = shape.size(); k-- > 0;) idx[k] = rest % shape[k], rest /= shape[k];
            std::size_t p = 0;
            for (auto pa : d.params)
                for (std::size_t k = 0; k < names.size(); ++k)
                    if (names[k] == pa) p = p * shape[k] + idx[k];
            dg.data()[p] += dy.data()[flat] * xhat.data()[flat];
            db.data()[p] += dy.data()[flat];
        }
        CHECK(th::rel_err(grad.dgamma, dg) < 1e-10);
        CHECK(th::rel_err(grad.dbeta, db) < 1e-10);
    }
}

}  // namespace

TEST_CASE("backward matches PyTorch autograd for every alias, NCHW and NHWC, training and evaluation") {
    xt::xtensor<float, 1> rm = in("batch_norm_train", "running_mean"), rv = in("batch_norm_train", "running_var");
    check_cnn<batch_norm>("batch_norm_train", mode::train, running(rm, rv));
    xt::xtensor<float, 1> rme = in("batch_norm_eval", "running_mean"), rve = in("batch_norm_eval", "running_var");
    check_cnn<batch_norm>("batch_norm_eval", mode::eval, running(rme, rve), mode::eval);
    check_cnn<layer_norm_cnn>("layer_norm_cnn", mode::train);
    check_cnn<layer_norm_cnn>("layer_norm_cnn", mode::eval, mode::eval);  // one code path: the same gradients
    check_cnn<instance_norm>("instance_norm", mode::train);
    check_cnn<group_norm<1>>("group_norm_1", mode::train);
    check_cnn<group_norm<4>>("group_norm_4", mode::train);
    check_cnn<group_norm<12>>("group_norm_12", mode::train);
    check_cnn<group_norm<>>("group_norm_4", mode::train, num_groups(4));
    for (std::string c : {"layer_norm", "layer_norm_large_offset"}) {
        CAPTURE(c);
        xt::xtensor<float, 3> x = in(c, "x"), dy = in(c, "dy");
        auto g = in(c, "gamma"), b = in(c, "beta");
        auto grad = backward(layer_norm{}, named<B, T, D>(x), dy, forward(layer_norm{}, named<B, T, D>(x), gamma(g), beta(b)), gamma(g));
        CHECK(th::rel_err(grad.dx, want(c, "dx")) < tol);
        CHECK(th::rel_err(grad.dgamma, want(c, "dgamma")) < tol);
        CHECK(th::rel_err(grad.dbeta, want(c, "dbeta")) < tol);
    }
    xt::xtensor<float, 3> x = in("rms_norm", "x"), dy = in("rms_norm", "dy");
    auto g = in("rms_norm", "gamma");
    auto grad = backward(rms_norm{}, named<B, T, D>(x), dy, forward(rms_norm{}, named<B, T, D>(x), gamma(g)), gamma(g));
    CHECK(th::rel_err(grad.dx, want("rms_norm", "dx")) < tol);
    CHECK(th::rel_err(grad.dgamma, want("rms_norm", "dgamma")) < tol);
    CHECK(grad.dbeta.size() == 0);
}

struct Heads : axis<"Heads"> {};
struct Dh : axis<"Dh"> {};

TEST_CASE("backward matches central finite differences in double on odd shapes and strided views") {
    for (auto shape : std::vector<std::vector<std::size_t>>{{2, 3, 5, 1}, {3, 2, 1, 4}, {1, 4, 3, 3}}) {
        CAPTURE(shape);
        xt::xarray<double> x = th::randn(shape, 0.5, 1.5);
        check_finite_differences<batch_norm, N, C, H, W>(x);
        check_finite_differences<layer_norm_cnn, N, C, H, W>(x);
        check_finite_differences<instance_norm, N, C, H, W>(x);
        xt::xarray<double> xh = xt::transpose(x, {0, 2, 3, 1});
        check_finite_differences<batch_norm, N, H, W, C>(xh);
        check_finite_differences<instance_norm, N, H, W, C>(xh);
        if (shape[1] % 2 == 0) {
            check_finite_differences<group_norm<2>, N, C, H, W>(x);
            check_finite_differences<group_norm<>, N, H, W, C>(xh, 2);
        }
    }
    // a strided view: every other channel of a wider tensor
    xt::xarray<double> wide = th::randn({2, 8, 3, 3});
    auto view = xt::view(wide, xt::all(), xt::range(0, 8, 2), xt::all(), xt::all());
    check_finite_differences<batch_norm, N, C, H, W>(view);
    check_finite_differences<group_norm<2>, N, C, H, W>(view);
    xt::xarray<double> seq = th::randn({2, 3, 7}, 1.0);
    check_finite_differences<layer_norm, B, T, D>(seq);
    check_finite_differences<rms_norm, B, T, D>(seq);
    check_finite_differences<norm<reduce<B, T>, affine<D>>, B, T, D>(seq);  // BatchNorm over tokens
    check_finite_differences<norm<reduce<T, D>>, B, T, D>(seq);              // no parameters
    xt::xarray<double> heads = th::randn({2, 3, 2, 5}, 0.2);
    check_finite_differences<norm<reduce<Dh>, scale<Dh>, rms>, B, T, Heads, Dh>(heads);
    check_finite_differences<norm<reduce<Dh>, affine<Heads, Dh>>, B, T, Heads, Dh>(heads);
}

TEST_CASE("centred norms: with constant gamma, dx sums to zero over each reduction group") {
    xt::xtensor<double, 4> x = th::randn({3, 6, 4, 5}, 2.0), dy = th::randn({3, 6, 4, 5});
    xt::xtensor<double, 1> g = xt::ones<double>({6}) * 1.7;
    auto bn = backward(batch_norm{}, named<N, C, H, W>(x), dy, forward(batch_norm{}, named<N, C, H, W>(x), gamma(g)), gamma(g));
    for (std::size_t c = 0; c < 6; ++c) CHECK(std::abs(xt::sum(xt::view(bn.dx, xt::all(), c))()) < 1e-10);
    auto gn = backward(group_norm<3>{}, named<N, C, H, W>(x), dy, forward(group_norm<3>{}, named<N, C, H, W>(x), gamma(g)), gamma(g));
    for (std::size_t n = 0; n < 3; ++n)
        for (std::size_t grp = 0; grp < 3; ++grp)
            CHECK(std::abs(xt::sum(xt::view(gn.dx, n, xt::range(2 * grp, 2 * grp + 2)))()) < 1e-10);
    xt::xtensor<double, 3> s = th::randn({4, 5, 9}), sdy = th::randn({4, 5, 9});
    auto ln = backward(layer_norm{}, named<B, T, D>(s), sdy, forward(layer_norm{}, named<B, T, D>(s)));
    CHECK(xt::amax(xt::abs(xt::sum(ln.dx, {2})))() < 1e-10);
    // and evaluation of BatchNorm is a per-channel scale: dx = dy * gamma * rstd_running
    xt::xtensor<double, 1> rm = xt::zeros<double>({6}), rv = xt::ones<double>({6}) * 4.0;
    auto r = forward(batch_norm{}, named<N, C, H, W>(x), gamma(g), running(rm, rv), mode::eval);
    auto ev = backward(batch_norm{}, named<N, C, H, W>(x), dy, r, gamma(g), mode::eval);
    CHECK(th::rel_err(ev.dx, dy * (1.7 / std::sqrt(4.0 + 1e-5))) < 1e-14);
    // out(dx): into a caller's tensor of another layout, or in place over dy
    xt::xtensor<double, 4> dx_nhwc = xt::zeros<double>({3, 4, 5, 6});
    auto r2 = forward(batch_norm{}, named<N, C, H, W>(x), gamma(g));
    auto into = backward(batch_norm{}, named<N, C, H, W>(x), dy, r2, gamma(g), out(xt::transpose(dx_nhwc, {0, 3, 1, 2})));
    CHECK(into.dx.size() == 0);
    CHECK(th::rel_err(xt::transpose(dx_nhwc, {0, 3, 1, 2}), bn.dx) < 1e-14);
    xt::xtensor<double, 4> dy_copy = dy;
    backward(batch_norm{}, named<N, C, H, W>(x), dy_copy, r2, gamma(g), out(dy_copy));
    CHECK(th::rel_err(dy_copy, bn.dx) < 1e-14);
}

TEST_CASE("backward: out_dgamma and out_dbeta write the parameter gradients into the caller's tensors") {
    xt::xtensor<double, 4> x = th::randn({3, 6, 5, 4}, 0.5, 2.0), dy = th::randn({3, 6, 5, 4});
    xt::xtensor<double, 1> g = th::randn({6}, 1.0, 0.5);
    auto r = forward(batch_norm{}, named<N, C, H, W>(x), gamma(g));
    auto ref = backward(batch_norm{}, named<N, C, H, W>(x), dy, r, gamma(g));
    // row-major tensors of T: written in place, and the result's dgamma and dbeta are empty
    xt::xtensor<double, 1> dg = xt::zeros<double>({6}), db = xt::zeros<double>({6});
    auto both = backward(batch_norm{}, named<N, C, H, W>(x), dy, r, gamma(g), out_dgamma(dg), out_dbeta(db));
    CHECK(both.dgamma.size() == 0);
    CHECK(both.dbeta.size() == 0);
    CHECK(xt::allclose(dg, ref.dgamma, 0.0, 0.0));
    CHECK(xt::allclose(db, ref.dbeta, 0.0, 0.0));
    CHECK(xt::allclose(both.dx, ref.dx, 0.0, 0.0));
    // one of them: the other is returned as before
    xt::xtensor<double, 1> db_only = xt::zeros<double>({6});
    auto one = backward(batch_norm{}, named<N, C, H, W>(x), dy, r, gamma(g), out_dbeta(db_only));
    CHECK(xt::allclose(one.dgamma, ref.dgamma, 0.0, 0.0));
    CHECK(one.dbeta.size() == 0);
    CHECK(xt::allclose(db_only, ref.dbeta, 0.0, 0.0));
    // a strided view (every other element of a buffer) gets the values; the elements between stay
    xt::xtensor<double, 1> buf = xt::full_like(xt::zeros<double>({12}), -7.0);
    auto every_other = xt::view(buf, xt::range(0, 12, 2));
    backward(batch_norm{}, named<N, C, H, W>(x), dy, r, gamma(g), out_dgamma(every_other));
    CHECK(xt::allclose(xt::view(buf, xt::range(0, 12, 2)), ref.dgamma, 0.0, 0.0));
    CHECK(xt::all(xt::equal(xt::view(buf, xt::range(1, 12, 2)), -7.0)));
    // parameters over two axes (LayerNorm over C,H,W), float data into a double tensor and into
    // a transposed float one, at one and two threads
    xt::xtensor<float, 4> xf = th::randn({2, 3, 7, 5}, 0.5, 2.0), dyf = th::randn({2, 3, 7, 5});
    xt::xtensor<float, 3> gf = th::randn({3, 7, 5}, 1.0, 0.5), bf = th::randn({3, 7, 5});
    for (int nt : {1, 2}) {
        CAPTURE(nt);
        auto rf = forward(layer_norm_cnn{}, named<N, C, H, W>(xf), gamma(gf), beta(bf), threads(nt));
        auto reff = backward(layer_norm_cnn{}, named<N, C, H, W>(xf), dyf, rf, gamma(gf), threads(nt));
        xt::xtensor<double, 3> dgd = xt::zeros<double>({3, 7, 5});
        xt::xtensor<float, 3> dbt = xt::zeros<float>({5, 7, 3});
        auto gotf = backward(layer_norm_cnn{}, named<N, C, H, W>(xf), dyf, rf, gamma(gf), threads(nt), out_dgamma(dgd),
                             out_dbeta(xt::transpose(dbt, {2, 1, 0})));
        CHECK(xt::allclose(dgd, xt::cast<double>(reff.dgamma), 0.0, 0.0));
        CHECK(xt::allclose(xt::transpose(dbt, {2, 1, 0}), reff.dbeta, 0.0, 0.0));
        CHECK(xt::allclose(gotf.dx, reff.dx, 0.0, 0.0));
    }
    // RMSNorm: dgamma only
    xt::xtensor<float, 2> s = th::randn({5, 9}), sdy = th::randn({5, 9});
    xt::xtensor<float, 1> sg = th::randn({9}, 1.0, 0.5), sdg = xt::zeros<float>({9});
    auto rs = forward(rms_norm{}, named<T, D>(s), gamma(sg));
    auto refs = backward(rms_norm{}, named<T, D>(s), sdy, rs, gamma(sg));
    backward(rms_norm{}, named<T, D>(s), sdy, rs, gamma(sg), out_dgamma(sdg));
    CHECK(xt::allclose(sdg, refs.dgamma, 0.0, 0.0));
}

TEST_CASE("backward: out_dgamma and out_dbeta are checked by name against gamma's extents") {
    xt::xtensor<float, 4> x = th::randn({2, 4, 3, 3}), dy = th::randn({2, 4, 3, 3});
    auto r = forward(batch_norm{}, named<N, C, H, W>(x));
    xt::xtensor<float, 1> d5 = xt::zeros<float>({5});
    CHECK_THROWS_WITH_AS(backward(batch_norm{}, named<N, C, H, W>(x), dy, r, out_dgamma(d5)),
                         doctest::Contains("out_dgamma axis C has extent 5 but gamma's axis C has extent 4"), std::invalid_argument);
    xt::xtensor<float, 2> d2 = xt::zeros<float>({4, 1});
    CHECK_THROWS_WITH_AS(backward(batch_norm{}, named<N, C, H, W>(x), dy, r, out_dbeta(d2)),
                         doctest::Contains("out_dbeta has 2 dimensions but must have 1 (axes <C>)"), std::invalid_argument);
    // nothing was written before the error: the check comes first
    xt::xtensor<float, 1> dg = xt::full_like(xt::zeros<float>({4}), 3.0f);
    CHECK_THROWS_AS(backward(batch_norm{}, named<N, C, H, W>(x), dy, r, out_dgamma(dg), out_dbeta(d5)), std::invalid_argument);
    CHECK(xt::all(xt::equal(dg, 3.0f)));
}

TEST_CASE("backward: shapes of dy and of the saved statistics are checked by name") {
    xt::xtensor<float, 4> x = xt::ones<float>({2, 4, 3, 3}), dy = xt::ones<float>({2, 4, 3, 5});
    auto r = forward(batch_norm{}, named<N, C, H, W>(x));
    CHECK_THROWS_WITH_AS(backward(batch_norm{}, named<N, C, H, W>(x), dy, r), doctest::Contains("dy axis W has extent 5 but x's axis W has extent 3"),
                         std::invalid_argument);
    xt::xtensor<float, 4> other = xt::ones<float>({2, 5, 3, 3});
    auto r_other = forward(batch_norm{}, named<N, C, H, W>(other));
    xt::xtensor<float, 4> dy_ok = xt::ones<float>({2, 4, 3, 3});
    CHECK_THROWS_WITH_AS(backward(batch_norm{}, named<N, C, H, W>(x), dy_ok, r_other),
                         doctest::Contains("saved rstd axis C has extent 5 but the statistics' axis C has extent 4"), std::invalid_argument);
    xt::xtensor<float, 1> g3 = xt::ones<float>({3});
    CHECK_THROWS_WITH_AS(backward(batch_norm{}, named<N, C, H, W>(x), dy_ok, r, gamma(g3)),
                         doctest::Contains("gamma axis C has extent 3 but the tensor's axis C has extent 4"), std::invalid_argument);
}

TEST_CASE("backward: one and two threads agree on every kernel (rows, planes, columns, grouped, strided)") {
    // above the parallel threshold, so two threads really split the kept indices
    xt::xtensor<float, 4> x = xt::cast<float>(th::randn({8, 12, 24, 24}, 1.5)), dy = xt::cast<float>(th::randn({8, 12, 24, 24}));
    xt::xtensor<float, 4> xh = xt::transpose(x, {0, 2, 3, 1}), dyh = xt::transpose(dy, {0, 2, 3, 1});
    xt::xtensor<float, 1> g = xt::cast<float>(th::randn({12}, 1.0));
    auto agree = [](const auto& one, const auto& two) {
        CHECK(th::rel_err(one.dx, two.dx) < 2e-6);
        CHECK(th::rel_err(one.dgamma, two.dgamma) < 2e-5);
    };
    auto both = [&](auto spec, const auto& xx, const auto& dd, auto names) {
        using S = decltype(spec);
        auto run = [&](int t) {
            return std::apply(
                [&](auto... ax) {
                    auto r = forward(S{}, named<decltype(ax)...>(xx), gamma(g));
                    return backward(S{}, named<decltype(ax)...>(xx), dd, r, gamma(g), threads(t));
                },
                names);
        };
        agree(run(1), run(2));
    };
    both(batch_norm{}, x, dy, std::tuple<N, C, H, W>{});
    both(instance_norm{}, x, dy, std::tuple<N, C, H, W>{});
    both(group_norm<4>{}, x, dy, std::tuple<N, C, H, W>{});
    both(batch_norm{}, xh, dyh, std::tuple<N, H, W, C>{});
    both(instance_norm{}, xh, dyh, std::tuple<N, H, W, C>{});
    both(group_norm<4>{}, xh, dyh, std::tuple<N, H, W, C>{});
    auto strided = xt::view(x, xt::all(), xt::all(), xt::range(0, 24, 2), xt::all());
    auto strided_dy = xt::view(dy, xt::all(), xt::all(), xt::range(0, 24, 2), xt::all());
    both(instance_norm{}, strided, strided_dy, std::tuple<N, C, H, W>{});
    xt::xtensor<float, 3> s = xt::reshape_view(x, {96, 24, 24}), sdy = xt::reshape_view(dy, {96, 24, 24});
    xt::xtensor<float, 1> gd = xt::cast<float>(th::randn({24}, 1.0));
    auto r1 = backward(layer_norm{}, named<B, T, D>(s), sdy, forward(layer_norm{}, named<B, T, D>(s), gamma(gd)), gamma(gd), threads(1));
    auto r2 = backward(layer_norm{}, named<B, T, D>(s), sdy, forward(layer_norm{}, named<B, T, D>(s), gamma(gd)), gamma(gd), threads(2));
    agree(r1, r2);
    CHECK(th::rel_err(r1.dbeta, r2.dbeta) < 2e-5);
}

TEST_CASE("backward on short planes in wide rows (blocks of channels) matches the plane-by-plane kernel") {
    // BatchNorm on NCHW with 7x7 planes runs blocks of channels; the same data seen through a
    // view whose rows are padded (W stride 8) runs plane by plane, a kernel the tests above check
    const xt::xarray<double> xd = th::randn({9, 97, 7, 8}, 0.5, 2.0), dyd = th::randn({9, 97, 7, 8});
    xt::xtensor<float, 4> xp = xt::cast<float>(xd), dyp = xt::cast<float>(dyd);
    auto xv = xt::view(xp, xt::all(), xt::all(), xt::all(), xt::range(0, 7));
    auto dyv = xt::view(dyp, xt::all(), xt::all(), xt::all(), xt::range(0, 7));
    xt::xtensor<float, 4> x = xv, dy = dyv;
    xt::xtensor<float, 1> g = xt::cast<float>(th::randn({97}, 1.0, 0.5)), b = xt::cast<float>(th::randn({97}));
    for (int t : {1, 2}) {
        CAPTURE(t);
        auto r = forward(batch_norm{}, named<N, C, H, W>(x), gamma(g), beta(b));
        auto blocks = backward(batch_norm{}, named<N, C, H, W>(x), dy, r, gamma(g), threads(t));
        auto planes = backward(batch_norm{}, named<N, C, H, W>(xv), dyv, r, gamma(g), threads(t));
        CHECK(th::rel_err(blocks.dx, planes.dx) < 2e-6);
        CHECK(th::rel_err(blocks.dgamma, planes.dgamma) < 2e-6);
        CHECK(th::rel_err(blocks.dbeta, planes.dbeta) < 2e-6);
        // evaluation: the running statistics are constants
        xt::xtensor<float, 1> rm = xt::cast<float>(th::randn({97}, 0.5)), rv = xt::cast<float>(th::randn({97}, 3.0, 0.5));
        auto re = forward(batch_norm{}, named<N, C, H, W>(x), gamma(g), beta(b), running(rm, rv), mode::eval);
        auto eb = backward(batch_norm{}, named<N, C, H, W>(x), dy, re, gamma(g), mode::eval, threads(t));
        auto ep = backward(batch_norm{}, named<N, C, H, W>(xv), dyv, re, gamma(g), mode::eval, threads(t));
        CHECK(th::rel_err(eb.dx, ep.dx) < 2e-6);
        CHECK(th::rel_err(eb.dgamma, ep.dgamma) < 2e-6);
    }
}

TEST_CASE("flat runs' dx as one affine map per lane: a * dy + b * (x - mh) + c is the dx formula, low part of the mean included") {
    // dx = (dy * gw - c1 - xhat * c2) * rs with xhat = ((x - mh) - ml) * rs, for lanes whose mean
    // has a low part ml large enough to matter, and for evaluation (c1 = c2 = 0)
    struct lane {
        double mh, ml, rs, c1, c2, gw;
    };
    for (const lane l : {lane{1e4, 4.8e-4, 2.0, 0.3, 0.75, 1.5}, lane{-3.0, -1.1e-7, 0.6, -0.2, 1.3, 0.8}, lane{0.5, 0.0, 1.7, 0.0, 0.0, 1.2}}) {
        const engine::detail::dx_terms<double> t(l.mh, l.ml, l.rs, l.c1, l.c2, l.gw);
        for (const double x : {l.mh - 2.5, l.mh, l.mh + 0.125, l.mh + 3.0})
            for (const double dy : {-1.0, 0.0, 0.7}) {
                CAPTURE(x);
                CAPTURE(dy);
                const double xhat = ((x - l.mh) - l.ml) * l.rs, want = (dy * l.gw - l.c1 - xhat * l.c2) * l.rs;
                CHECK(std::abs(t.a * dy + t.b * (x - t.mh) + t.c - want) < 1e-12 * (1 + std::abs(want)));
            }
    }
}

TEST_CASE("backward in float keeps 2e-5 on data at 1e4 + N(0,1) on every kernel (saved means are rounded)") {
    // the float pass against the same pass in double; the double pass is checked against PyTorch
    // and finite differences above. Blocks of channels, runs of a group, columns (one and two
    // threads: the split path), grouped columns.
    const xt::xarray<double> xd = th::randn({6, 40, 11, 13}, 1e4), dyd = th::randn({6, 40, 11, 13});
    const xt::xarray<double> gd = th::randn({40}, 1.0);
    xt::xtensor<float, 4> x = xt::cast<float>(xd), dy = xt::cast<float>(dyd);
    xt::xtensor<double, 4> x64 = xt::cast<double>(x), dy64 = xt::cast<double>(dy);  // the same values
    xt::xtensor<float, 1> g = xt::cast<float>(gd);
    xt::xtensor<double, 1> g64 = xt::cast<double>(g);
    auto check = [&](auto spec, auto names, auto perm, int t) {
        using S = decltype(spec);
        CAPTURE(t);
        std::apply(
            [&](auto... ax) {
                xt::xtensor<float, 4> xx = xt::transpose(x, perm), dd = xt::transpose(dy, perm);
                xt::xtensor<double, 4> xx64 = xt::transpose(x64, perm), dd64 = xt::transpose(dy64, perm);
                auto r = forward(S{}, named<decltype(ax)...>(xx), gamma(g));
                auto r64 = forward(S{}, named<decltype(ax)...>(xx64), gamma(g64));
                auto b = backward(S{}, named<decltype(ax)...>(xx), dd, r, gamma(g), threads(t));
                auto b64 = backward(S{}, named<decltype(ax)...>(xx64), dd64, r64, gamma(g64), threads(t));
                CHECK(th::rel_err(b.dx, b64.dx) < 2e-5);
                CHECK(th::rel_err(b.dgamma, b64.dgamma) < 2e-5);
                CHECK(th::rel_err(b.dbeta, b64.dbeta) < 2e-5);
            },
            names);
    };
    const std::vector<std::size_t> nchw{0, 1, 2, 3}, nhwc{0, 2, 3, 1};
    for (int t : {1, 2}) {
        check(batch_norm{}, std::tuple<N, C, H, W>{}, nchw, t);     // blocks of channels (143-value planes)
        check(batch_norm{}, std::tuple<N, H, W, C>{}, nhwc, t);     // columns (split rows with 2)
        check(group_norm<8>{}, std::tuple<N, H, W, C>{}, nhwc, t);  // grouped columns
        check(group_norm<8>{}, std::tuple<N, C, H, W>{}, nchw, t);  // runs of a group (gamma per run)
        check(instance_norm{}, std::tuple<N, H, W, C>{}, nhwc, t);  // columns per sample
    }
}

TEST_CASE("backward in float keeps 2e-5 on data at 1e4 + N(0,1) in LayerNorm's blocks of rows (gamma along the row)") {
    // the sums are taken about the saved (rounded) means and shifted to the exact ones after:
    // sum gy * xhat and, per element, dgamma. 11 rows: blocks of 4 and a partial one; 37 and 301
    // values: whole vectors and a masked tail
    for (std::size_t d : {37, 301}) {
        CAPTURE(d);
        const xt::xarray<double> xd = th::randn({11, d}, 1e4), dyd = th::randn({11, d}), gd = th::randn({d}, 1.0);
        xt::xtensor<float, 2> x = xt::cast<float>(xd), dy = xt::cast<float>(dyd);
        xt::xtensor<double, 2> x64 = xt::cast<double>(x), dy64 = xt::cast<double>(dy);
        xt::xtensor<float, 1> g = xt::cast<float>(gd), bt = xt::zeros<float>({d});
        xt::xtensor<double, 1> g64 = xt::cast<double>(g), bt64 = xt::zeros<double>({d});
        auto r = forward(layer_norm{}, named<T, D>(x), gamma(g), beta(bt));
        auto r64 = forward(layer_norm{}, named<T, D>(x64), gamma(g64), beta(bt64));
        auto b = backward(layer_norm{}, named<T, D>(x), dy, r, gamma(g));
        auto b64 = backward(layer_norm{}, named<T, D>(x64), dy64, r64, gamma(g64));
        CHECK(th::rel_err(b.dx, b64.dx) < 2e-5);
        CHECK(th::rel_err(b.dgamma, b64.dgamma) < 2e-5);
        CHECK(th::rel_err(b.dbeta, b64.dbeta) < 2e-5);
    }
}

TEST_CASE("LayerNorm's rows of dx give the same values swept down as up; the direction keeps loads off recent stores") {
    // the dx sweep runs down when the store to dx that a load of x or dy would wait on (one at
    // the same address modulo 4 KiB) lies nearer behind it going up than going down; every value
    // must be the same either way, bit for bit. 11 rows: blocks of 4 and a partial one; 1024 and
    // 1031 values: with and without a masked tail
    using engine::detail::sweep_down;
    for (std::size_t d : {1024, 1031}) {
        CAPTURE(d);
        const std::size_t n = 11 * d;
        xt::xtensor<float, 2> x = xt::cast<float>(xt::reshape_view(th::randn({n}, 0.5, 2.0), std::array<std::size_t, 2>{11, d}));
        xt::xtensor<float, 1> g = xt::cast<float>(th::randn({d}, 1.0, 0.5)), bt = xt::zeros<float>({d});
        auto r = forward(layer_norm{}, named<T, D>(x), gamma(g), beta(bt));
        // buffers placed `past` bytes past x's page offset
        auto at = [&](std::vector<float>& buf, std::size_t past) {
            buf.resize(n + 1024);
            float* p = th::placed(buf, 4096, reinterpret_cast<std::uintptr_t>(x.data()) + past);
            return xt::adapt(p, n, xt::no_ownership(), std::array<std::size_t, 2>{11, d});
        };
        std::vector<float> dy_buf, down_buf, dy_down_buf, up_buf;
        auto dy = at(dy_buf, 2048);
        dy = xt::cast<float>(xt::reshape_view(th::randn({n}), std::array<std::size_t, 2>{11, d}));
        auto dx_down = at(down_buf, 96);        // 96 bytes past x: down
        auto dx_dy_down = at(dy_down_buf, 2088);  // 40 bytes past dy (2088 past x): down, for dy's sake
        auto dx_up = at(up_buf, 4000);          // 96 bytes before x: up
        CHECK(sweep_down(x.data(), dy.data(), dx_down.data()));
        CHECK(sweep_down(x.data(), dy.data(), dx_dy_down.data()));
        CHECK_FALSE(sweep_down(x.data(), dy.data(), dx_up.data()));
        auto bd = backward(layer_norm{}, named<T, D>(x), dy, r, gamma(g), out(dx_down));
        auto bdd = backward(layer_norm{}, named<T, D>(x), dy, r, gamma(g), out(dx_dy_down));
        auto bu = backward(layer_norm{}, named<T, D>(x), dy, r, gamma(g), out(dx_up));
        CHECK(dx_down == dx_up);
        CHECK(dx_dy_down == dx_up);
        CHECK(bd.dgamma == bu.dgamma);
        CHECK(bd.dbeta == bu.dbeta);
        CHECK(bdd.dgamma == bu.dgamma);
        const auto b = backward(layer_norm{}, named<T, D>(x), dy, r, gamma(g));  // into its own dx
        CHECK(th::rel_err(dx_down, b.dx) < 1e-6);
    }
}

namespace {
// BatchNorm on each layout, for the out-of-cache test
struct streamed_nhwc {
    static std::array<std::size_t, 4> shape(std::size_t n, std::size_t c) { return {n, 1, 1, c}; }
    static auto forward(auto& x, auto& g, auto& b, auto& y) { return normspec::forward(batch_norm{}, named<N, H, W, C>(x), gamma(g), beta(b), out(y)); }
    static void backward(auto& x, auto& dy, auto& r, auto& g, auto& dx) { normspec::backward(batch_norm{}, named<N, H, W, C>(x), dy, r, gamma(g), out(dx)); }
};
template <std::size_t PH, std::size_t PW>
struct streamed_nchw {
    static std::array<std::size_t, 4> shape(std::size_t n, std::size_t c) { return {n, c, PH, PW}; }
    static auto forward(auto& x, auto& g, auto& b, auto& y) { return normspec::forward(batch_norm{}, named<N, C, H, W>(x), gamma(g), beta(b), out(y)); }
    static void backward(auto& x, auto& dy, auto& r, auto& g, auto& dx) { normspec::backward(batch_norm{}, named<N, C, H, W>(x), dy, r, gamma(g), out(dx)); }
};
}  // namespace

TEST_CASE("backward: dx streams once x, dy and dx together pass 3/8 of the last-level cache") {
    // 1x320x64x64 in float (15.7 MiB of x, dy and dx) streams on this machine's 32 MiB L3;
    // 1x320x56x56 (12 MiB) stays cached
    const double llc = engine::detail::llc_bytes();
    CHECK(engine::detail::stream_dx(0.38 * llc));
    CHECK_FALSE(engine::detail::stream_dx(0.37 * llc));
}

TEST_CASE("channels-last backward on rows of a few vectors (sums and dx coefficients in registers): the float64 reference") {
    // BatchNorm, InstanceNorm and GroupNorm on NHWC at channel counts around the vector
    // boundaries (1 to 4 vectors of AVX-512 or AVX2 take the kernels that hold a row's sums and
    // coefficients in registers, a partial last vector too; 65 and wider rows take their sums a
    // slab of up to 4 vectors at a time, 129 and 200 with a partial slab and vector), 165 rows (blocks of
    // 64 rows and a shorter one), data at 1e4 + N(0,1): dx, dgamma and dbeta against the formulas
    // in double, per statistic (BatchNorm: channel c; InstanceNorm: sample and channel;
    // GroupNorm: sample and group), float and double, one and two threads. x and dy end at an
    // unreadable page.
    auto check = [](auto spec, auto type, std::size_t nc, std::size_t groups) {
        using S = decltype(spec);
        using E = decltype(type);
        CAPTURE(nc);
        CAPTURE(sizeof(E));
        const std::size_t ns = 3, rows = 5 * 11, total = ns * rows * nc;
        const std::array<std::size_t, 4> shape{ns, 5, 11, nc};
        // x and dy end where an unreadable page begins: the last row's partial vector is masked
        th::guarded<E> xg(total), dyg(total);
        auto x = xt::adapt(xg.data, total, xt::no_ownership(), shape);
        auto dy = xt::adapt(dyg.data, total, xt::no_ownership(), shape);
        x = xt::cast<E>(xt::reshape_view(th::randn({total}, 1e4, 1.0), shape));
        dy = xt::cast<E>(xt::reshape_view(th::randn({total}), shape));
        xt::xtensor<E, 1> g = xt::cast<E>(th::randn({nc}, 1.0, 0.5)), b = xt::cast<E>(th::randn({nc}, 0.0, 0.5));
        const bool batch = std::is_same_v<S, batch_norm>, instance = std::is_same_v<S, instance_norm>;
        const std::size_t per_stat = batch ? 1 : instance ? 1 : nc / groups;  // channels per statistic
        const std::size_t stats_per_sample = nc / per_stat;
        auto stat_of = [&](std::size_t i) {
            const std::size_t c = i % nc, n = i / (rows * nc);
            return batch ? c : n * stats_per_sample + c / per_stat;
        };
        const std::size_t nstat = batch ? nc : ns * stats_per_sample;
        const double count = double(total) / double(nstat);
        std::vector<double> mean(nstat, 0.0), var(nstat, 0.0), mgy(nstat, 0.0), mgx(nstat, 0.0), dg(nc, 0.0), db(nc, 0.0);
        for (std::size_t i = 0; i < total; ++i) mean[stat_of(i)] += double(x.data()[i]) / count;
        for (std::size_t i = 0; i < total; ++i) var[stat_of(i)] += std::pow(double(x.data()[i]) - mean[stat_of(i)], 2) / count;
        auto xhat = [&](std::size_t i) { return (double(x.data()[i]) - mean[stat_of(i)]) / std::sqrt(var[stat_of(i)] + 1e-5); };
        for (std::size_t i = 0; i < total; ++i) {
            const double gy = double(dy.data()[i]) * double(g(i % nc));
            mgy[stat_of(i)] += gy / count, mgx[stat_of(i)] += gy * xhat(i) / count;
            dg[i % nc] += double(dy.data()[i]) * xhat(i), db[i % nc] += double(dy.data()[i]);
        }
        xt::xtensor<double, 4> want_dx = xt::zeros<double>(shape);
        for (std::size_t i = 0; i < total; ++i) {
            const std::size_t s = stat_of(i);
            want_dx.data()[i] = (double(dy.data()[i]) * double(g(i % nc)) - mgy[s] - xhat(i) * mgx[s]) / std::sqrt(var[s] + 1e-5);
        }
        const double tol = std::is_same_v<E, float> ? 2e-6 : 1e-10;
        for (int t : {1, 2}) {
            CAPTURE(t);
            auto run = [&](auto&&... kw) {
                const auto r = forward(S{}, named<N, H, W, C>(x), gamma(g), beta(b), threads(t), kw...);
                return backward(S{}, named<N, H, W, C>(x), dy, r, gamma(g), threads(t));
            };
            const auto grad = [&] {
                if constexpr (S::runtime_groups) return run(num_groups(long(groups)));
                else return run();
            }();
            CHECK(th::rel_err(grad.dx, want_dx) < tol);
            CHECK(th::rel_err(grad.dgamma, xt::adapt(dg)) < 10 * tol);
            CHECK(th::rel_err(grad.dbeta, xt::adapt(db)) < 10 * tol);
        }
    };
    for (std::size_t nc : {1, 5, 8, 9, 16, 17, 24, 31, 32, 33, 48, 63, 64, 65, 80, 129, 200}) {
        check(batch_norm{}, float{}, nc, 0);
        check(batch_norm{}, double{}, nc, 0);
        check(instance_norm{}, float{}, nc, 0);
        if (nc % 4 == 0) check(group_norm<>{}, float{}, nc, nc / 4);  // groups of 4 channels
    }
    check(group_norm<>{}, double{}, 32, 8);
}

TEST_CASE("out of cache: the streaming-store kernels (aligning heads, flat columns, planes) give the same values") {
    // sized from the last-level cache the engine reads, so that x and y (and dy, dx) exceed it and
    // the streaming paths run; y and dx start one float past a vector boundary, so the aligning
    // heads run too. BatchNorm on NHWC: forward and backward normalize one flat run of columns;
    // on NCHW with 16x17 planes, backward streams dx plane by plane; with 7x7 planes of 97
    // channels, each sample's span of each thread's channels in memory order, a vector of dx that
    // spans two planes blending their coefficients. On NHWC with 333 channels the forward's column
    // moments go row by row (columns_by_rows), the last vector of each row a partial one.
    auto check = [](auto names, std::size_t nc, std::size_t plane, auto channel_of, std::uintptr_t offset = sizeof(float)) {
        using Names = decltype(names);
        const std::size_t per = nc * plane;
        const std::size_t samples = std::size_t(1.2 * engine::detail::llc_bytes() / double(2 * sizeof(float) * per)) + 1;
        const std::size_t total = samples * per, count = samples * plane;
        const auto shape = Names::shape(samples, nc);
        xt::xtensor<float, 4> x = xt::cast<float>(xt::reshape_view(th::randn({total}, 1.0), shape));
        xt::xtensor<float, 4> dy = xt::cast<float>(xt::reshape_view(th::randn({total}), shape));
        xt::xtensor<float, 1> g = xt::cast<float>(th::randn({nc}, 1.0, 0.5)), b = xt::cast<float>(th::randn({nc}, 0.0, 0.5));
        std::vector<float> ybuf(total + 64), dxbuf(total + 64);
        float* yp = th::placed(ybuf, 64, offset);
        float* dxp = th::placed(dxbuf, 64, offset);
        auto y = xt::adapt(yp, total, xt::no_ownership(), shape);
        auto dx = xt::adapt(dxp, total, xt::no_ownership(), shape);
        auto r = Names::forward(x, g, b, y);
        Names::backward(x, dy, r, g, dx);
        // the same in double, channel by channel
        std::vector<double> mean(nc, 0.0), var(nc, 0.0), mgy(nc, 0.0), mgx(nc, 0.0);
        for (std::size_t i = 0; i < total; ++i) mean[channel_of(i)] += double(x.data()[i]) / double(count);
        for (std::size_t i = 0; i < total; ++i) var[channel_of(i)] += std::pow(double(x.data()[i]) - mean[channel_of(i)], 2) / double(count);
        auto rstd = [&](std::size_t c) { return 1.0 / std::sqrt(var[c] + 1e-5); };
        for (std::size_t i = 0; i < total; ++i) {
            const std::size_t c = channel_of(i);
            const double gy = double(dy.data()[i]) * double(g(c)), xh = (double(x.data()[i]) - mean[c]) * rstd(c);
            mgy[c] += gy / double(count), mgx[c] += gy * xh / double(count);
        }
        double ey = 0, sy = 1, edx = 0, sdx = 1;
        for (std::size_t i = 0; i < total; ++i) {
            const std::size_t c = channel_of(i);
            const double xh = (double(x.data()[i]) - mean[c]) * rstd(c);
            const double wy = xh * double(g(c)) + double(b(c));
            const double wdx = rstd(c) * (double(dy.data()[i]) * double(g(c)) - mgy[c] - xh * mgx[c]);
            ey = std::max(ey, std::abs(double(yp[i]) - wy)), sy = std::max(sy, std::abs(wy));
            edx = std::max(edx, std::abs(double(dxp[i]) - wdx)), sdx = std::max(sdx, std::abs(wdx));
        }
        CHECK(ey / sy < 2e-6);
        CHECK(edx / sdx < 2e-6);
    };
    SUBCASE("NHWC") { check(streamed_nhwc{}, 64, 1, [](std::size_t i) { return i % 64; }); }
    SUBCASE("NHWC, y and dx on a vector boundary: rows of a few vectors held in registers") {
        check(streamed_nhwc{}, 16, 1, [](std::size_t i) { return i % 16; }, 0);
        check(streamed_nhwc{}, 64, 1, [](std::size_t i) { return i % 64; }, 0);
    }
    SUBCASE("NHWC, 333 channels: column moments row by row") {
        CHECK(engine::detail::columns_by_rows<float>(engine::detail::llc_bytes(), 333, false));
        check(streamed_nhwc{}, 333, 1, [](std::size_t i) { return i % 333; });
    }
    SUBCASE("NCHW") { check(streamed_nchw<16, 17>{}, 4, 16 * 17, [](std::size_t i) { return (i / (16 * 17)) % 4; }); }
    SUBCASE("NCHW, 7x7 planes of 97 channels: blocks of channels") {
        check(streamed_nchw<7, 7>{}, 97, 49, [](std::size_t i) { return (i / 49) % 97; });
    }
}

TEST_CASE("out of cache, channels-last InstanceNorm and GroupNorm backward pipelines its samples: same values as on NCHW") {
    // x, dy and dx together past half the last-level cache (dx streams), four samples or more per
    // thread: the previous sample's dx over a block of rows while the same block of the next
    // sample is asked for, whose sums follow. Checked against the same norm on the NCHW transpose
    // (the rows kernel, a kernel of its own): dx, dgamma and dbeta, at 1e4 + N(0,1) with a sorted
    // ramp and outliers first in a later sample, 37 channels (rows start anywhere in a vector)
    // and 333 (groups of 9), dx one value past a vector boundary; float and double. With three
    // samples (`three`), at two threads the threads split every sample's rows and pipeline the
    // samples: each one's dx over its rows of the previous sample with its sums over the next's.
    auto check = [](auto spec, auto type, std::array<std::size_t, 3> hwc, bool three = false, bool aligned = false) {
        using S = decltype(spec);
        using E = decltype(type);
        if (three) hwc[0] = std::size_t(0.07 * engine::detail::llc_bytes() / double(sizeof(E) * hwc[1] * hwc[2])) + 1;
        const std::size_t per = hwc[0] * hwc[1] * hwc[2];
        const std::size_t samples = three ? 3 : std::size_t(0.3 * engine::detail::llc_bytes() / double(sizeof(E) * per)) | 1;
        const std::size_t total = samples * per, later = std::min<std::size_t>(3, samples - 1);
        CAPTURE(samples);
        CAPTURE(sizeof(E));
        REQUIRE(3.0 * double(total * sizeof(E)) > 0.5 * engine::detail::llc_bytes());
        REQUIRE((three || samples >= 4));
        const std::array<std::size_t, 4> shape{samples, hwc[0], hwc[1], hwc[2]};
        xt::xtensor<E, 4> xh = xt::cast<E>(xt::reshape_view(th::randn({total}, 1e4, 1.0), shape));
        xt::xtensor<E, 4> dyh = xt::cast<E>(xt::reshape_view(th::randn({total}), shape));
        for (std::size_t i = 0; i < hwc[0] * hwc[1]; ++i) xh(later, i / hwc[1], i % hwc[1], 0) = E(1e4 + 0.01 * double(i));
        for (std::size_t i = 64; i < 104; ++i) xh(later, i / hwc[1], i % hwc[1], hwc[2] - 1) += E(50);
        xt::xtensor<E, 1> g = xt::cast<E>(th::randn({hwc[2]}, 1.0, 0.5)), b = xt::cast<E>(th::randn({hwc[2]}, 0.0, 0.5));
        xt::xtensor<E, 4> x = xt::transpose(xh, {0, 3, 1, 2}), dy = xt::transpose(dyh, {0, 3, 1, 2});
        std::vector<E> dxbuf(total + 64);
        E* dxp = th::placed(dxbuf, 64, aligned ? 0 : sizeof(E), 16);
        auto dxh = xt::adapt(dxp, total, xt::no_ownership(), shape);
        const double tol = std::is_same_v<E, float> ? 2e-6 : 1e-10;
        for (int t : {1, 2}) {
            CAPTURE(t);
            std::fill(dxbuf.begin(), dxbuf.end(), E(-7));
            const auto rh = forward(S{}, named<N, H, W, C>(xh), gamma(g), beta(b), threads(t));
            const auto gh = backward(S{}, named<N, H, W, C>(xh), dyh, rh, gamma(g), out(dxh), threads(t));
            const auto r = forward(S{}, named<N, C, H, W>(x), gamma(g), beta(b), threads(t));
            const auto gr = backward(S{}, named<N, C, H, W>(x), dy, r, gamma(g), threads(t));
            CHECK(th::rel_err(dxh, xt::transpose(gr.dx, {0, 2, 3, 1})) < tol);
            CHECK(th::rel_err(gh.dgamma, gr.dgamma) < 10 * tol);
            CHECK(th::rel_err(gh.dbeta, gr.dbeta) < 10 * tol);
            CHECK(dxbuf.front() == E(-7));  // nothing written before dx or past its end
            CHECK(dxbuf.back() == E(-7));
        }
    };
    check(instance_norm{}, float{}, {29, 31, 37});
    check(instance_norm{}, double{}, {29, 31, 37});
    check(group_norm<37>{}, float{}, {13, 11, 333});
    check(instance_norm{}, float{}, {0, 31, 37}, true);
    // dx on a vector boundary, 16 channels: rows of one or two vectors, their coefficients in registers
    check(instance_norm{}, float{}, {29, 31, 16}, false, true);
    check(instance_norm{}, double{}, {29, 31, 16}, false, true);
    check(group_norm<37>{}, float{}, {0, 11, 333}, true);
}

namespace {
/// dx, dgamma and dbeta in float64 of a norm over total values whose value i has statistic stat(i)
/// and parameter param(i) (dgamma and dbeta nparam long), from the same float values
struct flat_gradients {
    std::vector<double> dx, dg, db;
};
template <class E, class Stat, class Param>
flat_gradients reference_backward(const E* x, const E* dy, const E* g, std::size_t total, std::size_t nstat, std::size_t nparam, bool rms,
                                  Stat&& stat, Param&& param) {
    std::vector<double> count(nstat), mean(nstat), var(nstat), mgy(nstat), mgx(nstat), xh(total);
    for (std::size_t i = 0; i < total; ++i) count[stat(i)] += 1, mean[stat(i)] += rms ? 0.0 : double(x[i]);
    for (std::size_t s = 0; s < nstat; ++s) mean[s] /= count[s];
    for (std::size_t i = 0; i < total; ++i) var[stat(i)] += std::pow(double(x[i]) - mean[stat(i)], 2) / count[stat(i)];
    flat_gradients r{std::vector<double>(total), std::vector<double>(nparam), std::vector<double>(nparam)};
    for (std::size_t i = 0; i < total; ++i) {
        const std::size_t s = stat(i), p = param(i);
        xh[i] = (double(x[i]) - mean[s]) / std::sqrt(var[s] + 1e-5);
        const double gy = double(dy[i]) * double(g[p]);
        mgy[s] += gy / count[s], mgx[s] += gy * xh[i] / count[s];
        r.dg[p] += double(dy[i]) * xh[i], r.db[p] += double(dy[i]);
    }
    for (std::size_t i = 0; i < total; ++i) {
        const std::size_t s = stat(i);
        r.dx[i] = (double(dy[i]) * double(g[param(i)]) - (rms ? 0.0 : mgy[s]) - xh[i] * mgx[s]) / std::sqrt(var[s] + 1e-5);
    }
    return r;
}
/// the largest difference between got[0, n) and want over the largest value of want
template <class E>
double flat_err(const E* got, const std::vector<double>& want) {
    double e = 0, m = 0;
    for (std::size_t i = 0; i < want.size(); ++i) e = std::max(e, std::abs(double(got[i]) - want[i])), m = std::max(m, std::abs(want[i]));
    return e / std::max(m, 1e-300);
}
/// run(dx, t) (forward, then backward into dx, returning backward's result) at one and two threads,
/// dx placed one value past a vector boundary with sentinels around it; dx, dgamma and (with_beta)
/// dbeta against want
template <class E, class Run>
void check_streamed_backward(std::size_t total, const flat_gradients& want, bool with_beta, Run&& run) {
    std::vector<E> buf(total + 64);
    E* dx = th::placed(buf, 64, sizeof(E));
    const double tol = std::is_same_v<E, float> ? 1e-6 : 1e-10;  // measured: 2.4e-7 and 1.7e-11
    for (int t : {1, 2}) {
        CAPTURE(t);
        std::fill(buf.begin(), buf.end(), E(-7));
        const auto got = run(dx, t);
        CHECK(flat_err(dx, want.dx) < tol);
        CHECK(flat_err(got.dgamma.data(), want.dg) < 2 * tol);
        if (with_beta) CHECK(flat_err(got.dbeta.data(), want.db) < 2 * tol);
        CHECK(buf.front() == E(-7));  // nothing written before dx or past its end
        CHECK(buf.back() == E(-7));
    }
}
}  // namespace

TEST_CASE("out of cache, LayerNorm-type rows backward pipelines its rows a chunk at a time: the float64 reference") {
    // Rows with gamma along them whose x, dy and dx together pass half the last-level cache (dx
    // streams), four rows or more per thread: the previous row's dx over a chunk (with its dgamma
    // and dbeta) while the same chunk of the next row is asked for, whose sums follow. Against
    // dx, dgamma and dbeta in float64 from the same values: rows of 1031 values (each row at its
    // own offset from a vector boundary) and of 4100 (two whole chunks and a short one), values at
    // 1e4 + N(0,1) with a sorted ramp and outliers first in later rows, dx one value past a vector
    // boundary with sentinels around it; LayerNorm in float and double, RMSNorm, a centred norm
    // with gamma only; one and two threads.
    auto check = [](auto spec, auto type, std::size_t d) {
        using S = decltype(spec);
        using E = decltype(type);
        const std::size_t rows = std::size_t(0.3 * engine::detail::llc_bytes() / double(sizeof(E) * d)) | 1, total = rows * d;
        CAPTURE(d);
        CAPTURE(sizeof(E));
        REQUIRE(3.0 * double(total * sizeof(E)) > 0.5 * engine::detail::llc_bytes());
        REQUIRE(rows >= 8);
        const std::array<std::size_t, 2> shape{rows, d};
        xt::xtensor<E, 2> x = xt::cast<E>(xt::reshape_view(th::randn({total}, 1e4, 1.0), shape));
        xt::xtensor<E, 2> dy = xt::cast<E>(xt::reshape_view(th::randn({total}), shape));
        for (std::size_t i = 0; i < d; ++i) x(5, i) = E(1e4 + 0.01 * double(i));  // sorted ramp
        for (std::size_t i = 0; i < 40; ++i) x(6, i) += E(50);                       // outliers first
        xt::xtensor<E, 1> g = xt::cast<E>(th::randn({d}, 1.0, 0.5)), b = xt::cast<E>(th::randn({d}, 0.0, 0.5));
        const auto want = reference_backward(x.data(), dy.data(), g.data(), total, rows, d, S::is_rms, [d](std::size_t i) { return i / d; },
                                             [d](std::size_t i) { return i % d; });
        check_streamed_backward<E>(total, want, S::has_beta, [&](E* dxp, int t) {
            auto dx = xt::adapt(dxp, total, xt::no_ownership(), shape);
            const auto fw = [&] {
                if constexpr (S::has_beta)
                    return forward(S{}, named<T, D>(x), gamma(g), beta(b), threads(t));
                else
                    return forward(S{}, named<T, D>(x), gamma(g), threads(t));
            }();
            return backward(S{}, named<T, D>(x), dy, fw, gamma(g), out(dx), threads(t));
        });
    };
    check(layer_norm{}, float{}, 1031);
    check(layer_norm{}, float{}, 4100);
    check(layer_norm{}, double{}, 4100);
    check(rms_norm{}, float{}, 4100);
    check(norm<reduce<D>, scale<D>>{}, float{}, 1031);
}

TEST_CASE("out of cache, planes backward pipelines its kept indices a chunk at a time: the float64 reference") {
    // BatchNorm, InstanceNorm and GroupNorm on NCHW, whose runs (planes) carry one gamma each, with
    // x, dy and dx together past half the last-level cache (dx streams) and two kept indices or
    // more per thread: the previous kept index's dx over a chunk of each run while the same chunk
    // of this one's is asked for, whose sums follow. Against dx, dgamma and dbeta in float64 from
    // the same values: planes of 17x19 (323 values: runs start anywhere in a vector) and 47x53
    // (2491: a whole chunk and a short one), values at 1e4 + N(0,1) with a sorted ramp and
    // outliers first in a later plane, dx one value past a vector boundary with sentinels around
    // it; float and double; one and two threads.
    auto check = [](auto spec, auto type, std::size_t c, std::size_t h, std::size_t w, std::size_t groups) {
        using S = decltype(spec);
        using E = decltype(type);
        const std::size_t plane = h * w, per = c * plane;
        const std::size_t n = std::size_t(0.3 * engine::detail::llc_bytes() / double(sizeof(E) * per)) | 1, total = n * per;
        CAPTURE(plane);
        CAPTURE(sizeof(E));
        REQUIRE(3.0 * double(total * sizeof(E)) > 0.5 * engine::detail::llc_bytes());
        const std::array<std::size_t, 4> shape{n, c, h, w};
        xt::xtensor<E, 4> x = xt::cast<E>(xt::reshape_view(th::randn({total}, 1e4, 1.0), shape));
        xt::xtensor<E, 4> dy = xt::cast<E>(xt::reshape_view(th::randn({total}), shape));
        for (std::size_t i = 0; i < plane; ++i) x(1, 2, i / w, i % w) = E(1e4 + 0.01 * double(i));  // sorted ramp
        for (std::size_t i = 0; i < 40; ++i) x(2, 1, i / w, i % w) += E(50);                         // outliers first
        xt::xtensor<E, 1> g = xt::cast<E>(th::randn({c}, 1.0, 0.5)), b = xt::cast<E>(th::randn({c}, 0.0, 0.5));
        auto channel = [=](std::size_t i) { return (i / plane) % c; };
        const auto want = [&] {
            if constexpr (std::is_same_v<S, batch_norm>)
                return reference_backward(x.data(), dy.data(), g.data(), total, c, c, false, channel, channel);
            else if constexpr (std::is_same_v<S, instance_norm>)
                return reference_backward(x.data(), dy.data(), g.data(), total, n * c, c, false, [=](std::size_t i) { return i / plane; }, channel);
            else
                return reference_backward(x.data(), dy.data(), g.data(), total, n * groups, c, false,
                                          [=](std::size_t i) { return i / (plane * (c / groups)); }, channel);
        }();
        check_streamed_backward<E>(total, want, true, [&](E* dxp, int t) {
            auto dx = xt::adapt(dxp, total, xt::no_ownership(), shape);
            const auto fw = [&] {
                if constexpr (std::is_same_v<S, group_norm<>>)
                    return forward(S{}, named<N, C, H, W>(x), gamma(g), beta(b), num_groups(long(groups)), threads(t));
                else
                    return forward(S{}, named<N, C, H, W>(x), gamma(g), beta(b), threads(t));
            }();
            return backward(S{}, named<N, C, H, W>(x), dy, fw, gamma(g), out(dx), threads(t));
        });
    };
    check(instance_norm{}, float{}, 5, 17, 19, 0);
    check(instance_norm{}, float{}, 3, 47, 53, 0);
    check(instance_norm{}, double{}, 3, 47, 53, 0);
    check(batch_norm{}, float{}, 6, 17, 19, 0);
    check(group_norm<>{}, float{}, 6, 47, 53, 3);
}

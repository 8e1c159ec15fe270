// Behaviour beyond "y matches": training vs evaluation, running statistics (PyTorch's convention),
// outputs into caller-provided tensors and in place, adaptors and expressions as input,
// threads, accuracy on the large-offset input, streaming stores, and a small call's allocations.
#include "helpers.hpp"

#include <xtensor/xadapt.hpp>
#include <xtensor/xfixed.hpp>
#include <xtensor/xmanipulation.hpp>

#include <atomic>
#include <cstdlib>
#include <new>

#ifdef _OPENMP
#include <omp.h>
#endif

using namespace normspec;

namespace {
/// The plan forward() makes for a contiguous float tensor of these axes and extents, and its
/// element count, for asking decide() and explain() what a call would run
struct planned {
    engine::plan p;
    engine::index_t size;
};
template <class Spec>
planned plan_for(const std::vector<std::string_view>& names, const std::vector<engine::index_t>& dims, bool has_params) {
    const auto b = engine::bind(describe<Spec>(), names, dims.data(), int(dims.size()), 0);
    std::vector<float> one(1);
    const auto view = engine::contiguous(one.data(), dims);
    return {engine::make_plan(b, view, view, has_params), view.size()};
}
}  // namespace

TEST_CASE("batch_norm training updates running statistics with momentum and the unbiased variance") {
    xt::xtensor<double, 4> x = th::randn({4, 3, 5, 6}, 1.0, 2.0);
    xt::xtensor<double, 1> rm{0.1, -0.2, 0.3}, rv{1.0, 2.0, 0.5};
    const xt::xtensor<double, 1> rm0 = rm, rv0 = rv;
    const auto want = ref::norm(describe<batch_norm>(), {"N", "C", "H", "W"}, x, {}, {}, 0, 1e-5);
    SUBCASE("default momentum 0.1") {
        auto r = forward(batch_norm{}, named<N, C, H, W>(x), running(rm, rv));
        CHECK(th::rel_err(rm, 0.9 * rm0 + 0.1 * want.mean) < 1e-14);
        CHECK(th::rel_err(rv, 0.9 * rv0 + 0.1 * want.var_unbiased) < 1e-14);
        CHECK(th::rel_err(r.y, want.y) < 1e-12);
    }
    SUBCASE("momentum 0.25") {
        forward(batch_norm{}, named<N, C, H, W>(x), running(rm, rv), momentum(0.25));
        CHECK(th::rel_err(rm, 0.75 * rm0 + 0.25 * want.mean) < 1e-14);
        CHECK(th::rel_err(rv, 0.75 * rv0 + 0.25 * want.var_unbiased) < 1e-14);
    }
    SUBCASE("a view of running statistics is updated in place") {
        xt::xtensor<double, 2> table = xt::zeros<double>({2, 3});
        xt::view(table, 1, xt::all()) = rv0;
        forward(batch_norm{}, named<N, C, H, W>(x), running(rm, xt::view(table, 1, xt::all())));
        CHECK(th::rel_err(xt::view(table, 1, xt::all()), 0.9 * rv0 + 0.1 * want.var_unbiased) < 1e-14);
        CHECK(xt::all(xt::equal(xt::view(table, 0, xt::all()), 0.0)));
    }
}

TEST_CASE("batch_norm evaluation normalizes with the running statistics and leaves them unchanged") {
    xt::xtensor<float, 4> x = xt::cast<float>(th::randn({2, 3, 4, 5}));
    xt::xtensor<float, 1> g{1.5f, -0.5f, 2.0f}, b{0.1f, 0.2f, 0.3f}, rm{0.5f, -1.0f, 0.0f}, rv{4.0f, 0.25f, 1.0f};
    const xt::xtensor<float, 1> rm0 = rm, rv0 = rv;
    auto r = forward(batch_norm{}, named<N, C, H, W>(x), gamma(g), beta(b), running(rm, rv), mode::eval);
    for (std::size_t c = 0; c < 3; ++c) {
        const double rs = 1.0 / std::sqrt(double(rv0(c)) + 1e-5);
        auto yc = xt::view(r.y, xt::all(), c);
        auto xc = xt::view(x, xt::all(), c);
        xt::xarray<double> want = (xt::cast<double>(xc) - double(rm0(c))) * rs * double(g(c)) + double(b(c));
        CHECK(th::rel_err(yc, want) < 2e-6);
        CHECK(r.rstd(c) == doctest::Approx(rs));
    }
    CHECK(rm == rm0);
    CHECK(rv == rv0);
    SUBCASE("evaluation without running statistics is an error") {
        CHECK_THROWS_WITH_AS(forward(batch_norm{}, named<N, C, H, W>(x), mode::eval),
                             doctest::Contains("eval mode of a norm whose statistics cross the batch needs running statistics"),
                             std::invalid_argument);
    }
}

TEST_CASE("evaluation on short planes back to back (BatchNorm NCHW, planes of width to 255 values): one flat run per sample") {
    // a vector of the flat run spans the end of one plane and the start of the next, and blends
    // their coefficients; planes shorter than a vector keep the plane-by-plane loop. In and out
    // of cache (streaming stores, y one float past a vector boundary), one and two threads, with
    // fewer samples than threads (the planes of a sample split), float and double.
    auto check = [](auto zero, std::size_t n, std::size_t c, std::size_t h, std::size_t w, bool offset) {
        using F = decltype(zero);
        const std::size_t bytes = sizeof(F);
        CAPTURE(n);
        CAPTURE(c);
        CAPTURE(h);
        CAPTURE(w);
        CAPTURE(bytes);
        const std::array<std::size_t, 4> shape{n, c, h, w};
        const std::size_t total = n * c * h * w, plane = h * w;
        xt::xtensor<F, 4> x = xt::cast<F>(xt::reshape_view(th::randn({total}, 1.0, 2.0), shape));
        xt::xtensor<F, 1> g = xt::cast<F>(th::randn({c}, 1.0, 0.5)), b = xt::cast<F>(th::randn({c}, 0.0, 0.5));
        xt::xtensor<F, 1> rm = xt::cast<F>(th::randn({c}, 0.0, 1.0)), rv = xt::cast<F>(1.0 + xt::abs(th::randn({c})));
        std::vector<F> ybuf(total + 64, F(-7));
        F* yp = th::placed(ybuf, 64, offset ? sizeof(F) : 0, 1);  // on a 64-byte boundary, or (offset) one value past one
        auto y = xt::adapt(yp, total, xt::no_ownership(), shape);
        for (int t : {1, 2}) {
            CAPTURE(t);
            forward(batch_norm{}, named<N, C, H, W>(x), gamma(g), beta(b), running(rm, rv), mode::eval, out(y), threads(t));
            double err = 0, scale = 1;
            for (std::size_t i = 0; i < total; ++i) {
                const std::size_t k = (i / plane) % c;
                const double want = (double(x.data()[i]) - double(rm(k))) / std::sqrt(double(rv(k)) + 1e-5) * double(g(k)) + double(b(k));
                err = std::max(err, std::abs(double(yp[i]) - want)), scale = std::max(scale, std::abs(want));
            }
            CHECK(err / scale < (sizeof(F) == 4 ? 2e-6 : 1e-13));
            CHECK(yp[-1] == F(-7));  // nothing written before y or past its end
            CHECK(yp[total] == F(-7));
        }
    };
    check(0.0f, 3, 5, 4, 5, false);    // planes of 20: each vector's coefficients from one or two planes
    check(0.0f, 1, 37, 17, 1, true);   // one sample, planes of 17
    check(0.0f, 2, 3, 3, 3, false);    // planes of 9: shorter than a float vector (plane by plane)
    check(0.0, 3, 11, 3, 3, true);     // double: planes of 9
    check(0.0f, 5, 4, 15, 17, true);   // planes of 255
    // out of cache: y streams (plane by plane, it could not: every plane would start and end in
    // lines the streaming stores also write)
    const std::size_t per = 97 * 49, n = std::size_t(1.2 * engine::detail::llc_bytes() / double(2 * sizeof(float) * per)) + 1;
    {
        const auto [p, size] = plan_for<batch_norm>({"N", "C", "H", "W"}, {engine::index_t(n), 97, 7, 7}, true);
        const auto d = engine::decide<float>(p, size, 1, 0, true, false);
        CHECK(d.stream);
        CHECK(engine::explain(p, d).find("runs of every C back to back as one flat run") != std::string::npos);
    }
    check(0.0f, n, 97, 7, 7, true);
    check(0.0f, n, 97, 7, 7, false);
}

TEST_CASE("norms that do not couple the batch run the same path in train and eval") {
    xt::xtensor<float, 3> x = xt::cast<float>(th::randn({3, 4, 9}));
    xt::xtensor<float, 1> g = xt::cast<float>(th::randn({9})), b = xt::cast<float>(th::randn({9}));
    auto train = forward(layer_norm{}, named<B, T, D>(x), gamma(g), beta(b));
    auto eval = forward(layer_norm{}, named<B, T, D>(x), gamma(g), beta(b), mode::eval);
    CHECK(train.y == eval.y);
    CHECK(train.rstd == eval.rstd);
}

TEST_CASE("output into a caller's tensor, of another layout, and in place") {
    xt::xtensor<float, 4> x = xt::cast<float>(th::randn({2, 6, 3, 5}));
    xt::xtensor<float, 1> g = xt::cast<float>(th::randn({6})), b = xt::cast<float>(th::randn({6}));
    auto want = forward(group_norm<2>{}, named<N, C, H, W>(x), gamma(g), beta(b));
    SUBCASE("a preallocated tensor") {
        xt::xtensor<float, 4> y = xt::zeros<float>(x.shape());
        auto saved = forward(group_norm<2>{}, named<N, C, H, W>(x), gamma(g), beta(b), out(y));
        CHECK(y == want.y);
        CHECK(saved.rstd == want.rstd);
    }
    SUBCASE("a transposed view of a channels-last buffer") {
        xt::xtensor<float, 4> nhwc = xt::zeros<float>({2, 3, 5, 6});
        forward(group_norm<2>{}, named<N, C, H, W>(x), gamma(g), beta(b), out(xt::transpose(nhwc, {0, 3, 1, 2})));
        CHECK(th::rel_err(xt::transpose(nhwc, {0, 3, 1, 2}), want.y) < 2e-6);
    }
    SUBCASE("in place") {
        forward(group_norm<2>{}, named<N, C, H, W>(x), gamma(g), beta(b), out(x));
        CHECK(x == want.y);
    }
}

TEST_CASE("parameters: used in place when row-major, copied when strided or of another type") {
    xt::xtensor<double, 4> x = th::randn({2, 3, 4, 5});
    xt::xtensor<double, 3> g = th::randn({3, 4, 5}, 1.0), b = th::randn({3, 4, 5});
    const auto want = forward(layer_norm_cnn{}, named<N, C, H, W>(x), gamma(g), beta(b)).y;
    xt::xtensor<double, 3> g_t = xt::transpose(g, {2, 1, 0});  // (W,H,C) memory: a view back to (C,H,W) is strided
    CHECK(th::rel_err(forward(layer_norm_cnn{}, named<N, C, H, W>(x), gamma(xt::transpose(g_t, {2, 1, 0})), beta(b)).y, want) < 1e-14);
    xt::xtensor<float, 3> g_f = xt::cast<float>(g);
    CHECK(th::rel_err(forward(layer_norm_cnn{}, named<N, C, H, W>(x), gamma(g_f), beta(b)).y, want) < 1e-6);
    xt::xtensor<double, 4> wide = xt::zeros<double>({3, 4, 5, 2});
    xt::view(wide, xt::all(), xt::all(), xt::all(), 1) = g;
    CHECK(th::rel_err(forward(layer_norm_cnn{}, named<N, C, H, W>(x), gamma(xt::view(wide, xt::all(), xt::all(), xt::all(), 1)), beta(b)).y,
                      want) < 1e-14);
}

TEST_CASE("inputs: raw memory through xt::adapt, fixed-size tensors, and lazy expressions") {
    std::vector<double> buffer(2 * 3 * 7);
    for (std::size_t i = 0; i < buffer.size(); ++i) buffer[i] = std::sin(double(i)) * 3 + 1;
    auto x = xt::adapt(buffer, std::vector<std::size_t>{2, 3, 7});
    const auto want = ref::norm(describe<rms_norm>(), {"B", "T", "D"}, x, xt::ones<double>({7}), {}, 0, 1e-5);
    auto r = forward(rms_norm{}, named<B, T, D>(x), gamma(xt::xtensor<double, 1>(xt::ones<double>({7}))));
    CHECK(th::rel_err(r.y, want.y) < 1e-12);

    xt::xtensor_fixed<double, xt::xshape<3, 7>> fixed = xt::view(x, 0, xt::all(), xt::all());
    xt::xtensor_fixed<double, xt::xshape<7>> gf = xt::ones<double>({7});
    auto rf = forward(rms_norm{}, named<T, D>(fixed), gamma(gf));
    CHECK(th::rel_err(rf.y, xt::view(want.y, 0, xt::all(), xt::all())) < 1e-12);

    // norm(x + residual): the expression is evaluated once, then normalized
    xt::xtensor<double, 3> residual = th::randn({2, 3, 7});
    xt::xarray<double> sum = x + residual;
    auto lazy = forward(layer_norm{}, named<B, T, D>(x + residual));
    auto eager = forward(layer_norm{}, named<B, T, D>(sum));
    CHECK(lazy.y == eager.y);
}

TEST_CASE("a call takes its threads from 1 MiB of traffic up: x and y forward, x, dy and dx backward") {
    th::parallel_bytes_scope bound(engine::default_parallel_bytes);
    // LayerNorm 8x4096 in floats moves 256 KiB forward: one thread, where two took 2.2x its time
    const auto small = plan_for<layer_norm>({"T", "D"}, {8, 4096}, true);
    CHECK(engine::decide<float>(small.p, small.size, 2, 0, false, false).threads == 1);
    CHECK(engine::decide<double>(small.p, small.size, 2, 0, false, false).threads == 1);
    const auto doubles = plan_for<layer_norm>({"T", "D"}, {16, 4096}, true);  // 1 MiB in doubles
    CHECK(engine::decide<float>(doubles.p, doubles.size, 2, 0, false, false).threads == 1);
    CHECK(engine::decide<double>(doubles.p, doubles.size, 2, 0, false, false).threads == 2);
    const auto large = plan_for<batch_norm>({"N", "C", "H", "W"}, {2, 16, 64, 64}, true);  // 1 MiB in floats
    CHECK(engine::decide<float>(large.p, large.size, 2, 0, false, false).threads == 2);
    CHECK(engine::decide<float>(large.p, large.size, 1, 0, false, false).threads == 1);
    // the backward's three streams: 1 MiB at 87382 floats
    CHECK(engine::threads_for(87381, sizeof(float), 3, 2) == 1);
    CHECK(engine::threads_for(87382, sizeof(float), 3, 2) == 2);
    CHECK(engine::threads_for(1 << 20, sizeof(float), 2, 1) == 1);
    {
        th::parallel_bytes_scope none(0);  // NORMSPEC_PARALLEL_BYTES=0
        CHECK(engine::decide<float>(small.p, small.size, 2, 0, false, false).threads == 2);
        CHECK(engine::threads_for(1, sizeof(float), 3, 2) == 2);
    }
    CHECK(engine::parallel_bytes().load() == engine::default_parallel_bytes);
}

TEST_CASE("one and two threads agree, on kept-index and split-reduction plans") {
    // the suite's parallel bound is 0 (main.cpp): two threads take their team at these sizes; few
    // channels force a split reduction
    xt::xtensor<float, 4> nhwc = xt::cast<float>(th::randn({8, 32, 32, 3}, 3.0));
    xt::xtensor<float, 4> nchw = xt::cast<float>(th::randn({8, 3, 32, 32}, 3.0));
    xt::xtensor<float, 3> row = xt::cast<float>(th::randn({1, 1, 70001}, -2.0));
    xt::xtensor<float, 3> rows = xt::cast<float>(th::randn({64, 7, 301}, 1.0));
    auto agree = [](auto&& one, auto&& two) {
        CHECK(th::rel_err(one.y, two.y) < 2e-6);
        CHECK(th::rel_err(one.rstd, two.rstd) < 2e-6);
    };
    agree(forward(batch_norm{}, named<N, H, W, C>(nhwc), threads(1)), forward(batch_norm{}, named<N, H, W, C>(nhwc), threads(2)));
    agree(forward(batch_norm{}, named<N, C, H, W>(nchw), threads(1)), forward(batch_norm{}, named<N, C, H, W>(nchw), threads(2)));
    agree(forward(layer_norm{}, named<B, T, D>(row), threads(1)), forward(layer_norm{}, named<B, T, D>(row), threads(2)));
    agree(forward(group_norm<>{}, named<N, H, W, C>(nhwc), num_groups(3), threads(1)),
          forward(group_norm<>{}, named<N, H, W, C>(nhwc), num_groups(3), threads(2)));
    for (auto sched : {schedule::fused, schedule::two_sweeps}) {
        agree(forward(instance_norm{}, named<N, C, H, W>(nchw), threads(1), sched),
              forward(instance_norm{}, named<N, C, H, W>(nchw), threads(2), sched));
        agree(forward(batch_norm{}, named<N, C, H, W>(nchw), threads(1), sched),
              forward(batch_norm{}, named<N, C, H, W>(nchw), threads(2), sched));
        agree(forward(layer_norm{}, named<B, T, D>(rows), threads(1), sched), forward(layer_norm{}, named<B, T, D>(rows), threads(2), sched));
        agree(forward(layer_norm{}, named<B, T, D>(row), threads(1), sched), forward(layer_norm{}, named<B, T, D>(row), threads(2), sched));
    }
    const auto want = ref::norm(describe<batch_norm>(), {"N", "H", "W", "C"}, xt::cast<double>(nhwc), {}, {}, 0, 1e-5);
    CHECK(th::rel_err(forward(batch_norm{}, named<N, H, W, C>(nhwc), threads(2)).y, want.y) < 2e-6);
    // GroupNorm on channels-last data with batch 1: the threads split the rows of the one sample
    xt::xtensor<float, 4> one = xt::cast<float>(th::randn({1, 48, 48, 40}, 2.0));
    const auto want_gn = ref::norm(describe<group_norm<4>>(), {"N", "H", "W", "C"}, xt::cast<double>(one), {}, {}, 4, 1e-5);
    for (int t : {1, 2}) CHECK(th::rel_err(forward(group_norm<4>{}, named<N, H, W, C>(one), threads(t)).y, want_gn.y) < 2e-6);
}

TEST_CASE("out of cache, channels-last column moments go row by row, far centres taken again") {
    // BatchNorm and GroupNorm on NHWC (one sample of H x 1 positions) with 333 channels and rows
    // from memory (columns_by_rows; GroupNorm's two threads split the sample's rows; 37 groups of
    // 9 channels, too short to vectorize alone, so that it takes per-channel column moments): the
    // statistics of each block of rows row by row, the sums per column in L1. The values sit at
    // 1e4 + N(0, 1), and in channel 5 the first block's first rows are outliers: the first block's
    // centre (0) and, for channel 5, the second block's (the first block's mean) lie far from the
    // block means, so those vectors of columns take their second pass; float sums about a far
    // centre would lose the variance. One and two threads.
    const std::size_t c = 333, rows = std::size_t(0.6 * engine::detail::llc_bytes() / double(sizeof(float) * c)) + 1;
    xt::xtensor<float, 4> x = xt::cast<float>(th::randn({1, rows, 1, c}, 1e4, 1.0));
    for (std::size_t r = 0; r < 16; ++r) x(0, r, 0, 5) += 50.0f;
    CHECK(engine::detail::columns_by_rows<float>(double(rows / 2) * double(c) * sizeof(float), engine::index_t(c), false));
    const auto want = ref::norm(describe<batch_norm>(), {"N", "H", "W", "C"}, xt::cast<double>(x), {}, {}, 0, 1e-5);
    const auto want_gn = ref::norm(describe<group_norm<37>>(), {"N", "H", "W", "C"}, xt::cast<double>(x), {}, {}, 37, 1e-5);
    for (int t : {1, 2}) {
        CAPTURE(t);
        const auto r = forward(batch_norm{}, named<N, H, W, C>(x), threads(t));
        CHECK(th::rel_err(r.rstd, want.rstd) < 1e-6);
        CHECK(std::abs(r.rstd(5) / want.rstd(5) - 1) < 1e-6);  // channel 5 on its own (its rstd is small)
        CHECK(th::rel_err(r.y, want.y) < 2e-6);
        CHECK(th::rel_err(forward(group_norm<37>{}, named<N, H, W, C>(x), threads(t)).y, want_gn.y) < 2e-6);
    }
}

TEST_CASE("channels-last column moments go row by row when the output streams, small slabs too") {
    // GroupNorm on NHWC (37 groups of 9 channels: per-channel column moments), four samples of
    // 333 channels, each sample's slab of x under a quarter of the last-level cache but x and y
    // together past half of it (channels-last columns' bound), so that one thread's call streams its output and reads each slab
    // from memory: the column moments go row by row (columns_by_rows with streaming) where the
    // slab alone would take column groups. Values at 1e4 + N(0, 1): each sample's first block has
    // no centre yet and takes its second pass; in channel 5 of sample 2 the second block's first
    // rows are outliers.
    const std::size_t c = 333, samples = 4;
    const std::size_t rows = std::size_t(0.07 * engine::detail::llc_bytes() / double(sizeof(float) * c)) + 1;
    const double slab = double(rows) * double(c) * sizeof(float), total = double(samples) * slab;
    CHECK(engine::detail::stream_output(2.0 * total, 1, 0.5));
    CHECK_FALSE(engine::detail::columns_by_rows<float>(slab, engine::index_t(c), false));
    CHECK(engine::detail::columns_by_rows<float>(slab, engine::index_t(c), true));
    xt::xtensor<float, 4> x = xt::cast<float>(th::randn({samples, rows, 1, c}, 1e4, 1.0));
    const std::size_t block = std::size_t(engine::column_block_rows(engine::index_t(c)));
    for (std::size_t r = block; r < block + 8; ++r) x(2, r, 0, 5) += 50.0f;
    {
        const auto [p, size] = plan_for<group_norm<37>>({"N", "H", "W", "C"}, {4, engine::index_t(rows), 1, 333}, false);
        const auto d = engine::decide<float>(p, size, 1, 0, false, false);
        CHECK((d.grouped_columns && d.stream));
    }
    const auto want = ref::norm(describe<group_norm<37>>(), {"N", "H", "W", "C"}, xt::cast<double>(x), {}, {}, 37, 1e-5);
    for (int t : {1, 2}) {
        CAPTURE(t);
        const auto r = forward(group_norm<37>{}, named<N, H, W, C>(x), threads(t));
        CHECK(th::rel_err(r.rstd, want.rstd) < 1e-6);
        CHECK(th::rel_err(r.y, want.y) < 2e-6);
    }
}

TEST_CASE("work is split by the team OpenMP actually gives, not by the threads asked for") {
    // With a thread limit of 1, asking for 4 threads gets a team of 1; every element must still be done.
    xt::xtensor<float, 4> x = xt::cast<float>(th::randn({4, 16, 32, 32}, 2.0));
    xt::xtensor<float, 4> nhwc = xt::transpose(x, {0, 2, 3, 1});
    const auto want = forward(batch_norm{}, named<N, C, H, W>(x), threads(1)).y;
    const auto want_gn = forward(group_norm<4>{}, named<N, H, W, C>(nhwc), threads(1)).y;
    const auto want_ln = forward(layer_norm{}, named<B, T, D>(xt::xtensor<float, 3>(xt::reshape_view(x, {64, 32, 32})))).y;
    int team_seen = 0;
#pragma omp parallel num_threads(2)
    {
#pragma omp single
        {
            // inside a parallel region (nested parallelism off), every inner region has a team of 1
#ifdef _OPENMP
            team_seen = omp_get_num_threads();
#endif
            for (auto sched : {schedule::fused, schedule::two_sweeps}) {
                CHECK(th::rel_err(forward(batch_norm{}, named<N, C, H, W>(x), threads(4), sched).y, want) < 2e-6);
                CHECK(th::rel_err(forward(group_norm<4>{}, named<N, H, W, C>(nhwc), threads(4), sched).y, want_gn) < 2e-6);
                xt::xtensor<float, 3> seq = xt::reshape_view(x, {64, 32, 32});
                CHECK(th::rel_err(forward(layer_norm{}, named<B, T, D>(seq), threads(4), sched).y, want_ln) < 2e-6);
                CHECK(th::rel_err(forward(batch_norm{}, named<N, H, W, C>(nhwc), threads(4), sched).y,
                                  xt::transpose(want, {0, 2, 3, 1})) < 2e-6);
            }
        }
    }
    CHECK(team_seen >= 1);
}

TEST_CASE("each thread of someone else's parallel region can run its own one-thread call") {
    // a one-thread call runs without a parallel region of its own; its split must still be
    // "all of it", not the outer team's share for this thread. Outputs start at 1e30, so an
    // element left undone cannot pass for a done one.
    xt::xtensor<float, 4> x = xt::cast<float>(th::randn({4, 16, 32, 32}, 2.0));
    xt::xtensor<float, 4> nhwc = xt::transpose(x, {0, 2, 3, 1});
    xt::xtensor<float, 3> seq = xt::reshape_view(x, {64, 32, 32});
    const xt::xtensor<float, 4> want = forward(batch_norm{}, named<N, C, H, W>(x)).y;
    const xt::xtensor<float, 4> want_gn = forward(group_norm<4>{}, named<N, H, W, C>(nhwc)).y;
    const xt::xtensor<float, 3> want_ln = forward(layer_norm{}, named<B, T, D>(seq)).y;
    const xt::xtensor<float, 4> want_dx =
        backward(batch_norm{}, named<N, H, W, C>(nhwc), nhwc, forward(batch_norm{}, named<N, H, W, C>(nhwc))).dx;
    int bad = 0;
#pragma omp parallel num_threads(2) reduction(+ : bad)
    {
        auto off = [](const auto& w, const auto& got) {
            double e = 0;
            for (std::size_t i = 0; i < w.size(); ++i) e = std::max(e, std::abs(double(w.data()[i]) - double(got.data()[i])));
            return e > 1e-5;
        };
        xt::xtensor<float, 4> y = xt::full_like(x, 1e30f), yg = xt::full_like(nhwc, 1e30f), dx = xt::full_like(nhwc, 1e30f);
        xt::xtensor<float, 3> yl = xt::full_like(seq, 1e30f);
        for (auto sched : {schedule::fused, schedule::two_sweeps}) {
            forward(batch_norm{}, named<N, C, H, W>(x), threads(1), sched, out(y));
            forward(group_norm<4>{}, named<N, H, W, C>(nhwc), threads(1), sched, out(yg));
            forward(layer_norm{}, named<B, T, D>(seq), threads(1), sched, out(yl));
            bad += off(want, y) + off(want_gn, yg) + off(want_ln, yl);
            y.fill(1e30f), yg.fill(1e30f), yl.fill(1e30f);
        }
        auto r = forward(batch_norm{}, named<N, H, W, C>(nhwc), threads(1));
        backward(batch_norm{}, named<N, H, W, C>(nhwc), nhwc, r, threads(1), out(dx));
        bad += off(want_dx, dx);
    }
    CHECK(bad == 0);
}

TEST_CASE("the large-offset input keeps its variance in float32") {
    // float32 1e4 + N(0,1): the naive E[x^2] - E[x]^2 in float loses the variance entirely
    xt::xtensor<float, 3> x = xt::cast<float>(th::randn({2, 3, 4099}, 1e4, 1.0));
    const auto want = ref::norm(describe<layer_norm>(), {"B", "T", "D"}, xt::cast<double>(x), {}, {}, 0, 1e-5);
    float naive_sum = 0, naive_sq = 0;
    for (std::size_t i = 0; i < 4099; ++i) naive_sum += x(0, 0, i), naive_sq += x(0, 0, i) * x(0, 0, i);
    const float naive_var = naive_sq / 4099 - (naive_sum / 4099) * (naive_sum / 4099);
    const double true_var = 1.0 / (want.rstd(0, 0) * want.rstd(0, 0)) - 1e-5;
    CHECK(std::abs(naive_var - true_var) > 0.5 * true_var);  // the trap is real
    auto r = forward(layer_norm{}, named<B, T, D>(x));
    CHECK(th::rel_err(r.rstd, want.rstd) < 1e-6);
    CHECK(th::rel_err(r.y, want.y) < 2e-6);
    xt::xtensor<float, 4> img = xt::cast<float>(th::randn({3, 2, 17, 19}, 1e4, 1.0));
    const auto want_bn = ref::norm(describe<batch_norm>(), {"N", "C", "H", "W"}, xt::cast<double>(img), {}, {}, 0, 1e-5);
    CHECK(th::rel_err(forward(batch_norm{}, named<N, C, H, W>(img)).rstd, want_bn.rstd) < 1e-6);
    xt::xtensor<float, 4> img_nhwc = xt::transpose(img, {0, 2, 3, 1});
    CHECK(th::rel_err(forward(batch_norm{}, named<N, H, W, C>(img_nhwc)).rstd, want_bn.rstd) < 1e-6);
}

TEST_CASE("statistics stay exact when a chunk's first values are far from its mean (sorted data, outliers first)") {
    // the one-pass sums about the first vector's mean are only accepted when the mean is within
    // one standard deviation of it; these rows take the second pass. Without parameters each row
    // goes alone; with gamma and beta along the row, rows go in pairs whose first passes share a
    // loop (accumulate_rows): the far centres fall on both rows of a pair (0 and 1) and on the
    // odd row left at the end (4), in one chunk (301) and across two (3001)
    for (std::size_t d : {301, 3001}) {
        CAPTURE(d);
        xt::xtensor<float, 3> x = xt::cast<float>(th::randn({1, 5, d}, 1e4, 1.0));
        for (std::size_t i = 0; i < d; ++i) x(0, 0, i) = 1e4f + 0.01f * float(i);  // sorted ramp
        // outliers first: the first vector (the centre) 18 standard deviations from the mean at
        // d = 3001, 6 at 301, so sums about it lose some 300 (30) times float's precision
        for (std::size_t i = 0; i < 8; ++i) x(0, 1, i) += 50.0f, x(0, 4, i) -= 50.0f;
        for (std::size_t i = 0; i < d; ++i) x(0, 2, i) = 1e4f + float(i % 7);  // periodic, offset
        const auto want = ref::norm(describe<layer_norm>(), {"B", "T", "D"}, xt::cast<double>(x), {}, {}, 0, 1e-5);
        auto r = forward(layer_norm{}, named<B, T, D>(x));
        CHECK(th::rel_err(r.rstd, want.rstd) < 1e-6);
        CHECK(th::rel_err(r.y, want.y) < 2e-6);
        const xt::xarray<double> g = th::randn({d}, 1.0, 0.5), b = th::randn({d}, 0.0, 0.5);
        const auto want_p = ref::norm(describe<layer_norm>(), {"B", "T", "D"}, xt::cast<double>(x), g, b, 0, 1e-5);
        const xt::xtensor<float, 1> gf = xt::cast<float>(g), bf = xt::cast<float>(b);
        auto rp = forward(layer_norm{}, named<B, T, D>(x), gamma(gf), beta(bf));
        for (std::size_t t = 0; t < 5; ++t) {
            CAPTURE(t);
            CHECK(std::abs(rp.rstd(0, t) / want_p.rstd(0, t) - 1) < 1e-6);
            CHECK(std::abs(rp.mean(0, t) - want_p.mean(0, t)) < 1e-6 * std::abs(want_p.mean(0, t)));
        }
        CHECK(th::rel_err(rp.y, want_p.y) < 2e-6);
    }
}

TEST_CASE("short planes in wide rows (BatchNorm, InstanceNorm on NCHW with 7x7, 5x5, 3x3 and 2x3 planes)") {
    // C * H * W above 4096 with H * W under 256: BatchNorm's planes of a vector or more take two
    // sweeps in memory order (the statistics, then each sample's planes as one flat run); planes
    // shorter than a vector (2x3 in float; 3x3 too where a vector holds 16 floats) go in blocks
    // of channels (statistics from a chunk's worth of planes at a time, then each sample's span
    // of a block as one flat run)
    for (auto shape : std::vector<std::vector<std::size_t>>{{3, 97, 7, 7}, {2, 171, 5, 5}, {1, 700, 3, 3}, {1, 700, 2, 3}}) {
        CAPTURE(shape);
        const xt::xarray<double> x = th::randn(shape, 0.5, 2.0);
        th::check_against_reference<batch_norm, N, C, H, W>(xt::xarray<float>(xt::cast<float>(x)));
        th::check_against_reference<batch_norm, N, C, H, W>(x);
        th::check_against_reference<instance_norm, N, C, H, W>(xt::xarray<float>(xt::cast<float>(x)));
    }
    // large offsets, one and two threads; in channel 0 the first vector's values are outliers, so
    // the first chunk's centre is far from its mean and the second pass over its planes runs
    xt::xtensor<float, 4> x = xt::cast<float>(th::randn({64, 97, 7, 7}, 1e4, 1.0));
    for (std::size_t i = 0; i < 16; ++i) x(0, 0, i / 7, i % 7) += 100.0f;
    const auto want = ref::norm(describe<batch_norm>(), {"N", "C", "H", "W"}, xt::cast<double>(x), {}, {}, 0, 1e-5);
    for (int t : {1, 2}) {
        CAPTURE(t);
        // blocks of channels, and (forced) two sweeps: the statistics in memory order, where
        // channel 0's centre (its first run's first vector) is far from its mean and its runs are
        // taken again
        for (auto r : {forward(batch_norm{}, named<N, C, H, W>(x), threads(t)),
                       forward(batch_norm{}, named<N, C, H, W>(x), threads(t), schedule::two_sweeps)}) {
            CHECK(th::rel_err(r.rstd, want.rstd) < 1e-6);
            CHECK(std::abs(r.rstd(0) / want.rstd(0) - 1) < 1e-6);  // channel 0 on its own (its rstd is small)
            CHECK(th::rel_err(r.y, want.y) < 2e-6);
        }
    }
    // out of cache, y one float past a vector boundary: two sweeps in memory order (the plan says
    // so), streaming stores with aligning heads; large offsets and channel 0's outliers first again
    const std::size_t per = 97 * 49, n = std::size_t(1.2 * engine::detail::llc_bytes() / double(2 * sizeof(float) * per)) + 1;
    const std::array<std::size_t, 4> shape{n, 97, 7, 7};
    {
        const auto [p, size] = plan_for<batch_norm>({"N", "C", "H", "W"}, {engine::index_t(n), 97, 7, 7}, false);
        const auto d = engine::decide<float>(p, size, 1, 0, false, false);
        CHECK_FALSE(d.fused);
        CHECK(d.stream);
        CHECK(engine::explain(p, d).find("one read of x, in memory order") != std::string::npos);
    }
    xt::xtensor<float, 4> big = xt::cast<float>(xt::reshape_view(th::randn({n * per}, 1e4, 1.0), shape));
    for (std::size_t i = 0; i < 16; ++i) big(0, 0, i / 7, i % 7) += 100.0f;
    std::vector<float> ybuf(n * per + 64);
    float* yp = th::placed(ybuf, 64, sizeof(float));
    auto y = xt::adapt(yp, n * per, xt::no_ownership(), shape);
    const auto want_big = ref::norm(describe<batch_norm>(), {"N", "C", "H", "W"}, xt::cast<double>(big), {}, {}, 0, 1e-5);
    for (int t : {1, 2}) {
        CAPTURE(t);
        const auto r = forward(batch_norm{}, named<N, C, H, W>(big), out(y), threads(t));
        CHECK(th::rel_err(r.rstd, want_big.rstd) < 1e-6);
        CHECK(std::abs(r.rstd(0) / want_big.rstd(0) - 1) < 1e-6);
        CHECK(th::rel_err(y, want_big.y) < 2e-6);
    }
}

TEST_CASE("streaming stores: decided by each thread's share of x and y, or all of it where kept indices pipeline; LayerNorm and RMSNorm rows streamed give the same values") {
    // x and y together past 3/8 of the last-level cache the engine reads but under 3/4 of it: one
    // thread streams y, except over channels-last columns (under half of it); at two threads
    // (half each) channels-last columns store through the cache, while rows and planes, whose
    // kept indices then form a pipeline, stream
    auto rows_for = [](std::size_t width) {
        return std::size_t(0.375 * engine::detail::llc_bytes() / double(2 * sizeof(float) * width)) | 1;  // odd: a partial block
    };
    {
        const std::size_t width = 1031, rows = rows_for(width) + 8;
        REQUIRE(2.0 * sizeof(float) * double(rows * width) < 0.75 * engine::detail::llc_bytes());
        const auto [p, size] = plan_for<layer_norm>({"T", "D"}, {engine::index_t(rows), engine::index_t(width)}, true);
        CHECK(engine::decide<float>(p, size, 1, 0, false, false).stream);
        const auto two = engine::decide<float>(p, size, 2, 0, false, false);
        CHECK((two.stream && two.pipelined));
        CHECK(engine::explain(p, two).find("x and y exceed 3/8 of the last-level cache, and the kept indices form a pipeline") != std::string::npos);
        CHECK_FALSE(engine::decide<float>(p, size, 1, 0, false, true).stream);  // in place: never
        const auto planes = plan_for<instance_norm>({"N", "C", "H", "W"}, {engine::index_t(rows), 1, 1, engine::index_t(width)}, true);
        const auto in2 = engine::decide<float>(planes.p, planes.size, 2, 0, false, false);
        CHECK((in2.stream && in2.pipelined));
        const auto cols = plan_for<batch_norm>({"N", "H", "W", "C"}, {engine::index_t(rows), 1, 1, engine::index_t(width)}, true);
        CHECK(engine::detail::lane_columns(cols.p));
        CHECK_FALSE(engine::decide<float>(cols.p, cols.size, 1, 0, false, false).stream);
        const auto cols2 = engine::decide<float>(cols.p, cols.size, 2, 0, false, false);
        if (cols2.threads == 2) CHECK_FALSE(cols2.stream);
    }
    {
        // x and y past 1/4 of the last-level cache but under 3/8: one thread streams y over rows
        // and planes, not over channels-last columns; at two threads nothing does (each share
        // under 1/4, all of it under the pipeline's 3/8)
        const std::size_t width = 1031;
        const auto rows = std::size_t(0.3 * engine::detail::llc_bytes() / double(2 * sizeof(float) * width));
        for (const auto& [p, size] : {plan_for<layer_norm>({"T", "D"}, {engine::index_t(rows), engine::index_t(width)}, true),
                                      plan_for<instance_norm>({"N", "C", "H", "W"}, {engine::index_t(rows), 1, 1, engine::index_t(width)}, true),
                                      plan_for<batch_norm>({"N", "H", "W", "C"}, {engine::index_t(rows), 1, 1, engine::index_t(width)}, true)}) {
            CAPTURE(p.pattern());
            const auto one = engine::decide<float>(p, size, 1, 0, false, false);
            if (engine::detail::lane_columns(p)) {
                CHECK_FALSE(one.stream);
                CHECK(engine::explain(p, one).find("stores: cached") != std::string::npos);
            } else {
                CHECK((one.stream && !one.stream_whole));
                CHECK(engine::explain(p, one).find("each thread's share of x and y exceeds 1/4 of the last-level cache") != std::string::npos);
            }
            const auto two = engine::decide<float>(p, size, 2, 0, false, false);
            if (two.threads == 2) CHECK_FALSE(two.stream);
        }
    }
    {
        // channels-last columns (BatchNorm, InstanceNorm and GroupNorm on NHWC) stream once each
        // thread's share of x and y passes half of the last-level cache
        const auto rows = [](double fraction, std::size_t c) {
            return engine::index_t(fraction * engine::detail::llc_bytes() / double(2 * sizeof(float) * c));
        };
        for (double f : {0.45, 0.55}) {
            CAPTURE(f);
            for (const auto& [p, size] : {plan_for<batch_norm>({"N", "H", "W", "C"}, {rows(f, 64), 1, 1, 64}, true),
                                          plan_for<instance_norm>({"N", "H", "W", "C"}, {4, rows(f, 4 * 64), 1, 64}, true),
                                          plan_for<group_norm<32>>({"N", "H", "W", "C"}, {4, rows(f, 4 * 320), 1, 320}, true)}) {
                CAPTURE(p.pattern());
                CHECK(engine::detail::lane_columns(p));
                const auto one = engine::decide<float>(p, size, 1, 0, false, false);
                CHECK(one.stream == (f > 0.5));
                if (f > 0.5)
                    CHECK(engine::explain(p, one).find("each thread's share of x and y exceeds 1/2 of the last-level cache") != std::string::npos);
                const auto two = engine::decide<float>(p, size, 2, 0, false, false);
                if (two.threads == 2) CHECK_FALSE(two.stream);  // each share under half
            }
        }
        // rows and planes are not channels-last columns
        CHECK_FALSE(engine::detail::lane_columns(plan_for<layer_norm>({"T", "D"}, {8, 64}, true).p));
        CHECK_FALSE(engine::detail::lane_columns(plan_for<batch_norm>({"N", "C", "H", "W"}, {2, 3, 16, 17}, true).p));
    }
    // widths: every row at its own offset from a vector boundary (1031: row by row), all rows at
    // the same one (1024, and 256, the shortest rows that stream: blocks of rows stream together);
    // y one float past a vector boundary, so that heads and tails run
    auto check = [&](auto spec, std::size_t width) {
        using S = decltype(spec);
        CAPTURE(width);
        const std::size_t rows = rows_for(width) + 8;
        xt::xtensor<float, 2> x = xt::cast<float>(xt::reshape_view(th::randn({rows * width}, 1.0, 2.0), std::array<std::size_t, 2>{rows, width}));
        xt::xtensor<float, 1> g = xt::cast<float>(th::randn({width}, 1.0, 0.5)), bt = xt::cast<float>(th::randn({width}, 0.0, 0.5));
        const auto want = ref::norm(describe<S>(), {"T", "D"}, xt::cast<double>(x), xt::cast<double>(g),
                                    S::has_beta ? xt::xarray<double>(xt::cast<double>(bt)) : xt::xarray<double>{}, 0, 1e-5);
        std::vector<float> ybuf(rows * width + 64);
        float* yp = th::placed(ybuf, 64, sizeof(float));
        auto y = xt::adapt(yp, rows * width, xt::no_ownership(), std::array<std::size_t, 2>{rows, width});
        for (int t : {1, 2}) {
            CAPTURE(t);
            std::fill(ybuf.begin(), ybuf.end(), -7.0f);
            if constexpr (S::has_beta)
                forward(S{}, named<T, D>(x), gamma(g), beta(bt), out(y), threads(t));
            else
                forward(S{}, named<T, D>(x), gamma(g), out(y), threads(t));
            CHECK(th::rel_err(y, want.y) < 2e-6);
            CHECK(ybuf.front() == -7.0f);  // nothing written before y or past its end
            CHECK(ybuf.back() == -7.0f);
        }
    };
    for (std::size_t width : {1031, 1024, 256}) check(layer_norm{}, width);
    check(rms_norm{}, 1024);
}

namespace {
/// Spec S forward on E data laid out as Ax... (samples, or rows, first; the axis gamma and beta
/// span at `channel`), N as large as count_for(one sample's floats) makes it, at values
/// 1e4 + N(0,1) that edit(x) then changes: y and rstd against the float64 reference at one and
/// two threads, y one value past a vector boundary, nothing written before or after it.
template <class S, class E, class... Ax, std::size_t R, class CountFor, class Edit>
void check_streamed_forward(std::array<std::size_t, R> sample, std::size_t channel, long groups, CountFor&& count_for, Edit&& edit,
                            bool on_boundary = false) {
    std::size_t per = 1;
    for (std::size_t e : sample) per *= e;
    const std::size_t n = count_for(per * sizeof(E) / sizeof(float)), total = n * per;
    std::array<std::size_t, R + 1> shape{n};
    std::copy(sample.begin(), sample.end(), shape.begin() + 1);
    CAPTURE(shape);
    CAPTURE(sizeof(E));
    xt::xtensor<E, R + 1> x = xt::cast<E>(xt::reshape_view(th::randn({total}, 1e4, 1.0), shape));
    edit(x);
    xt::xarray<E> g = xt::cast<E>(th::randn({shape[channel]}, 1.0, 0.5)), bt = xt::cast<E>(th::randn({shape[channel]}, 0.0, 0.5));
    const auto want = ref::norm(describe<S>(), {Ax::name...}, xt::cast<double>(x), xt::cast<double>(g),
                                S::has_beta ? xt::xarray<double>(xt::cast<double>(bt)) : xt::xarray<double>{}, groups, 1e-5);
    std::vector<E> ybuf(total + 64);
    E* yp = th::placed(ybuf, 64, on_boundary ? 0 : sizeof(E), 16);  // (from 16: ybuf.front() stays outside y)
    auto y = xt::adapt(yp, total, xt::no_ownership(), shape);
    const double tol = std::is_same_v<E, float> ? 1e-6 : 1e-10;  // double: x itself at 1e4 carries 1e-12
    for (int t : {1, 2}) {
        CAPTURE(t);
        std::fill(ybuf.begin(), ybuf.end(), E(-7));
        const auto r = [&] {
            if constexpr (S::has_beta)
                return forward(S{}, named<Ax...>(x), gamma(g), beta(bt), out(y), threads(t));
            else
                return forward(S{}, named<Ax...>(x), gamma(g), out(y), threads(t));
        }();
        CHECK(th::rel_err(r.rstd, want.rstd) < tol);
        CHECK(th::rel_err(y, want.y) < 2 * tol);
        CHECK(ybuf.front() == E(-7));
        CHECK(ybuf.back() == E(-7));
    }
}
}  // namespace

TEST_CASE("out of cache, each kept index's normalize sweep takes the next one's statistics (a pipeline)") {
    // Streaming and fused with contiguous reduced runs without parameters along them (rows; planes
    // of a BatchNorm, InstanceNorm or GroupNorm), a thread's kept indices form a pipeline: while one is
    // normalized from cache, run by run, the same loop reads the next one's runs from memory for
    // its moments. Same values as the reference: large offsets, a sorted ramp and outliers first
    // (second passes inside the pipeline), a row without a next one (each thread's last), heads
    // and tails (y one value past a vector boundary, odd run lengths), parameters per kept index
    // (folded) and per channel along a group's runs; float, and double for InstanceNorm; an rms
    // norm over planes.
    const double bytes = 0.8 * engine::detail::llc_bytes();  // x and y together: one and two threads stream
    auto count_for = [&](std::size_t per) { return std::size_t(bytes / double(2 * sizeof(float) * per)) | 1; };
    {
        using plain = norm<reduce<D>>;
        const std::size_t rows = count_for(1024);
        const auto [p, size] = plan_for<plain>({"T", "D"}, {engine::index_t(rows), 1024}, false);
        const auto d = engine::decide<float>(p, size, 1, 0, false, false);
        CHECK(d.stream);
        CHECK(d.pipelined);
        CHECK(engine::explain(p, d).find("the next kept index's runs read for its statistics") != std::string::npos);
        const auto small = plan_for<plain>({"T", "D"}, {64, 1024}, false);
        CHECK_FALSE(engine::decide<float>(small.p, small.size, 1, 0, false, false).pipelined);  // in cache: no streaming
        // gamma and beta along the rows: a chunk at a time (pipelined_parameter_rows, tested below)
        const auto ln = plan_for<layer_norm>({"T", "D"}, {engine::index_t(rows), 1024}, true);
        const auto dl = engine::decide<float>(ln.p, ln.size, 1, 0, false, false);
        CHECK(dl.pipelined);
        CHECK(engine::explain(ln.p, dl).find("the same chunk of the next row is asked for") != std::string::npos);
        const auto planes = plan_for<batch_norm>({"N", "C", "H", "W"}, {engine::index_t(count_for(97 * 49)), 97, 7, 7}, false);
        CHECK_FALSE(engine::decide<float>(planes.p, planes.size, 1, 0, false, false).pipelined);  // not fused
        // the cases below
        const auto gn = plan_for<group_norm<3>>({"N", "C", "H", "W"}, {engine::index_t(count_for(6 * 31 * 37)), 6, 31, 37}, true);
        CHECK(engine::decide<float>(gn.p, gn.size, 1, 0, false, false).pipelined);
        const auto bn = plan_for<batch_norm>({"N", "C", "H", "W"}, {engine::index_t(count_for(16 * 17 * 19)), 16, 17, 19}, true);
        CHECK(engine::decide<float>(bn.p, bn.size, 1, 0, false, false).pipelined);
        const auto in2 = plan_for<instance_norm>({"N", "C", "H", "W"}, {engine::index_t(count_for(3 * 33 * 35)), 3, 33, 35}, true);
        const auto two = engine::decide<float>(in2.p, in2.size, 2, 0, false, false);
        if (two.threads == 2) CHECK(two.pipelined);
    }
    // spec on float or double data, N samples of C x H x W
    auto run = [&](auto spec, auto type, std::array<std::size_t, 3> chw, long groups, auto&& edit) {
        check_streamed_forward<decltype(spec), decltype(type), N, C, H, W>(chw, 1, groups, count_for, edit);
    };
    auto ramp_and_outliers = [](auto& x) {
        for (std::size_t i = 0; i < 33 * 35; ++i) x(1, 0, i / 35, i % 35) = 1e4 + 0.01 * double(i);  // sorted ramp
        for (std::size_t i = 0; i < 40; ++i) x(1, 1, i / 35, i % 35) += 50;                          // outliers first
    };
    run(instance_norm{}, float{}, {3, 33, 35}, 0, ramp_and_outliers);
    run(instance_norm{}, double{}, {3, 33, 35}, 0, ramp_and_outliers);
    run(group_norm<3>{}, float{}, {6, 31, 37}, 3, [&](auto& x) {
        for (std::size_t i = 0; i < 40; ++i) x(2, 2, 0, i % 37) += 50;  // group 1's second run: outliers first
    });
    // BatchNorm fused per channel, over the planes of every sample (the runs of R)
    run(batch_norm{}, float{}, {16, 17, 19}, 0, [](auto&) {});
    // rms over each plane, gamma per channel (folded): the sums of squares taken in the pipeline
    run(norm<reduce<H, W>, scale<C>, rms>{}, float{}, {3, 33, 35}, 0, ramp_and_outliers);
}

TEST_CASE("out of cache, rows with gamma and beta along them form a pipeline a chunk at a time") {
    // LayerNorm, RMSNorm and a centred norm with gamma only, on rows whose x and y together pass
    // the streaming threshold at one and two threads: the previous row's chunk is normalized while
    // the same chunk of the next row is asked for, whose moments follow. Same values as the float64
    // reference: rows of 1031 values (each row at its own offset from a vector boundary) and of
    // 4100 (two whole chunks and a short one), values at 1e4 + N(0,1) with a sorted ramp and
    // outliers first in a later row (second passes in a chunk), y one value past a vector
    // boundary; float and double.
    const double bytes = 0.8 * engine::detail::llc_bytes();
    auto count_for = [&](std::size_t per) { return std::size_t(bytes / double(2 * sizeof(float) * per)) | 1; };
    auto run = [&](auto spec, auto type, std::size_t width) {
        using S = decltype(spec);
        using E = decltype(type);
        CAPTURE(width);
        {
            const std::size_t rows = count_for(width * sizeof(E) / sizeof(float));
            const auto [p, size] = plan_for<S>({"T", "D"}, {engine::index_t(rows), engine::index_t(width)}, true);
            CHECK(engine::decide<E>(p, size, 1, 0, false, false).pipelined);
        }
        check_streamed_forward<S, E, T, D>(std::array<std::size_t, 1>{width}, 1, 0, count_for, [&](auto& x) {
            for (std::size_t i = 0; i < width; ++i) x(5, i) = E(1e4 + 0.01 * double(i));  // sorted ramp
            for (std::size_t i = 0; i < 40; ++i) x(6, i) += E(50);                       // outliers first
        });
    };
    for (std::size_t width : {1031, 4100}) run(layer_norm{}, float{}, width);
    run(layer_norm{}, double{}, 4100);
    run(rms_norm{}, float{}, 4100);
    run(norm<reduce<D>, scale<D>>{}, float{}, 1031);
}

TEST_CASE("out of cache, channels-last kept indices form a pipeline a block of rows at a time") {
    // InstanceNorm and GroupNorm on NHWC, streaming, two samples or more per thread: while one
    // sample's block of rows is normalized from cache, the next sample's same block is asked for,
    // whose column moments follow (columns_per_kept). Same values as the reference: values at
    // 1e4 + N(0,1), a sorted ramp and outliers first in a later sample (second passes inside the
    // pipeline), channels that are not a whole number of vectors (37: rows start anywhere in a
    // vector; column groups) and more than eight vectors of them (333: row by row), rows that
    // are not a whole number of blocks, y one value past a vector boundary; float and double; an
    // rms norm with gamma folded.
    const double bytes = 1.1 * engine::detail::llc_bytes();  // x and y together: one and two threads stream (half each past 1/2)
    auto count_for = [&](std::size_t per) { return std::size_t(bytes / double(2 * sizeof(float) * per)) | 1; };
    {
        const auto in = plan_for<instance_norm>({"N", "H", "W", "C"}, {engine::index_t(count_for(29 * 31 * 37)), 29, 31, 37}, true);
        const auto d = engine::decide<float>(in.p, in.size, 1, 0, false, false);
        CHECK((d.fused && d.stream && d.pipelined));
        CHECK(engine::explain(in.p, d).find("the same rows of the next are asked for") != std::string::npos);
        const auto gn = plan_for<group_norm<37>>({"N", "H", "W", "C"}, {engine::index_t(count_for(29 * 31 * 333)), 29, 31, 333}, true);
        const auto dg = engine::decide<float>(gn.p, gn.size, 1, 0, false, false);
        CHECK((dg.grouped_columns && dg.pipelined));
        CHECK(engine::explain(gn.p, dg).find("the same rows of the next are asked for") != std::string::npos);
        // GroupNorm and InstanceNorm with fewer than two samples per thread, not one for each:
        // the threads split each sample's rows and still pipeline the samples; one sample per
        // thread keeps its two sweeps; a single sample has nothing to pipeline
        for (const auto& three : {plan_for<group_norm<37>>({"N", "H", "W", "C"}, {3, 401, 403, 333}, true),
                                  plan_for<instance_norm>({"N", "H", "W", "C"}, {3, 401, 403, 64}, true)}) {
            CAPTURE(three.p.pattern());
            const auto d3 = engine::decide<float>(three.p, three.size, 2, 0, false, false);
            CHECK((d3.threads == 2 && d3.fused && d3.stream && d3.pipelined && d3.split_reduction));
            CHECK(engine::explain(three.p, d3).find("the reduction is split") != std::string::npos);
        }
        const auto two = plan_for<group_norm<37>>({"N", "H", "W", "C"}, {2, 401, 403, 333}, true);
        const auto d2 = engine::decide<float>(two.p, two.size, 2, 0, false, false);
        CHECK((d2.threads == 2 && d2.stream && d2.pipelined && !d2.split_reduction));
        const auto one = plan_for<group_norm<37>>({"N", "H", "W", "C"}, {1, 401, 403, 333}, true);
        const auto d1 = engine::decide<float>(one.p, one.size, 2, 0, false, false);
        CHECK((d1.split_reduction && !d1.pipelined));
        CHECK_FALSE(engine::decide<float>(in.p, in.size, 1, 0, false, true).pipelined);  // in place: no streaming
    }
    // spec on float or double data, N samples of H x W x C
    auto run = [&](auto spec, auto type, std::array<std::size_t, 3> hwc, long groups, auto&& edit) {
        check_streamed_forward<decltype(spec), decltype(type), N, H, W, C>(hwc, 3, groups, count_for, edit);
    };
    auto ramp_and_outliers_in = [](std::size_t s) {  // in sample s
        return [s](auto& x) {
            const std::size_t w = x.shape(2), c = x.shape(3);
            for (std::size_t i = 0; i < 29 * 31; ++i) x(s, i / w, i % w, 0) = 1e4 + 0.01 * double(i);  // sorted ramp
            for (std::size_t i = 64; i < 104; ++i) x(s, i / w, i % w, c - 1) += 50;                 // a block's first rows
        };
    };
    const auto ramp_and_outliers = ramp_and_outliers_in(3);  // sample 3 (a later one in every thread's pipeline)
    run(instance_norm{}, float{}, {29, 31, 37}, 0, ramp_and_outliers);
    run(instance_norm{}, double{}, {29, 31, 37}, 0, ramp_and_outliers);
    run(instance_norm{}, float{}, {13, 11, 333}, 0, [](auto&) {});
    run(group_norm<37>{}, float{}, {29, 31, 333}, 37, ramp_and_outliers);
    run(group_norm<4>{}, float{}, {29, 31, 36}, 4, ramp_and_outliers);
    run(norm<reduce<H, W>, scale<C>, rms>{}, float{}, {29, 31, 37}, 0, ramp_and_outliers);
    // GroupNorm and InstanceNorm, three samples, each thread's share of x and y streaming at two
    // threads: the threads split every sample's rows, and each one's rows of the previous sample
    // are normalized while the same rows of the next are read (at one thread, a pipeline of
    // samples)
    auto split_samples = [&](auto spec, long groups, std::size_t samples, std::size_t c) {
        using S = decltype(spec);
        const std::size_t w = 61, rows = std::size_t(0.15 * engine::detail::llc_bytes() / double(samples * c)) + 1;
        const std::array<std::size_t, 3> hwc{rows / w + 1, w, c};
        const auto pl = plan_for<S>({"N", "H", "W", "C"}, {engine::index_t(samples), engine::index_t(hwc[0]), engine::index_t(w), engine::index_t(c)}, true);
        const auto d = engine::decide<float>(pl.p, pl.size, 2, 0, false, false);
        CHECK((d.threads == 2 && d.fused && d.stream && d.pipelined && d.split_reduction));
        check_streamed_forward<S, float, N, H, W, C>(hwc, 3, groups, [&](std::size_t) { return samples; },
                                                     ramp_and_outliers_in(samples - 1));  // in the last sample
    };
    split_samples(group_norm<37>{}, 37, 3, 333);  // row by row
    split_samples(group_norm<4>{}, 4, 3, 36);     // column groups
    split_samples(instance_norm{}, 0, 3, 333);    // row by row
    split_samples(instance_norm{}, 0, 3, 37);     // column groups
    // y on a vector boundary, rows of one to four whole vectors (16 and 64 channels): the
    // normalize sweep holds its coefficients in registers
    check_streamed_forward<instance_norm, float, N, H, W, C>(std::array<std::size_t, 3>{29, 31, 16}, 3, 0, count_for, ramp_and_outliers, true);
    check_streamed_forward<instance_norm, double, N, H, W, C>(std::array<std::size_t, 3>{29, 31, 16}, 3, 0, count_for, ramp_and_outliers, true);
    check_streamed_forward<instance_norm, float, N, H, W, C>(std::array<std::size_t, 3>{13, 11, 64}, 3, 0, count_for, [](auto&) {}, true);
}

// ---- a call's allocations -------------------------------------------------------------------
// operator new, replaced for this test executable, counts every allocation while `counting` is
// set (on this thread), and blocks of 4 KiB or more on any thread while `counting_blocks` is set
namespace {
thread_local bool counting = false;
thread_local long allocations = 0;
std::atomic<bool> counting_blocks{false};
std::atomic<long> blocks{0};
}  // namespace
// (out of line: inlined into the standard library's allocators, g++ 12 takes the malloc/free
// pair for a mismatch with the new expressions there and warns)
[[gnu::noinline]] void* operator new(std::size_t n) {
    if (counting) ++allocations;
    if (n >= 4096 && counting_blocks.load(std::memory_order_relaxed)) blocks.fetch_add(1, std::memory_order_relaxed);
    if (void* p = std::malloc(n ? n : 1)) return p;
    throw std::bad_alloc();
}
[[gnu::noinline]] void operator delete(void* p) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete(void* p, std::size_t) noexcept { std::free(p); }

TEST_CASE("a small call's allocations: the forward's results and coefficients, the backward's gradients and sums") {
    // the fixed cost of a small call is mostly its allocations: loop dims, extents and names are
    // held in place, so what is left is what the call returns and one block of coefficients
    th::parallel_bytes_scope bound(engine::default_parallel_bytes);  // a small call: one thread
    xt::xtensor<float, 2> x = th::randn({1, 16}, 0.5, 2.0), dy = th::randn({1, 16}), y = xt::zeros<float>({1, 16}), dx = y;
    xt::xtensor<float, 1> g = th::randn({16}, 1.0, 0.5), b = th::randn({16});
    auto count = [](auto&& f) {
        allocations = 0;
        counting = true;
        f();
        counting = false;
        return allocations;
    };
    auto r = forward(layer_norm{}, named<T, D>(x), gamma(g), beta(b), out(y));
    // saved mean and rstd, and the coefficients
    CHECK(count([&] { r = forward(layer_norm{}, named<T, D>(x), gamma(g), beta(b), out(y)); }) <= 3);
    auto gr = backward(layer_norm{}, named<T, D>(x), dy, r, gamma(g), out(dx));
    // dgamma and dbeta: the per-thread sums are work space kept from the call before
    CHECK(count([&] { gr = backward(layer_norm{}, named<T, D>(x), dy, r, gamma(g), out(dx)); }) <= 2);
    // and none with every output the caller's (dx, dgamma, dbeta)
    xt::xtensor<float, 1> dg = xt::zeros<float>({16}), db = dg;
    backward(layer_norm{}, named<T, D>(x), dy, r, gamma(g), out(dx), out_dgamma(dg), out_dbeta(db));
    CHECK(count([&] { backward(layer_norm{}, named<T, D>(x), dy, r, gamma(g), out(dx), out_dgamma(dg), out_dbeta(db)); }) == 0);
    CHECK(xt::allclose(dg, gr.dgamma, 0.0, 0.0));
    CHECK(xt::allclose(db, gr.dbeta, 0.0, 0.0));
    // so also with parameters over 64 K values (LayerNorm over C,H,W), at one and two threads,
    // where fresh work space would page-fault megabytes on every call
    xt::xtensor<float, 4> img = th::randn({3, 4, 128, 128}, 0.5, 2.0), dimg = th::randn({3, 4, 128, 128}), dximg = img;
    xt::xtensor<float, 3> gi = th::randn({4, 128, 128}, 1.0, 0.5), bi = th::randn({4, 128, 128});
    xt::xtensor<float, 3> dg1, db1;  // one thread's, which two threads' (merged a share each) must match
    for (int nt : {1, 2}) {
        auto ri = forward(layer_norm_cnn{}, named<N, C, H, W>(img), gamma(gi), beta(bi), threads(nt));
        auto first = backward(layer_norm_cnn{}, named<N, C, H, W>(img), dimg, ri, gamma(gi), out(dximg), threads(nt));
        decltype(first) again;
        CHECK(count([&] { again = backward(layer_norm_cnn{}, named<N, C, H, W>(img), dimg, ri, gamma(gi), out(dximg), threads(nt)); }) <= 2);
        CHECK(xt::allclose(again.dgamma, first.dgamma, 0.0, 0.0));  // the kept sums start from zero again
        CHECK(xt::allclose(again.dbeta, first.dbeta, 0.0, 0.0));
        if (nt == 1) {
            dg1 = first.dgamma, db1 = first.dbeta;
        } else {
            CHECK(th::rel_err(first.dgamma, dg1) < 1e-6);
            CHECK(th::rel_err(first.dbeta, db1) < 1e-6);
        }
    }
}

TEST_CASE("work space is kept from call to call: no block of 4 KiB or more after the first call, on any thread") {
    // wide per-channel work arrays (2048 channels: sums, merged partial sums, coefficients of
    // 8-48 KiB each) fresh from the heap on every call made glibc's heap grow and shrink several
    // times per call (BatchNorm NHWC backward at two threads: 1.5x the time); each thread keeps its
    // blocks for the next call. Counted: every thread of the team (the suite's parallel bound is 0).
    auto count = [](auto&& f) {
        f();  // the first call takes the blocks
        blocks = 0;
        counting_blocks = true;
        f();
        f();
        counting_blocks = false;
        return blocks.load() / 2;
    };
    const std::size_t c = 2048;
    xt::xtensor<float, 1> g = th::randn({c}, 1.0, 0.5), b = th::randn({c}), dg = xt::zeros<float>({c}), db = dg;
    for (int nt : {1, 2}) {
        CAPTURE(nt);
        {  // channels-last: per-channel columns (the reduction split over the team)
            xt::xtensor<float, 4> x = th::randn({3, 2, 3, c}, 0.5, 2.0), dy = th::randn({3, 2, 3, c}), y = x, dx = x;
            auto r = forward(batch_norm{}, named<N, H, W, C>(x), gamma(g), beta(b), out(y), threads(nt));
            // what the call returns: the saved mean and rstd
            CHECK(count([&] { r = forward(batch_norm{}, named<N, H, W, C>(x), gamma(g), beta(b), out(y), threads(nt)); }) == 2);
            CHECK(count([&] { backward(batch_norm{}, named<N, H, W, C>(x), dy, r, gamma(g), out(dx), out_dgamma(dg), out_dbeta(db), threads(nt)); }) ==
                  0);
        }
        {  // channels-first with 7x7 planes: statistics in memory order, flat runs
            xt::xtensor<float, 4> x = th::randn({3, c, 7, 7}, 0.5, 2.0), dy = th::randn({3, c, 7, 7}), y = x, dx = x;
            auto r = forward(batch_norm{}, named<N, C, H, W>(x), gamma(g), beta(b), out(y), threads(nt));
            CHECK(count([&] { r = forward(batch_norm{}, named<N, C, H, W>(x), gamma(g), beta(b), out(y), threads(nt)); }) == 2);
            CHECK(count([&] { backward(batch_norm{}, named<N, C, H, W>(x), dy, r, gamma(g), out(dx), out_dgamma(dg), out_dbeta(db), threads(nt)); }) ==
                  0);
        }
    }
}

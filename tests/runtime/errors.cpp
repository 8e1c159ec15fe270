// Run-time misuse: each throws std::invalid_argument naming the axis and both extents.
#include "helpers.hpp"

#include <normspec/engine/forward.hpp>

#include <algorithm>
#include <cstdint>
#include <numeric>

using namespace normspec;

#define CHECK_INVALID(expr, text) CHECK_THROWS_WITH_AS(expr, doctest::Contains(text), std::invalid_argument)

TEST_CASE("parameter and running-statistics shapes are checked, naming the axis and both extents") {
    xt::xtensor<float, 4> x = xt::zeros<float>({2, 4, 3, 3});
    xt::xtensor<float, 1> g4 = xt::ones<float>({4}), g5 = xt::ones<float>({5});
    CHECK_INVALID(forward(batch_norm{}, named<N, C, H, W>(x), gamma(g5)),
                  "gamma axis C has extent 5 but the tensor's axis C has extent 4");
    CHECK_INVALID(forward(batch_norm{}, named<N, C, H, W>(x), gamma(g4), beta(g5)),
                  "beta axis C has extent 5 but the tensor's axis C has extent 4");
    xt::xtensor<float, 2> g2 = xt::ones<float>({4, 1});
    CHECK_INVALID(forward(batch_norm{}, named<N, C, H, W>(x), gamma(g2)), "gamma has 2 dimensions but must have 1 (axes <C>)");
    xt::xtensor<float, 1> rm = xt::zeros<float>({4}), rv3 = xt::ones<float>({3});
    CHECK_INVALID(forward(batch_norm{}, named<N, C, H, W>(x), running(rm, rv3)),
                  "running_var axis C has extent 3 but the statistics' axis C has extent 4");
    xt::xtensor<float, 3> lnx = xt::zeros<float>({2, 3, 8});
    xt::xtensor<float, 3> chw = xt::ones<float>({4, 3, 2});
    CHECK_INVALID(forward(layer_norm_cnn{}, named<N, C, H, W>(x), gamma(chw)),
                  "gamma axis W has extent 2 but the tensor's axis W has extent 3");
    xt::xtensor<float, 4> y = xt::zeros<float>({2, 4, 3, 5});
    CHECK_INVALID(forward(batch_norm{}, named<N, C, H, W>(x), out(y)), "out axis W has extent 5 but x's axis W has extent 3");
}

TEST_CASE("groups, eps and empty reductions are checked") {
    xt::xtensor<float, 4> x = xt::zeros<float>({2, 6, 3, 3});
    CHECK_INVALID(forward(group_norm<4>{}, named<N, C, H, W>(x)), "groups<C, 4>: G = 4 does not divide axis C of extent 6");
    CHECK_INVALID(forward(group_norm<>{}, named<N, C, H, W>(x), num_groups(5)),
                  "groups<C, dynamic>: G = 5 does not divide axis C of extent 6");
    CHECK_INVALID(forward(group_norm<>{}, named<N, C, H, W>(x), num_groups(0)), "needs the number of groups at run time");
    CHECK_INVALID(forward(batch_norm{}, named<N, C, H, W>(x), eps(0.0)), "eps must be a finite number > 0, got 0");
    CHECK_INVALID(forward(batch_norm{}, named<N, C, H, W>(x), eps(-1e-5)), "eps must be a finite number > 0");
    CHECK_INVALID(forward(batch_norm{}, named<N, C, H, W>(x), momentum(1.5)), "momentum must be in [0, 1], got 1.5");
    xt::xtensor<float, 4> empty = xt::zeros<float>({0, 6, 3, 3});
    CHECK_INVALID(forward(batch_norm{}, named<N, C, H, W>(empty)),
                  "empty reduction: reduce<N,H,W> spans no element (axis N has extent 0)");
    // no reduction is empty when only a kept axis is: nothing to do, and no error
    auto r = forward(instance_norm{}, named<N, C, H, W>(empty));
    CHECK(r.y.size() == 0);
}

TEST_CASE("running statistics in training need more than one value per statistic") {
    xt::xtensor<float, 4> x = xt::zeros<float>({1, 3, 1, 1});
    xt::xtensor<float, 1> rm = xt::zeros<float>({3}), rv = xt::ones<float>({3});
    CHECK_INVALID(forward(batch_norm{}, named<N, C, H, W>(x), running(rm, rv)),
                  "training with running statistics needs more than one value per statistic, but the reduction spans 1");
}

TEST_CASE("dynamic-rank tensors: the names must match the rank") {
    xt::xarray<float> x = xt::zeros<float>({2, 3, 4});
    CHECK_INVALID(forward(batch_norm{}, named<N, C, H, W>(x)), "the names <N,C,H,W> give 4 names to a tensor of rank 3");
}

TEST_CASE("the run-time front end reports spec and layout mismatches by name") {
    xt::xarray<float> x = xt::zeros<float>({2, 3, 4});
    dynamic_inputs<float> in;
    CHECK_INVALID(forward_dynamic<float>(describe<batch_norm>(), {"B", "T", "D"}, x, in),
                  "reduce<N> names an axis that the tensor <B,T,D> does not have");
    xt::xarray<float> g = xt::ones<float>({4});
    in.gamma = &g;
    CHECK_INVALID(forward_dynamic<float>(describe<layer_norm>(), {"B", "T", "T"}, x, in), "give axis T twice");
    CHECK_INVALID(forward_dynamic<float>(describe<rms_norm>(), {"B", "T", "D"}, x, dynamic_inputs<float>{nullptr, &g}),
                  "beta given to a norm without beta");
}

TEST_CASE("plans: every norm on every layout is a short pattern of kept and reduced loops") {
    auto pattern = [](const spec_desc& s, std::vector<std::string_view> names, std::vector<engine::index_t> shape,
                      engine::index_t groups = 0) {
        std::vector<float> buf(1);
        auto b = engine::bind(s, names, shape.data(), int(shape.size()), groups);
        auto x = engine::contiguous(buf.data(), shape);
        return engine::make_plan(b, x, x, false).pattern();
    };
    CHECK(pattern(describe<batch_norm>(), {"N", "C", "H", "W"}, {8, 16, 5, 5}) == "[reduce N, keep C, reduce H*W]");
    CHECK(pattern(describe<batch_norm>(), {"N", "H", "W", "C"}, {8, 5, 5, 16}) == "[reduce N*H*W, keep C]");
    CHECK(pattern(describe<layer_norm>(), {"B", "T", "D"}, {8, 16, 32}) == "[keep B*T, reduce D]");
    CHECK(pattern(describe<instance_norm>(), {"N", "C", "H", "W"}, {8, 16, 5, 5}) == "[keep N*C, reduce H*W]");
    CHECK(pattern(describe<group_norm<>>(), {"N", "C", "H", "W"}, {8, 16, 5, 5}, 4) == "[keep N*G(C), reduce C/G*H*W]");
    CHECK(pattern(describe<group_norm<>>(), {"N", "H", "W", "C"}, {8, 5, 5, 16}, 4) ==
          "[keep N, reduce H*W, keep G(C), reduce C/G]");
}

TEST_CASE("more than eight axes is an error, not a crash") {
    xt::xarray<float> x = xt::zeros<float>({1, 1, 1, 1, 1, 1, 1, 1, 2});
    dynamic_inputs<float> in;
    const std::vector<std::string_view> nine{"A", "B", "C", "E", "F", "G", "H", "T", "D"};
    CHECK_INVALID(forward_dynamic<float>(describe<layer_norm>(), nine, x, in), "tensors of rank > 8 are not supported");
    const std::vector<engine::index_t> shape(9, 2);
    CHECK_INVALID(engine::bind(describe<layer_norm>(), nine, shape.data(), 9), "9 axis names: tensors of rank > 8 are not supported");
    engine::fixed_vector<int, 2> v{1, 2};
    CHECK_THROWS_WITH_AS(v.push_back(3), doctest::Contains("rank > 8 are not supported"), std::length_error);
}

TEST_CASE("the engine's in-place vectors and loop names copy, assign and clear like std::vector and std::string") {
    using strings = engine::fixed_vector<std::string, engine::max_rank>;  // values that are not trivially copyable
    strings a{std::string(40, 'a'), "b"};
    strings b = a;
    b[0] += "!";
    CHECK(a[0] == std::string(40, 'a'));
    CHECK(b[0] == std::string(40, 'a') + "!");
    a = b;
    CHECK((a.size() == 2 && a[0] == b[0] && a[1] == "b"));
    a.clear();
    CHECK(a.empty());
    a.push_back("c");
    CHECK((a.size() == 1 && a.back() == "c"));
    engine::loop_label l("N");
    for (int i = 0; i < 40; ++i) l += "*H";
    CHECK(l.view().size() == 63);
    CHECK(l.str().substr(0, 5) == "N*H*H");
    CHECK(l.str().substr(60) == "...");
    CHECK(engine::loop_label("G(C)").str() == "G(C)");
}

TEST_CASE("the engine's per-lane arrays start on a cache line and keep their values as they grow") {
    using engine::simd::lanes;
    std::vector<lanes<float>> held;  // several alive at once, of sizes that are not multiples of a line
    for (std::size_t n : {1, 3, 17, 301, 2064, 100003}) {
        held.emplace_back(n, 1.5f);
        CHECK(reinterpret_cast<std::uintptr_t>(held.back().data()) % 64 == 0);
    }
    lanes<double> d;
    for (int i = 0; i < 1000; ++i) {  // reallocations move the values to new aligned blocks
        d.push_back(i);
        CHECK(reinterpret_cast<std::uintptr_t>(d.data()) % 64 == 0);
    }
    CHECK(std::accumulate(d.begin(), d.end(), 0.0) == 999.0 * 1000 / 2);
    for (const auto& v : held) CHECK(std::all_of(v.begin(), v.end(), [](float x) { return x == 1.5f; }));
    const float raw[5] = {1, 2, 3, 4, 5};  // wrapped: the coefficients repeated past the row's end
    const lanes<float> w = engine::simd::wrapped(raw, 5);
    CHECK(reinterpret_cast<std::uintptr_t>(w.data()) % 64 == 0);
    CHECK(w.size() == std::size_t(5 + engine::simd::width<float>));
    for (std::size_t k = 0; k < w.size(); ++k) CHECK(w[k] == raw[k % 5]);
    CHECK_THROWS_AS(engine::simd::line_allocator<double>().allocate(std::size_t(-1) / 4), std::bad_array_new_length);
}

TEST_CASE("blocks of rows: every row once, in order, in blocks of the size asked for") {
    // two loops, 3 x 7 rows at x steps 100 and 2, walked over sub-ranges in blocks of 4
    engine::loop_dims dims;
    engine::loop_dim outer, inner;
    outer.extent = 3, outer.sx = 100;
    inner.extent = 7, inner.sx = 2;
    dims.push_back(outer), dims.push_back(inner);
    auto x_of = [](engine::index_t r) { return (r / 7) * 100 + (r % 7) * 2; };
    for (engine::index_t begin : {0, 3})
        for (engine::index_t end : {begin, begin + 1, begin + 4, begin + 5, begin + 8, begin + 9, engine::index_t(21)}) {
            CAPTURE(begin);
            CAPTURE(end);
            std::vector<engine::index_t> buf, seen, counts;  // rows in block order, each block's size
            engine::for_blocks(dims, begin, end, 4, buf, [](const engine::offsets& o) { return o.x; },
                               [&](const engine::index_t* b, engine::index_t c) {
                                   seen.insert(seen.end(), b, b + c);
                                   counts.push_back(c);
                               });
            std::vector<engine::index_t> want;
            for (engine::index_t r = begin; r < end; ++r) want.push_back(x_of(r));
            CHECK(seen == want);
            for (std::size_t i = 0; i < counts.size(); ++i) CHECK(counts[i] == (i + 1 < counts.size() ? 4 : (end - begin - 1) % 4 + 1));
        }
}

TEST_CASE("the last-level cache: NORMSPEC_LLC_BYTES, then sysfs, then sysconf unless it is a host's total") {
    using engine::detail::llc_bytes_from;
    constexpr double MiB = 1024.0 * 1024;
    CHECK(llc_bytes_from("16M", 32 * MiB, 32 * MiB) == 16 * MiB);  // the variable first
    CHECK(llc_bytes_from("1048576", 0, 0) == MiB);
    CHECK(llc_bytes_from("512K", 0, 0) == 512 * 1024);
    CHECK(llc_bytes_from("1G", 0, 0) == 1024 * MiB);
    CHECK(llc_bytes_from(nullptr, 8 * MiB, 508 * MiB) == 8 * MiB);  // then sysfs
    CHECK(llc_bytes_from("", 8 * MiB, 508 * MiB) == 8 * MiB);       // set but empty: unset
    CHECK(llc_bytes_from(nullptr, 0, 96 * MiB) == 96 * MiB);         // then sysconf, up to one complex's largest
    CHECK(llc_bytes_from(nullptr, 0, 508 * MiB) == 32 * MiB);        // past it: a host's total, not one core's
    CHECK(llc_bytes_from(nullptr, 0, 0) == 32 * MiB);
    CHECK(llc_bytes_from(nullptr, 0, -1) == 32 * MiB);
    for (const char* bad : {"abc", "32X", "-4M", "0", "M"})
        CHECK_INVALID(llc_bytes_from(bad, 32 * MiB, 32 * MiB), ("NORMSPEC_LLC_BYTES is '" + std::string(bad) + "'; expected the last-level cache's size").c_str());
    CHECK(engine::detail::cache_size_of("32768K") == 32 * MiB);  // as sysfs writes it
}

TEST_CASE("the parallel bound: NORMSPEC_PARALLEL_BYTES, else 1 MiB of traffic") {
    using engine::detail::parallel_bytes_from;
    CHECK(parallel_bytes_from(nullptr) == 1024.0 * 1024);
    CHECK(parallel_bytes_from("") == 1024.0 * 1024);  // set but empty: unset
    CHECK(parallel_bytes_from("256K") == 256.0 * 1024);
    CHECK(parallel_bytes_from("3000000") == 3000000.0);
    CHECK(parallel_bytes_from("0") == 0.0);  // every call takes its threads
    for (const char* bad : {"abc", "1X", "-4M", "M"})
        CHECK_INVALID(parallel_bytes_from(bad), ("NORMSPEC_PARALLEL_BYTES is '" + std::string(bad) + "'; expected a number of bytes").c_str());
}

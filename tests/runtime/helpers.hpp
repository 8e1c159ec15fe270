// Test helpers: random data, calling any spec with the parameters it takes, comparing to the reference.
#ifndef NORMSPEC_TESTS_HELPERS_HPP
#define NORMSPEC_TESTS_HELPERS_HPP

#include "reference.hpp"

#include <normspec/normspec.hpp>

#include <cstdint>
#include <vector>

#include <sys/mman.h>
#include <unistd.h>

#include <doctest/doctest.h>
#include <xtensor/xrandom.hpp>
#include <xtensor/xview.hpp>

namespace th {

inline xt::xarray<double> randn(std::vector<std::size_t> shape, double offset = 0.0, double scale = 1.0) {
    static std::mt19937 engine(12345);
    xt::xarray<double> a = xt::xarray<double>::from_shape(shape);
    std::normal_distribution<double> d(offset, scale);
    for (auto& v : a) v = d(engine);
    return a;
}

/// normspec's parallel bound (engine::parallel_bytes) set to `bytes` for a scope. The suite runs
/// with it at 0 (main.cpp), so every threads(2) takes its team however small the call.
struct parallel_bytes_scope {
    double old;
    explicit parallel_bytes_scope(double bytes) : old(normspec::engine::parallel_bytes().exchange(bytes)) {}
    ~parallel_bytes_scope() { normspec::engine::parallel_bytes() = old; }
    parallel_bytes_scope(const parallel_bytes_scope&) = delete;
    parallel_bytes_scope& operator=(const parallel_bytes_scope&) = delete;
};

/// The first value of buf, at index `from` or later, that lies `offset` bytes past a multiple of
/// `modulus` bytes (placing an output off a vector boundary, or at a chosen page offset; from > 0
/// leaves values before it to check that nothing was written there); buf needs from + modulus /
/// sizeof(T) values to spare.
template <class T>
inline T* placed(std::vector<T>& buf, std::uintptr_t modulus, std::uintptr_t offset, std::size_t from = 0) {
    std::size_t k = from;
    while (reinterpret_cast<std::uintptr_t>(buf.data() + k) % modulus != offset % modulus) ++k;
    return buf.data() + k;
}

/// n values of T that end where an unreadable page begins: a kernel that reads past them
/// (a whole vector where a masked one belongs) faults.
template <class T>
struct guarded {
    T* data = nullptr;
    void* base = nullptr;
    std::size_t bytes = 0;
    explicit guarded(std::size_t n) {
        const std::size_t page = std::size_t(sysconf(_SC_PAGESIZE)), body = (n * sizeof(T) + page - 1) / page * page;
        bytes = body + page;
        base = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        REQUIRE(base != MAP_FAILED);
        REQUIRE(mprotect(static_cast<char*>(base) + body, page, PROT_NONE) == 0);
        data = reinterpret_cast<T*>(static_cast<char*>(base) + body) - n;
    }
    guarded(const guarded&) = delete;
    guarded& operator=(const guarded&) = delete;
    ~guarded() { munmap(base, bytes); }
};

/// The largest |a - b| over the largest |b| (at least 1).
template <class A, class B>
double rel_err(const A& a, const B& b) {
    xt::xarray<double> ad = xt::cast<double>(a), bd = xt::cast<double>(b);
    REQUIRE(ad.shape() == bd.shape());
    double err = 0, scale = 1;
    for (std::size_t i = 0; i < ad.size(); ++i) {
        err = std::max(err, std::abs(ad.data()[i] - bd.data()[i]));
        scale = std::max(scale, std::abs(bd.data()[i]));
    }
    return err / scale;
}

template <class T>
double tolerance() { return std::is_same_v<T, float> ? 2e-6 : 1e-12; }

/// forward(Spec{}, named<A...>(x), ...) with the parameters the spec takes, then `extra`.
template <class Spec, class... A, class X, class... Kw>
auto call(const X& x, const xt::xarray<double>& g, const xt::xarray<double>& b, long groups, Kw&&... extra) {
    using T = std::decay_t<typename std::decay_t<X>::value_type>;
    const xt::xarray<T> gt = xt::cast<T>(g), bt = xt::cast<T>(b);
    auto with_params = [&](auto&&... more) {
        if constexpr (Spec::has_beta)
            return normspec::forward(Spec{}, normspec::named<A...>(x), normspec::gamma(gt), normspec::beta(bt), more...);
        else if constexpr (Spec::has_gamma)
            return normspec::forward(Spec{}, normspec::named<A...>(x), normspec::gamma(gt), more...);
        else
            return normspec::forward(Spec{}, normspec::named<A...>(x), more...);
    };
    if constexpr (Spec::runtime_groups)
        return with_params(normspec::num_groups(groups), std::forward<Kw>(extra)...);
    else
        return with_params(std::forward<Kw>(extra)...);
}

/// Random gamma and beta on the spec's parameter axes, for a tensor named A... of this shape.
template <class Spec, class... A>
std::pair<xt::xarray<double>, xt::xarray<double>> params_for(const std::vector<std::size_t>& shape) {
    const std::vector<std::string_view> names{A::name...};
    std::vector<std::size_t> ps;
    for (auto p : normspec::describe<Spec>().params)
        for (std::size_t d = 0; d < names.size(); ++d)
            if (names[d] == p) ps.push_back(shape[d]);
    if (!Spec::has_gamma) return {};
    return {randn(ps, 1.0, 0.5), Spec::has_beta ? randn(ps, 0.0, 0.5) : xt::xarray<double>{}};
}

/// Runs Spec on x (named A...) and checks y, mean and rstd against the float64 reference.
template <class Spec, class... A, class X>
void check_against_reference(const X& x, long groups = 0) {
    using T = std::decay_t<typename std::decay_t<X>::value_type>;
    const xt::xarray<double> xd = xt::cast<double>(xt::xarray<T>(x));
    std::vector<std::size_t> shape(xd.shape().begin(), xd.shape().end());
    auto [g, b] = params_for<Spec, A...>(shape);
    const long G = Spec::static_groups ? long(Spec::static_groups) : groups;
    const auto want = ref::norm(normspec::describe<Spec>(), {A::name...}, xd, g, b, G, 1e-5);
    const auto got = call<Spec, A...>(x, g, b, groups);
    CHECK(rel_err(got.y, want.y) < tolerance<T>());
    CHECK(rel_err(got.rstd, want.rstd) < tolerance<T>());
    if constexpr (!Spec::is_rms) CHECK(rel_err(got.mean, want.mean) < tolerance<T>());
    for (auto sched : {normspec::schedule::fused, normspec::schedule::two_sweeps}) {  // both schedules, forced
        const auto forced = call<Spec, A...>(x, g, b, groups, sched);
        CHECK(rel_err(forced.y, want.y) < tolerance<T>());
        CHECK(rel_err(forced.rstd, want.rstd) < tolerance<T>());
    }

    // evaluation mode
    if constexpr (Spec::has_running_stats) {
        // running statistics equal to this batch's (biased) statistics must give the same y
        xt::xarray<T> rm = xt::cast<T>(want.mean);
        xt::xarray<T> rv = xt::cast<T>(1.0 / (want.rstd * want.rstd) - 1e-5);
        const auto eval = call<Spec, A...>(x, g, b, groups, normspec::running(rm, rv), normspec::mode::eval);
        CHECK(rel_err(eval.y, want.y) < 10 * tolerance<T>());
    } else {
        // one code path: evaluation is training
        const auto eval = call<Spec, A...>(x, g, b, groups, normspec::mode::eval);
        CHECK(rel_err(eval.y, got.y) == 0.0);
    }
}

}  // namespace th

#endif

// A float64 reference norm, written for clarity and independence from the engine: every element
// is visited by its multi-index; its statistic and parameter indices are computed from names.
#ifndef NORMSPEC_TESTS_REFERENCE_HPP
#define NORMSPEC_TESTS_REFERENCE_HPP

#include <normspec/spec.hpp>

#include <xtensor/xarray.hpp>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

namespace ref {

struct result {
    xt::xarray<double> y, mean, rstd, var_unbiased;
};

inline bool has(const std::vector<std::string_view>& v, std::string_view n) {
    return std::find(v.begin(), v.end(), n) != v.end();
}

/// y for spec `s` on x named `names`; gamma/beta in canonical parameter order (or empty).
/// groups: number of groups of the grouped axis (ignored without one).
inline result norm(const normspec::spec_desc& s, const std::vector<std::string_view>& names, const xt::xarray<double>& x,
                   const xt::xarray<double>& gamma, const xt::xarray<double>& beta, long groups, double eps) {
    const auto& shape = x.shape();
    const std::size_t rank = shape.size();
    std::vector<std::size_t> stat_shape, param_shape;
    for (std::size_t d = 0; d < rank; ++d) {
        if (names[d] == s.group_axis) stat_shape.push_back(std::size_t(groups));
        else if (!has(s.reduce, names[d])) stat_shape.push_back(shape[d]);
    }
    for (auto p : s.params)
        for (std::size_t d = 0; d < rank; ++d)
            if (names[d] == p) param_shape.push_back(shape[d]);
    auto stat_index = [&](const std::vector<std::size_t>& idx) {
        std::size_t k = 0, i = 0;
        for (std::size_t d = 0; d < rank; ++d) {
            if (names[d] == s.group_axis) {
                k = k * std::size_t(groups) + idx[d] / (shape[d] / std::size_t(groups));
                ++i;
            } else if (!has(s.reduce, names[d])) {
                k = k * shape[d] + idx[d];
                ++i;
            }
        }
        return k;
    };
    auto param_index = [&](const std::vector<std::size_t>& idx) {
        std::size_t k = 0;
        for (auto p : s.params)
            for (std::size_t d = 0; d < rank; ++d)
                if (names[d] == p) k = k * shape[d] + idx[d];
        return k;
    };
    auto for_each = [&](auto f) {
        std::vector<std::size_t> idx(rank, 0);
        for (std::size_t flat = 0; flat < x.size(); ++flat) {
            std::size_t rest = flat;
            for (std::size_t d = rank; d-- > 0;) {
                idx[d] = rest % shape[d];
                rest /= shape[d];
            }
            f(idx, x.data()[flat]);
        }
    };
    std::size_t nstat = 1;
    for (auto e : stat_shape) nstat *= e;
    std::vector<double> sum(nstat, 0), cnt(nstat, 0), m2(nstat, 0);
    for_each([&](auto& idx, double v) {
        sum[stat_index(idx)] += s.rms ? 0.0 : v;
        cnt[stat_index(idx)] += 1;
    });
    for_each([&](auto& idx, double v) {
        const std::size_t k = stat_index(idx);
        const double d = v - sum[k] / cnt[k];
        m2[k] += d * d;
    });
    result r;
    r.mean = xt::xarray<double>::from_shape(stat_shape);
    r.rstd = xt::xarray<double>::from_shape(stat_shape);
    r.var_unbiased = xt::xarray<double>::from_shape(stat_shape);
    for (std::size_t k = 0; k < nstat; ++k) {
        r.mean.data()[k] = sum[k] / cnt[k];
        r.rstd.data()[k] = 1.0 / std::sqrt(m2[k] / cnt[k] + eps);
        r.var_unbiased.data()[k] = cnt[k] > 1 ? m2[k] / (cnt[k] - 1) : 0.0;
    }
    r.y = xt::xarray<double>::from_shape(shape);
    std::size_t flat = 0;
    for_each([&](auto& idx, double v) {
        const std::size_t k = stat_index(idx), p = param_index(idx);
        double y = (v - r.mean.data()[k]) * r.rstd.data()[k];
        if (gamma.size() > 1 || gamma.dimension() > 0) y *= gamma.data()[p];
        if (beta.size() > 1 || beta.dimension() > 0) y += beta.data()[p];
        r.y.data()[flat++] = y;
    });
    return r;
}

}  // namespace ref

#endif

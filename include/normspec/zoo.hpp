// normspec/zoo.hpp
// The seed's norms, each one line of norm<>: no alias owns a kernel.
// zoo_table() lists them with the facts derived from their specs (printed by `normspec zoo`).
#ifndef NORMSPEC_ZOO_HPP
#define NORMSPEC_ZOO_HPP

#include "spec.hpp"

#include <string>
#include <vector>

namespace normspec {
using namespace normspec::axes;

using batch_norm = norm<reduce<N, H, W>, affine<C>>;
using layer_norm_cnn = norm<reduce<C, H, W>, affine<C, H, W>>;
using layer_norm = norm<reduce<D>, affine<D>>;
using instance_norm = norm<reduce<H, W>, affine<C>>;
template <std::size_t G = dynamic>
using group_norm = norm<reduce<C, H, W>, affine<C>, groups<C, G>>;
using rms_norm = norm<reduce<D>, scale<D>, rms>;

/// One row of the zoo table: the name, the spec and what follows from it.
struct zoo_row {
    std::string name, spec, stats_across, param_axes, params;
    bool train_eval_differ, couples_batch, packing_safe;
};

template <spec S>
zoo_row make_zoo_row(std::string name) {
    auto d = describe<S>();
    std::string params = S::has_beta ? "gamma, beta" : S::has_gamma ? "gamma" : "none";
    std::string across = names_of<typename S::reduce_axes>();
    if constexpr (S::grouped) across += " (per group of " + std::string(S::group_axis::name) + ")";
    return {std::move(name), to_string(d), across, names_of<typename S::param_axes>(), params,
            S::train_eval_differ, S::couples_batch, S::packing_safe};
}

inline std::vector<zoo_row> zoo_table() {
    return {make_zoo_row<batch_norm>("batch_norm"),   make_zoo_row<layer_norm_cnn>("layer_norm_cnn"),
            make_zoo_row<layer_norm>("layer_norm"),   make_zoo_row<instance_norm>("instance_norm"),
            make_zoo_row<group_norm<>>("group_norm"), make_zoo_row<rms_norm>("rms_norm")};
}

}  // namespace normspec

#endif  // NORMSPEC_ZOO_HPP

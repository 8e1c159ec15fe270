// Compile-only: the facts each spec derives, checked against the seed's table.
#include <normspec/zoo.hpp>

#include <type_traits>

namespace {
using namespace normspec;
using std::is_same_v;

// BatchNorm couples the batch: running statistics, train and eval differ, not packing-safe
static_assert(batch_norm::couples_batch && batch_norm::has_running_stats && batch_norm::train_eval_differ);
static_assert(!batch_norm::packing_safe);
// the others do not couple the batch; their train and eval are one code path
static_assert(!layer_norm_cnn::couples_batch && !layer_norm_cnn::has_running_stats);
static_assert(!layer_norm::couples_batch && !layer_norm::has_running_stats && !layer_norm::train_eval_differ);
static_assert(!instance_norm::couples_batch && !instance_norm::has_running_stats);
static_assert(!group_norm<32>::couples_batch && !group_norm<>::has_running_stats);
static_assert(!rms_norm::couples_batch && !rms_norm::has_running_stats);
// transformer LayerNorm and RMSNorm are packing-safe; BatchNorm over (B,T) is not
static_assert(layer_norm::packing_safe && rms_norm::packing_safe);
using batch_norm_tokens = norm<reduce<B, T>, affine<D>>;
static_assert(!batch_norm_tokens::packing_safe && batch_norm_tokens::couples_batch);
// a norm across the sequence alone does not couple the batch but is not packing-safe either
using seq_norm = norm<reduce<T>, affine<D>>;
static_assert(!seq_norm::couples_batch && !seq_norm::packing_safe);
// CNN norms over C,H,W or H,W are packing-safe by the definition (no batch or sequence axis)
static_assert(layer_norm_cnn::packing_safe && instance_norm::packing_safe && group_norm<4>::packing_safe);

// parameters
static_assert(is_same_v<batch_norm::param_axes, axis_list<C>> && batch_norm::has_gamma && batch_norm::has_beta);
static_assert(is_same_v<layer_norm_cnn::param_axes, axis_list<C, H, W>>);
static_assert(is_same_v<rms_norm::param_axes, axis_list<D>> && rms_norm::has_gamma && !rms_norm::has_beta);
static_assert(rms_norm::is_rms && !layer_norm::is_rms);
using plain = norm<reduce<D>>;
static_assert(!plain::has_gamma && !plain::has_beta && plain::params == param_kind::none);

// statistic axes: the tensor's axes minus the reduced ones, in the tensor's order,
// with group_of<A> in place of a grouped axis
static_assert(is_same_v<batch_norm::stat_axes<N, C, H, W>, axis_list<C>>);
static_assert(is_same_v<batch_norm::stat_axes<N, H, W, C>, axis_list<C>>);
static_assert(is_same_v<layer_norm_cnn::stat_axes<N, C, H, W>, axis_list<N>>);
static_assert(is_same_v<layer_norm::stat_axes<B, T, D>, axis_list<B, T>>);
static_assert(is_same_v<instance_norm::stat_axes<N, C, H, W>, axis_list<N, C>>);
static_assert(is_same_v<instance_norm::stat_axes<N, H, W, C>, axis_list<N, C>>);
static_assert(is_same_v<group_norm<4>::stat_axes<N, C, H, W>, axis_list<N, group_of<C>>>);
static_assert(is_same_v<group_norm<4>::stat_axes<N, H, W, C>, axis_list<N, group_of<C>>>);
static_assert(is_same_v<rms_norm::stat_axes<B, T, D>, axis_list<B, T>>);

// groups
static_assert(group_norm<32>::grouped && group_norm<32>::static_groups == 32 && !group_norm<32>::runtime_groups);
static_assert(group_norm<>::grouped && group_norm<>::runtime_groups);
static_assert(!batch_norm::grouped);

// binding checks that pass
static_assert(check_binding<batch_norm, axis_list<N, H, W, C>>());
static_assert(check_binding<layer_norm, axis_list<T, D>>());
}  // namespace

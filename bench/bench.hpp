// bench/bench.hpp
// The benchmark's vocabulary: a case (norm, layout, shape), an operation, and implementations
// ("impls") that run a case on preallocated data. Each impl lives in its own translation unit so
// the heavy peers (libtorch, oneDNN) stay out of the others; all of them are checked against
// normspec's output before they are timed.
#ifndef NORMSPEC_BENCH_HPP
#define NORMSPEC_BENCH_HPP

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <new>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace bench {

inline constexpr double llc_bytes = 32.0 * 1024 * 1024;  // this machine's L3
inline constexpr float eps = 1e-5f;
inline constexpr float momentum = 0.1f;

enum class op { fwd_train, fwd_eval, bwd };  // bwd: gradients of a training-mode forward
inline const char* op_name(op o) { return o == op::fwd_train ? "fwd_train" : o == op::fwd_eval ? "fwd_eval" : "bwd"; }

struct bench_case {
    std::string norm;    // batch_norm, layer_norm_cnn, layer_norm, instance_norm, group_norm, rms_norm
    std::string layout;  // NCHW, NHWC, TD
    std::vector<std::int64_t> shape;  // in the logical order N,C,H,W (or T,D), whatever the layout
    int groups = 0;

    std::int64_t size() const {
        std::int64_t n = 1;
        for (auto e : shape) n *= e;
        return n;
    }
    std::int64_t N() const { return shape[0]; }
    std::int64_t C() const { return shape[1]; }  // channels (NCHW order), or D of a (T,D) case
    std::int64_t HW() const { return shape.size() == 4 ? shape[2] * shape[3] : 1; }
    bool nhwc() const { return layout == "NHWC"; }
    std::string shape_name() const {
        std::string s;
        for (auto e : shape) s += (s.empty() ? "" : "x") + std::to_string(e);
        return s;
    }
    /// x and y together do not fit in the last-level cache
    bool out_of_cache() const { return 2.0 * 4.0 * double(size()) > llc_bytes; }
    /// In training, the statistics of one kept index need the whole tensor (BatchNorm), so out of
    /// cache the normalize sweep reads x a second time from memory. In evaluation the running
    /// statistics are known before x is read: one read.
    bool second_read(op o) const { return o == op::fwd_train && norm == "batch_norm" && out_of_cache(); }
    /// Bytes the traffic model says one run moves: forward: x read (once, or twice), y written;
    /// backward: x and dy read, dx written.
    double model_bytes(op o) const {
        if (o == op::bwd) return 4.0 * double(size()) * 3.0;
        return 4.0 * double(size()) * (second_read(o) ? 3.0 : 2.0);
    }
};

/// Where the buffers lie. A load that follows a store to the same address modulo 4 KiB waits on
/// it, so a memory-bound kernel's speed depends on where its input and output fall modulo 4 KiB.
/// Every implementation reads the same inputs, each starting on a 4 KiB boundary, and writes its
/// own output at the same offset past a 4 KiB boundary (output_offset bytes: 0, or what
/// --normspec_offset says), so none of them is timed at a placement the others do not get.
inline std::size_t output_offset = 0;

template <class T, bool Output>
struct paged {
    using value_type = T;
    template <class U>
    struct rebind {
        using other = paged<U, Output>;
    };
    paged() = default;
    template <class U>
    paged(const paged<U, Output>&) {}
    T* allocate(std::size_t n) {
        const std::size_t offset = Output ? output_offset : 0;
        const std::size_t bytes = (n * sizeof(T) + offset + 4096) / 4096 * 4096;  // never 0
        void* p = std::aligned_alloc(4096, bytes);
        if (!p) throw std::bad_alloc();
        return reinterpret_cast<T*>(static_cast<char*>(p) + offset);
    }
    void deallocate(T* p, std::size_t) { std::free(reinterpret_cast<void*>(reinterpret_cast<std::uintptr_t>(p) & ~std::uintptr_t(4095))); }
    template <class U>
    bool operator==(const paged<U, Output>&) const { return true; }
};
using input_buffer = std::vector<float, paged<float, false>>;
using output_buffer = std::vector<float, paged<float, true>>;

/// Inputs of a case, float32, x in the case's memory layout; parameters on the spec's axes.
struct inputs {
    input_buffer x, gamma, beta, dy;
    std::vector<float> running_mean, running_var;
    std::int64_t param_size = 0, stat_size = 0;
};

struct runner {
    virtual ~runner() = default;
    virtual void run() = 0;
    virtual const float* y() const = 0;  // in the case's memory layout (bwd: dx)
};

/// An implementation: makes a runner for (case, op, threads), or nullptr where it has no such kernel.
using factory = std::function<std::unique_ptr<runner>(const bench_case&, op, int threads, const inputs&)>;

std::map<std::string, factory>& registry();
struct registration {
    registration(const std::string& name, factory f) { registry()[name] = std::move(f); }
};

/// A runner over its own copy of y (and running statistics), preallocated; keeps its case.
struct owned_output : runner {
    const bench_case& c;
    const inputs& in;
    op o;
    output_buffer out;
    std::vector<float> rm, rv;
    owned_output(const bench_case& c_, op o_, const inputs& in_)
        : c(c_), in(in_), o(o_), out(static_cast<std::size_t>(c_.size())), rm(in_.running_mean), rv(in_.running_var) {}
    const float* y() const override { return out.data(); }
};

void set_threads(int threads);

}  // namespace bench

#endif

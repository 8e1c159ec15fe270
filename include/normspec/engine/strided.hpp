// normspec/engine/strided.hpp
// The engine's view of memory: a pointer, extents and element strides (any sign), rank <= 8.
// Front ends (xtensor bindings, the CLI) lower their tensors to this; the engine never sees xtensor.
#ifndef NORMSPEC_ENGINE_STRIDED_HPP
#define NORMSPEC_ENGINE_STRIDED_HPP

#include <array>
#include <cstddef>
#include <cstring>
#include <initializer_list>
#include <new>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>

namespace normspec::engine {

inline constexpr int max_rank = 8;
using index_t = std::ptrdiff_t;

/// At most N values held in place, with the vector operations the engine uses: the loop dims,
/// extents and axis names of one call never exceed the rank limit, and a small call's fixed cost
/// was largely malloc and free (30 allocations per 1x16 LayerNorm forward before these).
template <class T, std::size_t N>
class fixed_vector {
public:
    fixed_vector() {}  // no values constructed: a small call makes many of these
    fixed_vector(std::initializer_list<T> values) : fixed_vector(values.begin(), values.end()) {}
    template <class It>
    fixed_vector(It first, It last) {
        for (; first != last; ++first) push_back(T(*first));
    }
    fixed_vector(const fixed_vector& o) { copy_from(o); }
    fixed_vector& operator=(const fixed_vector& o) {
        if (this != &o) {
            clear();
            copy_from(o);
        }
        return *this;
    }
    ~fixed_vector() { clear(); }
    std::size_t size() const { return n_; }
    bool empty() const { return n_ == 0; }
    T* data() { return v_; }
    const T* data() const { return v_; }
    T* begin() { return v_; }
    T* end() { return v_ + n_; }
    const T* begin() const { return v_; }
    const T* end() const { return v_ + n_; }
    T& operator[](std::size_t i) { return v_[i]; }
    const T& operator[](std::size_t i) const { return v_[i]; }
    T& back() { return v_[n_ - 1]; }
    const T& back() const { return v_[n_ - 1]; }
    void push_back(const T& value) {
        if (n_ == N) [[unlikely]]
            too_many();
        ::new (static_cast<void*>(v_ + n_)) T(value);
        ++n_;
    }
    void clear() {
        if constexpr (!std::is_trivially_destructible_v<T>)
            for (std::size_t i = 0; i < n_; ++i) v_[i].~T();
        n_ = 0;
    }

private:
    // out of line, so that push_back inlines (the loop dims of a small call's plan and decision
    // are copied and pushed many times: 12-14 % of a 2x8 LayerNorm call's samples were
    // in calls to push_back; inlined, with copies as one memcpy, that call took 0.91-0.92 of the
    // time, old and new in one process)
    [[noreturn, gnu::cold, gnu::noinline]] static void too_many() {
        throw std::length_error("normspec: more than " + std::to_string(N) + " axes or loops (tensors of rank > 8 are not supported)");
    }
    void copy_from(const fixed_vector& o) {
        if constexpr (std::is_trivially_copyable_v<T>)
            std::memcpy(static_cast<void*>(v_), static_cast<const void*>(o.v_), o.n_ * sizeof(T));
        else
            for (std::size_t i = 0; i < o.n_; ++i) ::new (static_cast<void*>(v_ + i)) T(o.v_[i]);
        n_ = o.n_;
    }

    union {
        T v_[N];  // the first n_ constructed
    };
    std::size_t n_ = 0;
};

/// extents of one tensor, axis names of one tensor (views of names that outlive the call: an
/// axis type's own name, or the caller's strings; with a std::string made per axis name and per
/// message part, a 1x8 or 2x8 LayerNorm forward took 1.18-1.22x the time it takes with views)
using extents = fixed_vector<index_t, max_rank>;
using axis_names = fixed_vector<std::string_view, max_rank>;

template <class T>
struct strided {
    T* data = nullptr;
    int rank = 0;
    std::array<index_t, max_rank> shape{};
    std::array<index_t, max_rank> strides{};

    bool empty() const { return data == nullptr; }
    index_t size() const {
        index_t n = 1;
        for (int d = 0; d < rank; ++d) n *= shape[d];
        return n;
    }
};

/// A contiguous row-major view of `data` with the given extents.
template <class T, class Shape>
strided<T> contiguous(T* data, const Shape& shape) {
    strided<T> s;
    s.data = data;
    s.rank = static_cast<int>(shape.size());
    if (s.rank > max_rank) throw std::invalid_argument("normspec: tensors of rank > 8 are not supported");
    index_t stride = 1;
    for (int d = s.rank - 1; d >= 0; --d) {
        s.shape[d] = static_cast<index_t>(shape[d]);
        s.strides[d] = stride;
        stride *= s.shape[d];
    }
    return s;
}

}  // namespace normspec::engine

#endif  // NORMSPEC_ENGINE_STRIDED_HPP

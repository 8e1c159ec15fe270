// normspec/engine/strided.hpp
// The engine's view of memory: a pointer, extents and element strides (any sign), rank <= 8.
// Front ends (xtensor bindings, the CLI) lower their tensors to this; the engine never sees xtensor.
#ifndef NORMSPEC_ENGINE_STRIDED_HPP
#define NORMSPEC_ENGINE_STRIDED_HPP

#include <array>
#include <cstddef>
#include <stdexcept>
#include <string>

namespace normspec::engine {

inline constexpr int max_rank = 8;
using index_t = std::ptrdiff_t;

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

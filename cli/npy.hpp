// cli/npy.hpp
// Reading .npy files whose dtype is known only at run time (float32 or float64).
#ifndef NORMSPEC_CLI_NPY_HPP
#define NORMSPEC_CLI_NPY_HPP

#include <xtensor/xnpy.hpp>

#include <fstream>
#include <stdexcept>
#include <string>

namespace normspec::cli {

enum class dtype { f32, f64 };

/// The dtype of a .npy file, from its header; throws with the file name otherwise.
inline dtype npy_dtype(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error("cannot open " + path);
    std::string head(256, '\0');
    in.read(head.data(), static_cast<std::streamsize>(head.size()));
    head.resize(static_cast<std::size_t>(in.gcount()));
    if (head.rfind("\x93NUMPY", 0) != 0) throw std::runtime_error(path + " is not a .npy file");
    if (head.find("'fortran_order': True") != std::string::npos)
        throw std::runtime_error(path + " is in Fortran order; save it C-contiguous");
    if (head.find("'<f4'") != std::string::npos) return dtype::f32;
    if (head.find("'<f8'") != std::string::npos) return dtype::f64;
    throw std::runtime_error(path + " holds neither float32 nor float64 (little-endian) data");
}

template <class T>
xt::xarray<T> load(const std::string& path) {
    const dtype want = std::is_same_v<T, float> ? dtype::f32 : dtype::f64;
    if (npy_dtype(path) != want)
        throw std::runtime_error(path + " has a different dtype than --x (" + (want == dtype::f32 ? "float32" : "float64") +
                                 " expected)");
    return xt::load_npy<T>(path);
}

}  // namespace normspec::cli

#endif  // NORMSPEC_CLI_NPY_HPP

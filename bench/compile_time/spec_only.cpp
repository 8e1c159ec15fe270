// Compile-time measurement: the spec layer alone (no xtensor), as a spec-only translation unit sees it.
#include <normspec/zoo.hpp>

int main() {
    using namespace normspec;
    static_assert(batch_norm::couples_batch && rms_norm::packing_safe);
    return zoo_table().size() == 6 ? 0 : 1;
}

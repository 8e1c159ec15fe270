#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <normspec/engine/forward.hpp>

int main(int argc, char** argv) {
    // Every threads(2) in these tests takes its team however small the call, so the threaded
    // kernels meet the odd shapes (primes, 1, short tails); the default bound has a test of its own.
    normspec::engine::parallel_bytes() = 0;
    return doctest::Context(argc, argv).run();
}

// examples/example_check.hpp: what every example uses to check itself.
#ifndef NORMSPEC_EXAMPLE_CHECK_HPP
#define NORMSPEC_EXAMPLE_CHECK_HPP

#include <cstdio>
#include <cstdlib>

inline void expect(bool ok, const char* what) {
    std::printf("%s %s\n", ok ? "ok  " : "FAIL", what);
    if (!ok) std::exit(1);
}

#endif

// The harness itself: FAIL_SANITY must fail with its message; the clean build must not pass as a
// compile-fail test; and a failure with another message must not pass either.
#include <normspec/diagnostics.hpp>

template <class T>
struct sanity_check {
    static_assert(normspec::diagnostic::always_false<T>, "normspec-sanity: the harness sees this message");
};

#if defined(FAIL_SANITY)
template struct sanity_check<int>;
#endif

// normspec/normspec.hpp
// Everything: the vocabulary, specs and the zoo (no xtensor), and the forward and backward passes
// on xtensor data.
#ifndef NORMSPEC_NORMSPEC_HPP
#define NORMSPEC_NORMSPEC_HPP

#include "axes.hpp"
#include "backward.hpp"
#include "clauses.hpp"
#include "dynamic.hpp"
#include "forward.hpp"
#include "named.hpp"
#include "spec.hpp"
#include "zoo.hpp"

#endif  // NORMSPEC_NORMSPEC_HPP

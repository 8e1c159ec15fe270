# Compile-fail tests, after Eigen's failtest: one source is compiled twice, once as it is (it must
# compile: the harness would otherwise pass on any error) and once with -D<MACRO>, which flips it
# into the misuse. The failing build passes only if the compiler's output matches REGEX
# (PASS_REGULAR_EXPRESSION), so a test can pass only for the diagnostic it names.
#
#   normspec_compile_fail_source(SOURCE file.cpp)                  -> test compile_fail.<file>.compiles
#   normspec_compile_fail(NAME n SOURCE file.cpp MACRO M REGEX r)  -> test compile_fail.<n>
#   normspec_compile_fail_cases(SOURCE file.cpp PREFIX p CASES "NAME|regex" ...)
#                                     -> test compile_fail.<name> per case, MACRO FAIL_<NAME>, REGEX p<regex>
function(_normspec_compile_command out source)
  set(cmd ${CMAKE_CXX_COMPILER} -std=c++20 -fsyntax-only -fdiagnostics-color=never -I${PROJECT_SOURCE_DIR}/include
          -I${CMAKE_CURRENT_SOURCE_DIR} ${ARGN} ${source})
  set(${out} ${cmd} PARENT_SCOPE)
endfunction()

function(normspec_compile_fail_source)
  cmake_parse_arguments(CF "" "SOURCE" "" ${ARGN})
  get_filename_component(stem ${CF_SOURCE} NAME_WE)
  _normspec_compile_command(cmd ${CMAKE_CURRENT_SOURCE_DIR}/${CF_SOURCE})
  add_test(NAME compile_fail.${stem}.compiles COMMAND ${cmd})
endfunction()

function(normspec_compile_fail)
  cmake_parse_arguments(CF "" "NAME;SOURCE;MACRO;REGEX" "" ${ARGN})
  _normspec_compile_command(cmd ${CMAKE_CURRENT_SOURCE_DIR}/${CF_SOURCE} -D${CF_MACRO})
  add_test(NAME compile_fail.${CF_NAME} COMMAND ${cmd})
  set_tests_properties(compile_fail.${CF_NAME} PROPERTIES PASS_REGULAR_EXPRESSION "${CF_REGEX}")
endfunction()

function(normspec_compile_fail_cases)
  cmake_parse_arguments(CF "" "SOURCE;PREFIX" "CASES" ${ARGN})
  normspec_compile_fail_source(SOURCE ${CF_SOURCE})
  foreach(case IN LISTS CF_CASES)
    string(FIND "${case}" "|" bar)
    string(SUBSTRING "${case}" 0 ${bar} name)
    math(EXPR start "${bar} + 1")
    string(SUBSTRING "${case}" ${start} -1 regex)
    string(TOLOWER ${name} lname)
    normspec_compile_fail(NAME ${lname} SOURCE ${CF_SOURCE} MACRO FAIL_${name} REGEX "${CF_PREFIX}${regex}")
  endforeach()
endfunction()

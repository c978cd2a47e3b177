# kvtier_test(NAME SOURCES a.cpp [b.cpp] LIBS lib... [LABELS l...])
# Registers one Catch2 test binary with CTest.  Unit tests live next to the code they test
# (e.g. tiers/host/tests/), integration tests under tests/.
function(kvtier_test name)
  cmake_parse_arguments(T "" "" "SOURCES;LIBS;LABELS" ${ARGN})
  add_executable(${name} ${T_SOURCES})
  target_link_libraries(${name} PRIVATE Catch2::Catch2WithMain ${T_LIBS})
  target_compile_definitions(${name} PRIVATE
    KVTIER_SOURCE_DIR="${PROJECT_SOURCE_DIR}" KVTIER_BINARY_DIR="${PROJECT_BINARY_DIR}")
  add_test(NAME ${name} COMMAND ${name})
  if(T_LABELS)
    set_tests_properties(${name} PROPERTIES LABELS "${T_LABELS}")
  endif()
endfunction()

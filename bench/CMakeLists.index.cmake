# Semantic index benchmark (docs/index.md); included from bench/CMakeLists.txt.  CI:
#   add_test(NAME bench_index_quick COMMAND index_bench --quick)  (labels bench;nosan)
if(NOT TARGET kvtier_bench_util)
  add_library(kvtier_bench_util STATIC ${CMAKE_CURRENT_LIST_DIR}/bench_util.cpp)
  target_include_directories(kvtier_bench_util PUBLIC ${PROJECT_SOURCE_DIR})
endif()
add_executable(index_bench ${CMAKE_CURRENT_LIST_DIR}/index_bench.cpp)
target_link_libraries(index_bench PRIVATE kvtier_index kvtier_bench_util faiss OpenMP::OpenMP_CXX)

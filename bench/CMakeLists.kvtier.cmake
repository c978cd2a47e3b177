# kvtier_bench: the host tier's foundation benchmark (docs/benchmarks.md); included from
# bench/CMakeLists.txt.  bench_util is shared by every benchmark that wants the baselines.
if(NOT TARGET kvtier_bench_util)
  add_library(kvtier_bench_util STATIC ${CMAKE_CURRENT_LIST_DIR}/bench_util.cpp)
  target_include_directories(kvtier_bench_util PUBLIC ${PROJECT_SOURCE_DIR})
endif()
add_executable(kvtier_bench ${CMAKE_CURRENT_LIST_DIR}/kvtier_bench.cpp)
target_link_libraries(kvtier_bench PRIVATE kvtier_bench_util kvtier kvtier_testing
  PkgConfig::HIREDIS nlohmann_json::nlohmann_json)

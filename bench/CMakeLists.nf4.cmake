# NF4 benchmark and quality programs; included from bench/CMakeLists.txt.
add_executable(nf4_bench ${CMAKE_CURRENT_LIST_DIR}/nf4_bench.cpp)
target_link_libraries(nf4_bench PRIVATE kvtier_kernels)
add_executable(nf4_quality ${CMAKE_CURRENT_LIST_DIR}/nf4_quality.cpp)
target_link_libraries(nf4_quality PRIVATE kvtier_kernels)

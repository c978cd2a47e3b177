# NF4 benchmark and quality programs; included from bench/CMakeLists.txt.
add_executable(nf4_bench ${CMAKE_CURRENT_LIST_DIR}/nf4_bench.cpp)
target_link_libraries(nf4_bench PRIVATE kvtier_kernels)
add_executable(nf4_quality ${CMAKE_CURRENT_LIST_DIR}/nf4_quality.cpp)
target_link_libraries(nf4_quality PRIVATE kvtier_kernels)
# Bytes per fp16 byte of KV blocks by NF4 setting; --check fails below the 3.88x goal.
add_executable(nf4_capacity ${CMAKE_CURRENT_LIST_DIR}/nf4_capacity.cpp)
target_link_libraries(nf4_capacity PRIVATE kvtier_engine)

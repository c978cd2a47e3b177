# Disk tier benchmark; included from bench/CMakeLists.txt.
add_executable(disk_bench ${CMAKE_CURRENT_LIST_DIR}/disk_bench.cpp)
pkg_check_modules(DISK_BENCH_URING REQUIRED IMPORTED_TARGET liburing)
target_link_libraries(disk_bench PRIVATE kvtier_disk PkgConfig::DISK_BENCH_URING)

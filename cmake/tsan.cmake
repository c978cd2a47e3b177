# ThreadSanitizer build (KVTIER_TSAN), configured and run by scripts/tsan.sh.
#
# Every C and C++ translation unit is instrumented: the daemon, libkvtier, the tiers, the index
# and the tests, so races between the daemon's threads (io threads, disk writer, committer and
# workers, io_uring completions, index saver and rebuild) show in the integration tests too,
# whose kvtierd is built here.  -O1 -g1 whatever the build type: TSan slows code 5-15x and the
# NF4 codec, hashing and FAISS scans the tests drive crawl at -O0, while -O1 with line tables
# only (-g1: enough for file:line in every frame of a report) compiles about as fast as -O0 -g
# (server.cpp: 18 s against 24 s at -O1 -g on this machine).
#
# CUDA stays off: nvcc output cannot be instrumented.  Configure with -DKVTIER_CUDA=OFF.
if(KVTIER_CUDA)
  message(WARNING "KVTIER_TSAN: configure with -DKVTIER_CUDA=OFF; nvcc code is not instrumented")
endif()
if(KVTIER_SANITIZE)
  message(FATAL_ERROR "KVTIER_TSAN and KVTIER_SANITIZE (ASan) cannot be combined")
endif()
add_compile_options($<$<COMPILE_LANGUAGE:C,CXX>:-fsanitize=thread>
                    $<$<COMPILE_LANGUAGE:C,CXX>:-fno-omit-frame-pointer>
                    $<$<COMPILE_LANGUAGE:C,CXX>:-O1> $<$<COMPILE_LANGUAGE:C,CXX>:-g1>)
# gcc 12 warns (-Wtsan) at every std::atomic_thread_fence; the only ones here are Boost.Asio's
# std_fenced_block around each handler call, and every handler also passes through the
# io_context scheduler's mutex, which TSan does see: the unmodelled fence hides no ordering.
add_compile_options($<$<COMPILE_LANGUAGE:CXX>:-Wno-tsan>)
add_link_options(-fsanitize=thread)

# The TSan test set: CTest tests labelled "tsan" (ctest -L tsan), each one Catch2 case (or a
# group) of an existing test, chosen for the threads it drives.  Registered here, not where
# the binaries are, because whole binaries do not fit scripts/tsan.sh's 10 minutes on 2 cores
# (under TSan integration_test runs ~2.5 min, disk_tier_test ~1.7 min) and the Catch2 filters
# need test entries of their own.  "-w NoTests": a filter that no longer matches a case (a
# renamed test) fails instead of passing empty.  Filters are name prefixes ending in "*" where
# the name holds a ',' or ';' (Catch2 and CMake list separators).
#
# The integration cases run from tsan_integration_test: the five files of tests/integration/
# they live in, with tests/testing/ compiled in.  Building integration_test instead compiles
# six more test files, and linking kvtier_testing brings kvtierctl and c_abi_smoke: together
# ~4.5 of ~20 CPU-minutes of the TSan build, which on 2 shared cores is what the budget lacked.
#
# Environment of every test (the daemons they start inherit it):
# - TSAN_OPTIONS: stop at the first report, both stacks of a lock-order inversion, reports
#   into tsan-logs/ (a kvtierd's stderr goes to a log file its test deletes; scripts/tsan.sh
#   prints tsan-logs/ and fails when it is not empty), scripts/tsan.supp.
# - OMP_NUM_THREADS=1: libgomp (FAISS's OpenMP) is not instrumented, so TSan cannot see its
#   barriers, and every parallel region of more than one thread reports false races inside
#   FAISS and in our code that FAISS calls (index_test alone: ~80 reports, 10 min).  Our own
#   threads (index rebuild and saver, io threads) still run concurrently with one OpenMP thread.
set(KVTIER_TSAN_LOG_DIR ${PROJECT_BINARY_DIR}/tsan-logs)
file(MAKE_DIRECTORY ${KVTIER_TSAN_LOG_DIR})  # TSan does not create it
string(JOIN ":" KVTIER_TSAN_OPTIONS halt_on_error=1 second_deadlock_stack=1
       log_path=${KVTIER_TSAN_LOG_DIR}/tsan suppressions=${PROJECT_SOURCE_DIR}/scripts/tsan.supp)
set(KVTIER_TSAN_ENV "TSAN_OPTIONS=${KVTIER_TSAN_OPTIONS}" "OMP_NUM_THREADS=1")

# kvtier_tsan_test(NAME TARGET catch2-args...): test tsan_NAME runs TARGET with the arguments.
function(kvtier_tsan_test name target)
  add_test(NAME tsan_${name} COMMAND $<TARGET_FILE:${target}> -w NoTests ${ARGN})
  set_tests_properties(tsan_${name} PROPERTIES LABELS tsan TIMEOUT 300
                       ENVIRONMENT "${KVTIER_TSAN_ENV}")
endfunction()

function(kvtier_tsan_tests)
  set(t ${PROJECT_SOURCE_DIR}/tests)
  add_executable(tsan_integration_test
    ${t}/integration/put_get_test.cpp ${t}/integration/channel_test.cpp
    ${t}/integration/disk_test.cpp ${t}/integration/semantic_test.cpp
    ${t}/integration/gpu_tier_test.cpp ${t}/integration/lookup_index_test.cpp
    ${t}/integration/release_test.cpp
    ${t}/testing/daemon.cpp ${t}/testing/device_read.cpp ${t}/testing/child_process.cpp)
  target_include_directories(tsan_integration_test PRIVATE ${PROJECT_SOURCE_DIR})
  target_link_libraries(tsan_integration_test PRIVATE Catch2::Catch2WithMain kvtier kvtier_common
                        kvtier_gpu kvtier_kernels)
  target_compile_definitions(tsan_integration_test PRIVATE
    KVTIER_SOURCE_DIR="${PROJECT_SOURCE_DIR}" KVTIER_BINARY_DIR="${PROJECT_BINARY_DIR}")
  # The daemons the cases start (kvtierd_test: the cases that inject hooks).
  add_dependencies(tsan_integration_test kvtierd kvtierd_test)

  # Sessions and leases: connections on both io threads, lease tables, close_session.
  kvtier_tsan_test(sessions tsan_integration_test
                   "several client processes put and get concurrently*")
  kvtier_tsan_test(lease_reclaim tsan_integration_test
                   "a client killed with SIGKILL while holding leases is reclaimed")
  # Eviction (S3-FIFO inside reserve) with leased blocks rotated past.
  kvtier_tsan_test(eviction tsan_integration_test
                   "a host tier full of leased blocks refuses a put*")
  # Busy polling and the request channel: polling io thread, channel doorbells, and a drain
  # (SIGTERM) of that thread.
  kvtier_tsan_test(busy_poll tsan_integration_test
                   "busy polling: polling clients on one polling io*")
  kvtier_tsan_test(channel tsan_integration_test
                   "a polling client's requests go through the channel*"
                   -c "a reply bigger than the channel's area comes on the socket")
  kvtier_tsan_test(channel_wakeup tsan_integration_test
                   "no wake-up is lost when the client and the daemon sleep between requests")
  # The disk tier in the daemon: demotion through the writer and committer (io_uring and the
  # thread pool), promotion waiters, write-through persist, a kill during heavy demotion.
  kvtier_tsan_test(disk_demotion tsan_integration_test "host evictions demote to disk*")
  kvtier_tsan_test(disk_promotion tsan_integration_test
                   "a burst of concurrent gets for one disk block reads it once")
  kvtier_tsan_test(disk_persist tsan_integration_test "persist namespaces survive a restart*")
  kvtier_tsan_test(disk_kill tsan_integration_test "SIGKILL during heavy demotion*")
  # The index saver thread next to io threads serving requests.
  kvtier_tsan_test(index_save tsan_integration_test "requests are served while the index saves*")
  # The GPU tier (emulation): demotion under Engine::mu_, promotion, several client processes,
  # a dead client's leases.
  kvtier_tsan_test(gpu_demotion tsan_integration_test "gpu: eviction demotes to host NF4*")
  kvtier_tsan_test(gpu_processes tsan_integration_test "gpu: several processes share a pool*")
  kvtier_tsan_test(gpu_dead_client tsan_integration_test "gpu: a dead client's GPU leases*")
  kvtier_tsan_test(gpu_device_puts tsan_integration_test "gpu: a device put batch lands*")
  kvtier_tsan_test(gpu_promotion_batch tsan_integration_test "gpu: a GPU get promotes its host blocks in one batch*")
  # The disk tier on its own: writer, committer, workers, reads against region reclaim, the
  # fault paths.  Not the 4 KiB-32 MiB round trip (70 s under TSan, the same threads).
  kvtier_tsan_test(disk_tier disk_tier_test "~round trip on every backend*")
  # The engine in-process: the whole ladder with the disk tier's threads and GPU emulation.
  # The shared lookup index: its seqlock writer against reader threads (unit), and reader
  # processes against a daemon that puts, evicts and removes (the daemon's writers: io threads).
  kvtier_tsan_test(lookup_index lookup_index_test "lookup index: concurrent writer*")
  kvtier_tsan_test(lookup_index_churn tsan_integration_test "lookup index: reader processes*")
  # Deferred releases: carried on the next request or sent one-way from Lease::release() while
  # another thread may be in a call (the client's release_mu against mu), through the socket
  # and the channel.
  kvtier_tsan_test(releases tsan_integration_test
                   "deferred releases*,a client that dies with deferred releases*")
  kvtier_tsan_test(engine_ladder engine_test "engine:*")
  # The semantic index: searches during adds, the background rebuild, save while rebuilding.
  kvtier_tsan_test(index_rebuild index_test
                   "concurrent searches while adding,background rebuild:*,exact -> IVF switch*")
endfunction()
# After the whole tree is read: the test targets are defined in subdirectories.
cmake_language(DEFER CALL kvtier_tsan_tests)

// Runs the C program tests/c_abi/c_abi_smoke.c against a real daemon.
#include <catch2/catch.hpp>

#include <cstdlib>

#include "tests/testing/daemon.h"

TEST_CASE("the C ABI works end to end from a C program") {
  kvtier::testing::DaemonOptions o;
  o.codec = "nf4";
  o.gpu_backend = "emulation";
  kvtier::testing::Daemon d(o);
  std::string cmd = "KVTIER_SOCKET=" + d.socket() + " " + KVTIER_BINARY_DIR + "/tests/c_abi_smoke";
  CHECK(std::system(cmd.c_str()) == 0);
}

// Runs this build's kvtierctl with `args` (a shell fragment), for the CLI cases of the
// integration tests.  KVTIER_BINARY_DIR comes from the test target's compile definitions.
#pragma once

#include <catch2/catch.hpp>

#include <sys/wait.h>

#include <cstdio>
#include <string>

namespace kvtier::testing {

struct CtlRun {
  int code;         // exit status (-1: killed by a signal)
  std::string out;  // stdout and stderr
};

inline CtlRun ctl(const std::string& args) {
  std::string cmd = std::string(KVTIER_BINARY_DIR) + "/cli/kvtierctl " + args + " 2>&1";
  FILE* p = ::popen(cmd.c_str(), "r");
  REQUIRE(p != nullptr);
  CtlRun r{0, {}};
  char buf[4096];
  while (size_t n = std::fread(buf, 1, sizeof(buf), p)) r.out.append(buf, n);
  int status = ::pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

}  // namespace kvtier::testing

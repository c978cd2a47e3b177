// Child processes for tests that must not fork(): a test binary starts itself again as a
// fresh process (posix_spawn of /proc/self/exe), running one hidden Catch2 case selected by
// a tag.  A forked child inherits the parent's CUDA state and cannot use CUDA (MACHINE-NOTES);
// a re-executed one initialises its own.
//
// The parent passes what the child needs in environment variables; the child case reads them
// with child_env() and ends with ::_exit(code), so its exit code is the test's verdict and
// nothing of Catch's (or of any destructor) runs after it:
//
//   TEST_CASE("my child", "[.][my_child]") {
//     if (!kvtier::testing::in_child("my_child")) return;   // run by hand: does nothing
//     ... ::_exit(ok ? 0 : 3);
//   }
//   pid_t pid = spawn_self("my_child", {{"KVTIER_TEST_SOCKET", d.socket()}}).value();
//   CHECK(wait_child(pid) == 0);
#pragma once

#include <sys/types.h>

#include <string>
#include <utility>
#include <vector>

#include "kvtier/status.h"

namespace kvtier::testing {

using EnvVars = std::vector<std::pair<std::string, std::string>>;

// Starts /proc/self/exe with the Catch2 test spec "[<tag>]" and the parent's environment plus
// `env` and KVTIER_TEST_CHILD=<tag>.  Descriptors the parent opened with O_CLOEXEC stay
// behind.  Fails (kIo) if the process cannot be started.
Result<pid_t> spawn_self(const std::string& tag, const EnvVars& env = {});

// True in a process spawn_self(tag) started: the hidden case should do its work.
bool in_child(const std::string& tag);

// The value of environment variable `name` in a child; empty when it is not set.
std::string child_env(const char* name);

// Waits for `pid`: its exit code, or -signal when a signal ended it, or -1000 - errno when
// waitpid itself fails.
int wait_child(pid_t pid);

}  // namespace kvtier::testing

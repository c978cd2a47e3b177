#include "tests/testing/child_process.h"

#include <spawn.h>
#include <sys/wait.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string_view>

extern char** environ;

namespace kvtier::testing {
namespace {

constexpr const char* kChildVar = "KVTIER_TEST_CHILD";

// The parent's environment, with `extra` (and the child marker) replacing same-named entries.
std::vector<std::string> child_environment(const std::string& tag, const EnvVars& extra) {
  EnvVars all = extra;
  all.emplace_back(kChildVar, tag);
  std::vector<std::string> out;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string_view entry(*e);
    const std::string_view name = entry.substr(0, entry.find('='));
    bool replaced = false;
    for (const auto& [n, v] : all) replaced = replaced || n == name;
    if (!replaced) out.emplace_back(entry);
  }
  for (const auto& [n, v] : all) out.push_back(n + "=" + v);
  return out;
}

}  // namespace

Result<pid_t> spawn_self(const std::string& tag, const EnvVars& env) {
  const std::string exe = "/proc/self/exe";
  const std::string spec = "[" + tag + "]";
  std::vector<std::string> envs = child_environment(tag, env);
  std::vector<char*> envp;
  for (auto& e : envs) envp.push_back(e.data());
  envp.push_back(nullptr);
  // "-w NoTests": a spec that matches no case is a failure (exit 2), not a silent exit 0.
  std::string arg0 = "kvtier-test-child", warn = "-w", no_tests = "NoTests", spec_arg = spec;
  char* argv[] = {arg0.data(), warn.data(), no_tests.data(), spec_arg.data(), nullptr};
  pid_t pid = -1;
  if (int rc = ::posix_spawn(&pid, exe.c_str(), nullptr, nullptr, argv, envp.data()); rc != 0)
    return error(Errc::kIo, "posix_spawn " + exe + " " + spec + ": " + std::strerror(rc));
  return pid;
}

bool in_child(const std::string& tag) {
  const char* v = std::getenv(kChildVar);
  return v != nullptr && tag == v;
}

std::string child_env(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr ? v : "";
}

int wait_child(pid_t pid) {
  int status = 0;
  pid_t r;
  do {
    r = ::waitpid(pid, &status, 0);
  } while (r < 0 && errno == EINTR);
  if (r < 0) return -1000 - errno;
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return -WTERMSIG(status);
  return -1000;
}

}  // namespace kvtier::testing

// kvtierd's command line, logging and start (daemon/main.cpp calls it; so does the test build,
// tests/testing/kvtierd_test_main.cpp, with its hooks).
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <cstdlib>
#include <iostream>

#include "common/frame.h"
#include "config/config.h"
#include "daemon/daemon_main.h"
#include "daemon/server.h"

int kvtier::daemon_main(int argc, char** argv, ServerHooks hooks) {
  // libgomp reads OMP_WAIT_POLICY once, when it loads.  Its default lets FAISS's OpenMP
  // workers spin for milliseconds after every parallel region, taking the CPU from the io
  // threads: on 2 vCPUs semantic search was 3-7x slower (docs/index.md).  Re-exec once with
  // the passive policy unless the operator chose one.
  if (std::getenv("OMP_WAIT_POLICY") == nullptr && ::setenv("OMP_WAIT_POLICY", "PASSIVE", 1) == 0)
    ::execv("/proc/self/exe", argv);  // returns only on failure: then run as we are
  CLI::App app{"kvtierd: host-local tiered KV and fusion cache daemon"};
  std::string config_path, socket, state_dir, log_level;
  bool check_only = false, show_version = false;
  app.add_option("-c,--config", config_path,
                 "TOML configuration file (default: built-in defaults)");
  app.add_option("--socket", socket, "override daemon.socket");
  app.add_option("--state-dir", state_dir, "override daemon.state_dir");
  app.add_option("--log-level", log_level, "override daemon.log_level");
  app.add_flag("--check-config", check_only, "validate the configuration, print it, and exit");
  app.add_flag("--version", show_version, "print the version and exit");
  CLI11_PARSE(app, argc, argv);
  if (show_version) {
    std::cout << "kvtierd " << KVTIER_VERSION << " (protocol " << kvtier::kProtocolVersion << ")\n";
    return 0;
  }

  // Under systemd, stderr goes to the journal, which stamps time itself.
  auto logger = spdlog::stderr_logger_mt("kvtierd");
  spdlog::set_default_logger(logger);
  spdlog::set_pattern(std::getenv("JOURNAL_STREAM") ? "%l: %v" : "%Y-%m-%d %H:%M:%S.%e %l: %v");

  kvtier::config::Config cfg;
  try {
    cfg = config_path.empty() ? kvtier::config::defaults() : kvtier::config::load(config_path);
    if (!socket.empty()) cfg.daemon.socket = socket;
    if (!state_dir.empty()) cfg.daemon.state_dir = state_dir;
    if (!log_level.empty()) cfg.daemon.log_level = log_level;
    cfg.validate();
  } catch (const kvtier::config::ConfigError& e) {
    std::cerr << "kvtierd: configuration error: " << e.what() << "\n";
    return 78;  // EX_CONFIG
  }
  if (check_only) {
    std::cout << cfg.to_toml();
    return 0;
  }
  spdlog::set_level(spdlog::level::from_str(cfg.daemon.log_level));
  ::signal(SIGPIPE, SIG_IGN);
  try {
    kvtier::Server server(std::move(cfg), std::move(hooks));
    return server.run();
  } catch (const std::exception& e) {
    spdlog::critical("cannot start: {}", e.what());
    return 1;
  }
}

// A real kvtierd Server for the session and channel harnesses: built once per fuzzing
// process from a TOML config (a temporary state directory, its own shm_prefix and socket, a
// small host tier, a second isolation domain, the GPU emulation, the semantic index, no disk
// tier), never run(): each harness drives Sessions on an io_context of its own, over a socket
// pair.  Removed again (state directory, shared memory) when the process exits normally.
#pragma once

#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/local/connect_pair.hpp>

#include <spdlog/spdlog.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>

#include "config/config.h"
#include "daemon/server.h"
#include "daemon/session.h"

namespace kvtier::fuzz {

struct Daemon {
  std::filesystem::path dir;
  std::unique_ptr<Server> server;
  PeerInfo peer;

  // `daemon_extra`: more [daemon] keys (the channel harness turns polling on).
  explicit Daemon(const std::string& name, const std::string& daemon_extra = "") {
    // Named after the process, so that scripts/fuzz.sh can remove what a crash left behind.
    const std::string prefix = "kvtier-fuzz-" + name + "-" + std::to_string(::getpid());
    std::string tmpl = "/tmp/" + prefix + "-XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr) std::abort();
    dir = tmpl;
    // Namespaces: "" (NF4), fp16/ (raw), dq/ (NF4 with double quant and NF4 fusion state),
    // persist/ (write-through: no disk tier, so every persist fails), iso/ (an isolation
    // domain whose rule lets another uid only: this peer is refused).
    const std::string toml =
        "[daemon]\n"
        "socket = \"" +
        (dir / "kvtier.sock").string() +
        "\"\n"
        "state_dir = \"" +
        (dir / "state").string() +
        "\"\n"
        "shm_prefix = \"" +
        prefix +
        "\"\n"
        "io_threads = 1\n"
        "max_message_bytes = \"1MiB\"\n"
        "log_level = \"error\"\n" +
        daemon_extra +
        "[host]\nsize = \"16MiB\"\nprefault = false\n"
        "[disk]\nenabled = false\n"
        "[gpu]\nbackend = \"emulation\"\nsize = \"8MiB\"\n"
        "[index]\nenabled = true\nexact_max_vectors = 1000\n"
        "save_interval_s = 3600\n"
        "[session]\nstaging_bytes = \"1MiB\"\nmax_leases = 64\n"
        "max_pending_puts = 8\n"
        "[[namespace]]\nprefix = \"\"\n"
        "[[namespace]]\nprefix = \"fp16/\"\ncodec = \"fp16\"\n"
        "[[namespace]]\nprefix = \"dq/\"\nnf4_double_quant = true\n"
        "fusion_codec = \"nf4\"\n"
        "[[namespace]]\nprefix = \"persist/\"\ndisk = \"persist\"\n"
        "[[namespace]]\nprefix = \"iso/\"\narena = \"iso\"\n"
        "allow_uids = [" +
        std::to_string(::getuid() + 1) +
        "]\n"
        "[[arena]]\nname = \"iso\"\nsize = \"16MiB\"\n";
    if (!std::getenv("KVTIER_FUZZ_LOG")) spdlog::set_level(spdlog::level::off);
    try {
      server = std::make_unique<Server>(config::parse(toml, "fuzz daemon config"));
    } catch (const std::exception& e) {
      std::fprintf(stderr, "fuzz daemon: %s\n", e.what());
      std::abort();
    }
    peer.pid = ::getpid();
    peer.uid = ::getuid();
    peer.gid = ::getgid();
    peer.comm = "fuzz";
  }

  ~Daemon() {
    server.reset();
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }

  // Everything cached goes (host and GPU tiers), so that each input starts from an empty cache.
  void reset() { server->engine().evict(std::nullopt, {}, true, true, false, true); }
};

}  // namespace kvtier::fuzz

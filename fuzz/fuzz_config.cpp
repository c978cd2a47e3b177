// Harness (c): the config parser, TOML text -> validated Config (config/parse.cpp).
//
// config::parse documents one exception type, ConfigError, for every bad document; anything
// else escaping it (std::out_of_range from a number conversion, a toml++ type, ...) ends the
// process here, and so does a crash, an abort or undefined behaviour.  A document that parses
// must also render (to_toml, what `kvtierctl config` prints) to TOML that parses back to the
// same rendering.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "config/config.h"

using kvtier::config::Config;
using kvtier::config::ConfigError;

namespace {

// Known issue (docs/fuzzing.md, fuzz/crashes/config/): a size given as a string ("...bytes")
// may exceed 2^63 - 1, and to_toml() writes it as a bare integer, which TOML cannot hold, so
// the rendering does not parse.  Such configs skip the round trip unless
// KVTIER_FUZZ_KNOWN_ISSUES=1, until config/render.cpp writes them as strings.
bool known_issue(const Config& c) {
  static const bool off = std::getenv("KVTIER_FUZZ_KNOWN_ISSUES") != nullptr;
  constexpr uint64_t kMax = INT64_MAX;
  bool big = c.daemon.max_message_bytes > kMax || c.host.size_bytes > kMax ||
             c.host.ghost_entries > kMax || c.disk.size_bytes > kMax ||
             c.disk.region_bytes > kMax || c.disk.write_queue_bytes > kMax ||
             c.gpu.size_bytes > kMax || c.index.exact_max_vectors > kMax ||
             c.session.staging_bytes > kMax;
  for (const auto& a : c.arenas) big = big || a.size_bytes > kMax || a.gpu_size_bytes > kMax;
  return big && !off;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  std::string rendered;
  try {
    const Config c = kvtier::config::parse(text, "<fuzz>");
    if (known_issue(c)) return 0;
    rendered = c.to_toml();
  } catch (const ConfigError&) {
    return 0;
  }
  try {
    const std::string again = kvtier::config::parse(rendered, "<rendered>").to_toml();
    if (again != rendered) {
      std::fprintf(stderr, "fuzz_config: rendering is not stable:\n%s\n---\n%s\n", rendered.c_str(),
                   again.c_str());
      std::abort();
    }
  } catch (const ConfigError& e) {
    std::fprintf(stderr, "fuzz_config: the rendered config does not parse: %s\n%s\n", e.what(),
                 rendered.c_str());
    std::abort();
  }
  return 0;
}

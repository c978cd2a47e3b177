// Harness (c): the config parser, TOML text -> validated Config (config/parse.cpp).
//
// config::parse documents one exception type, ConfigError, for every bad document; anything
// else escaping it (std::out_of_range from a number conversion, a toml++ type, ...) ends the
// process here, and so does a crash, an abort or undefined behaviour.  A document that parses
// must also render (to_toml, what `kvtierctl config` prints) to TOML that parses back to the
// same rendering.
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "config/config.h"

using kvtier::config::ConfigError;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  std::string rendered;
  try {
    rendered = kvtier::config::parse(text, "<fuzz>").to_toml();
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

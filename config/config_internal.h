// Helpers shared by config.cpp (validation), parse.cpp (TOML -> structs) and render.cpp
// (structs -> TOML).  Not part of the config/ contract: only config/*.cpp include this.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "kvtier/types.h"

namespace kvtier::config::internal {

inline constexpr uint64_t kKiB = 1ull << 10;
inline constexpr uint64_t kMiB = 1ull << 20;
inline constexpr uint64_t kGiB = 1ull << 30;
inline constexpr uint64_t kTiB = 1ull << 40;

// For messages: 68719476736 -> "64 GiB", 25232932864 -> "23.5 GiB", 1000 -> "1000 B".
std::string human_size(uint64_t bytes);

// For TOML output: the exact value as a string parse_size() accepts when it is a whole number
// of KiB/MiB/GiB/TiB ("64MiB"), else the decimal number of bytes.  Includes the quotes.
std::string toml_size(uint64_t bytes);

// "fp16" <-> Codec::kRaw, "nf4" <-> Codec::kNf4.  (kvtier/types.h's codec_name() lives in
// kvtier_common; the config names are the TOML spellings, so they are kept here.)
const char* codec_toml_name(Codec c);
std::optional<Codec> codec_from_toml(std::string_view name);

// Parses an octal permission string ("0660", "660", "0o660"); nullopt unless it is <= 0777.
std::optional<uint32_t> parse_mode(std::string_view text);

}  // namespace kvtier::config::internal

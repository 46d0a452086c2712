// Typed option values to limits, shared by the CLI and the server: both take
// "--wall-ms 2000" or "--max-memory-bytes 1G" as text and check it the same way.
#pragma once

#include "safepy/safepy.hpp"

#include <map>
#include <optional>
#include <string>
#include <string_view>

namespace safepy {

// A limit's flag name without dashes in front: "wall_ms" -> "wall-ms".
std::string limit_flag(std::string_view limit);

// Applies `typed` (limit name -> text such as "2000" or "1M") to `limits`,
// each checked against `ceiling`; the error names the flag as
// `flag_prefix` + limit_flag(name), e.g. "--max-wall-ms: not a number: x".
std::optional<std::string> apply_typed_limits(const std::map<std::string, std::string>& typed,
                                              std::string_view flag_prefix, Limits& limits, const Limits& ceiling);

}  // namespace safepy

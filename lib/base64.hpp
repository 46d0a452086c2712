// Base64 (RFC 4648, the standard alphabet with padding), for file and stdin
// contents in JSON. Pure.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace safepy {

std::string base64_encode(std::string_view bytes);

// The decoded bytes; empty when `text` is not canonical base64 (a character
// outside the alphabet, whitespace, missing or misplaced padding, or nonzero
// bits in the last character).
std::optional<std::string> base64_decode(std::string_view text);

}  // namespace safepy

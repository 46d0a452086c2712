// The JSON envelope, and validation of the untrusted result JSON. Boost.JSON
// stays inside envelope.cpp.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace safepy {

inline constexpr std::size_t k_result_max_depth = 256;

// Why `text` is not a strict JSON object or array no deeper than `max_depth`;
// empty when it is. Numbers are checked for syntax only, so big integers keep
// every digit when the text is passed on.
std::optional<std::string> validate_result_json(std::string_view text, std::size_t max_depth = k_result_max_depth);

// `bytes` with every invalid UTF-8 sequence replaced by U+FFFD.
std::string repair_utf8(std::string_view bytes);

// The strings of a JSON array of strings (a probe's result); empty on any error.
std::vector<std::string> parse_string_list(std::string_view text);

// A JSON string literal (quotes included) for valid UTF-8 `text`.
std::string json_string(std::string_view text);

}  // namespace safepy

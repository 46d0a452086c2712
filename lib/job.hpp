// A run's job: what the runner inside the jail gets on its script descriptor
// (the script, main's arguments, stdin, the files handed in, the output
// caps), and the checks the inputs pass before anything runs. Pure.
//
// Layout (runner.py reads it): the magic "SPYJOB1\n", then records of
//   tag (1 byte) | name length (u32 LE) | data length (u64 LE) | name | data
// with tags 's' script, 'a' args JSON, 'i' stdin, 'f' a file (name: its
// path), 'o' the output caps (data: "ENTRIES BYTES" in decimal).
#pragma once

#include "safepy/safepy.hpp"

#include <optional>
#include <string>
#include <string_view>

namespace safepy {

inline constexpr std::string_view k_job_magic = "SPYJOB1\n";
inline constexpr std::size_t k_file_path_bytes = 1024;    // a whole path
inline constexpr std::size_t k_file_name_bytes = 255;     // one component
inline constexpr std::size_t k_args_max_depth = 64;
inline constexpr std::string_view k_output_dir = "out";  // /tmp/out, under the working directory

// The job for `request`.
std::string encode_job(const Request& request);

// Why the request's args, stdin or files cannot be handed to a run (see
// Request); empty when they can. `max_args_bytes` bounds the args' text.
std::optional<std::string> check_inputs(const Request& request, std::size_t max_args_bytes);

// The bytes of tmpfs that `files` take in the run's /tmp, pages and directories counted.
std::uint64_t input_footprint_bytes(const std::vector<File>& files);

}  // namespace safepy

// `safepy check` for CI: which scripts to check (files, directories, globs)
// and the report in the format a CI system reads. Pure, apart from
// find_scripts reading the file system.
#pragma once

#include "safepy/safepy.hpp"

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace safepy {

// This build's version, "0.1.0".
std::string_view version();

enum class CheckFormat {
    text,    // "PATH: ok" or "PATH: STATUS: message", one line a file
    json,    // {"files": [{"path", "status", "error"?}], "failed": N, "exit_code": N}
    github,  // GitHub workflow annotations: ::error file=PATH,line=N::message
    junit,   // JUnit XML: one testcase a file
};

std::optional<CheckFormat> parse_check_format(std::string_view name);

// One file's verdict. `status` ok means it passed.
struct CheckedFile {
    std::string path;
    Status status = Status::ok;
    std::string error;
};

// The report of `files`, in their order.
std::string check_report(const std::vector<CheckedFile>& files, CheckFormat format);

// The worst exit code of `files` (see exit_code), 0 when all passed.
int check_exit_code(const std::vector<CheckedFile>& files);

// The line a syntax error names ("... (line 12)"); empty when none.
std::optional<int> error_line(std::string_view error);

struct ScriptList {
    std::vector<std::string> paths;
    std::string error;  // non-empty: an input matched nothing or cannot be read
};

// Expands the inputs in order: "-" and files as they are; a directory to
// every *.py below it (sorted, hidden directories and symlinked directories
// left out); a pattern with * ? or [ that is not a file, by glob(3).
ScriptList find_scripts(const std::vector<std::string>& inputs);

}  // namespace safepy

// Deciding how a run ended, from evidence in a fixed order. Pure.
#pragma once

#include "safepy/safepy.hpp"

#include <optional>
#include <string>

namespace safepy {

// What the runner reported on the result channel (see runner.py). The runner
// marks its phases before any of the script's code can run: "C" once the
// script compiled, "M" once main() was found, so a record that belongs to an
// earlier phase (a syntax error after "C") can only be the script's forgery.
struct RunnerReport {
    bool started = false;         // the "S" marker arrived: the jail worked
    bool compiled = false;        // "C": the script compiled (check mode: and was parsed)
    bool main_found = false;      // "M": main() exists and takes no arguments; it is called next
    std::optional<std::string> kind;  // the final record's kind, when one arrived
    std::string body;             // its body
    bool malformed = false;       // bytes that the runner would never write, or a record out of phase
    // The F records sent after main() returned: the files under /tmp/out and
    // the entries skipped ("path: why"), each path checked and seen once.
    std::vector<File> files;
    std::vector<std::string> skipped_files;
    std::uint64_t file_bytes = 0;  // the files' bytes in all, as received
};

// Splits the raw result channel into a report; `mode` decides which records
// each phase may end with.
RunnerReport parse_runner_report(const std::string& channel, Mode mode = Mode::run);

struct Evidence {
    std::string spawn_error;      // the jail could not be started at all
    bool cancelled = false;       // Sandbox::cancel_all ended the run
    bool stdout_over = false;
    bool stderr_over = false;
    bool result_over = false;
    bool files_over = false;      // more entries or bytes under /tmp/out than the caps, as received
    bool wall_timeout = false;
    bool cpu_timeout = false;     // the library's CPU accounting passed the limit
    std::uint64_t oom_kills = 0;  // from the run's cgroup
    int wait_status = 0;          // raw status of the jail process
    std::chrono::milliseconds cpu{0};
    RunnerReport report;
    std::optional<std::string> result_error;  // why the ok record's JSON was rejected
    Limits limits;
    std::string jail;             // for messages
    std::string jail_log;         // nsjail's log, for the operator
};

struct Verdict {
    Status status = Status::sandbox_error;
    std::string error;   // for the envelope; empty when ok
    std::string detail;  // for the operator's log (sandbox errors)
};

Verdict classify(const Evidence& evidence);

// "SIGSEGV" for 11, "signal 99" for an unknown number.
std::string signal_name(int signal);

}  // namespace safepy

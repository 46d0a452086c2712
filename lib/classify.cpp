#include "classify.hpp"

#include "envelope.hpp"

#include <csignal>
#include <cstring>
#include <set>
#include <sys/wait.h>

namespace safepy {
namespace {

constexpr std::string_view k_invalid_json = "Execution did not return valid JSON";
constexpr std::string_view k_no_main = "Script must contain a main() function";
constexpr std::string_view k_bad_main = "main() must be callable without arguments";

std::string tail(const std::string& text, std::size_t bytes) {
    return text.size() <= bytes ? text : "..." + text.substr(text.size() - bytes);
}

Verdict sandbox_failure(std::string what, std::string detail) {
    return {Status::sandbox_error, "Sandbox failure (not caused by the script): " + what, std::move(detail)};
}

Verdict from_record(const Evidence& evidence, int exit_code) {
    const auto& report = evidence.report;
    const std::string& kind = *report.kind;
    if (kind == "ok") {
        if (exit_code != 0) {
            return {Status::script_error, "Script ended with status " + std::to_string(exit_code) +
                                              " after main() returned", ""};
        }
        if (evidence.result_error) {
            return {Status::invalid_result, std::string(k_invalid_json) + ": " + *evidence.result_error, ""};
        }
        return {Status::ok, "", ""};
    }
    if (kind == "no_main") {
        return {Status::invalid_script, std::string(k_no_main), ""};
    }
    if (kind == "bad_main") {
        return {Status::invalid_script, std::string(k_bad_main), ""};
    }
    if (kind == "syntax_error" || kind == "bad_args") {
        return {Status::invalid_script, report.body, ""};
    }
    if (kind == "input_error") {
        return {Status::invalid_request, report.body, ""};
    }
    if (kind == "output_files") {
        return {Status::output_limit, report.body, ""};
    }
    if (kind == "invalid_result") {
        return {Status::invalid_result, std::string(k_invalid_json) + ": " + report.body, ""};
    }
    if (kind == "memory") {
        return {Status::memory_limit,
                "Memory limit of " + std::to_string(evidence.limits.memory_bytes) + " bytes exceeded (" +
                    report.body + ")", ""};
    }
    // "exception" and "exit"
    return {Status::script_error, report.body, ""};
}

}  // namespace

namespace {

// Which records the runner can send in each phase.
bool record_fits_phase(const std::string& kind, const RunnerReport& report, Mode mode) {
    if (!report.compiled) {
        return kind == "syntax_error";
    }
    if (mode == Mode::check) {
        return !report.main_found && (kind == "ok" || kind == "no_main");
    }
    if (!report.main_found) {
        // The module's own code ran: it may fail, exit or run out of memory.
        return kind == "no_main" || kind == "bad_main" || kind == "bad_args" || kind == "input_error" ||
               kind == "exception" || kind == "exit" || kind == "memory";
    }
    return kind == "ok" || kind == "invalid_result" || kind == "output_files" || kind == "exception" ||
           kind == "exit" || kind == "memory";
}

std::uint64_t read_le(const std::string& bytes, std::size_t at, int width) {
    std::uint64_t value = 0;
    for (int i = width - 1; i >= 0; --i) {
        value = (value << 8) | static_cast<unsigned char>(bytes[at + static_cast<std::size_t>(i)]);
    }
    return value;
}

// The F records from `at` on (see runner.py): false when one is malformed.
bool parse_file_records(const std::string& channel, std::size_t& at, RunnerReport& report) {
    constexpr std::size_t k_header = 2 + 4 + 8;
    constexpr std::size_t k_reason_bytes = 4096;
    std::set<std::string> paths;
    while (at < channel.size() && channel[at] == 'F') {
        if (channel.size() - at < k_header) {
            return false;
        }
        const char tag = channel[at + 1];
        const std::uint64_t path_bytes = read_le(channel, at + 2, 4);
        const std::uint64_t data_bytes = read_le(channel, at + 6, 8);
        const std::size_t left = channel.size() - at - k_header;
        if ((tag != 'f' && tag != 'k') || path_bytes > left || data_bytes > left - path_bytes ||
            (tag == 'k' && data_bytes > k_reason_bytes)) {
            return false;
        }
        std::string path = channel.substr(at + k_header, path_bytes);
        std::string data = channel.substr(at + k_header + path_bytes, data_bytes);
        at += k_header + path_bytes + data_bytes;
        if (check_file_path(path) || !paths.insert(path).second) {
            return false;
        }
        if (tag == 'f') {
            report.file_bytes += data.size();
            report.files.push_back({std::move(path), std::move(data)});
        } else {
            report.skipped_files.push_back(path + ": " + repair_utf8(data));
        }
    }
    return true;
}

}  // namespace

RunnerReport parse_runner_report(const std::string& channel, Mode mode) {
    RunnerReport report;
    if (channel.empty()) {
        return report;
    }
    if (channel[0] != 'S') {
        report.malformed = true;
        return report;
    }
    report.started = true;
    std::size_t at = 1;
    if (at < channel.size() && channel[at] == 'C') {
        report.compiled = true;
        ++at;
        if (at < channel.size() && channel[at] == 'M') {
            report.main_found = mode == Mode::run;
            report.malformed = mode != Mode::run;
            ++at;
        }
    }
    if (report.main_found && !parse_file_records(channel, at, report)) {
        report.malformed = true;
        return report;
    }
    if (at == channel.size() || report.malformed) {
        return report;
    }
    const auto newline = channel.find('\n', at);
    if (channel[at] != 'R' || newline == std::string::npos) {
        report.malformed = true;
        return report;
    }
    std::string kind = channel.substr(at + 1, newline - at - 1);
    if (!record_fits_phase(kind, report, mode)) {
        report.malformed = true;
        return report;
    }
    report.kind = std::move(kind);
    report.body = channel.substr(newline + 1);
    return report;
}

std::string signal_name(int signal) {
    const char* abbreviation = sigabbrev_np(signal);
    return abbreviation ? "SIG" + std::string(abbreviation) : "signal " + std::to_string(signal);
}

Verdict classify(const Evidence& evidence) {
    const Limits& limits = evidence.limits;
    if (!evidence.spawn_error.empty()) {
        return sandbox_failure(evidence.report.started ? "the sandbox lost track of the run"
                                                       : "the jail could not be started",
                               evidence.spawn_error);
    }
    if (evidence.cancelled) {
        return sandbox_failure("the run was cancelled because the service is shutting down", "cancelled");
    }
    if (evidence.stdout_over) {
        return {Status::output_limit, "Output limit exceeded: stdout is capped at " +
                                          std::to_string(limits.stdout_bytes) + " bytes", ""};
    }
    if (evidence.stderr_over) {
        return {Status::output_limit, "Output limit exceeded: stderr is capped at " +
                                          std::to_string(limits.stderr_bytes) + " bytes", ""};
    }
    if (evidence.result_over) {
        return {Status::output_limit, "Output limit exceeded: the result is capped at " +
                                          std::to_string(limits.result_bytes) + " bytes", ""};
    }
    if (evidence.files_over) {
        return {Status::output_limit, "Output limit exceeded: the files returned from /tmp/out are capped at " +
                                          std::to_string(limits.output_files) + " entries and " +
                                          std::to_string(limits.output_files_bytes) + " bytes", ""};
    }
    if (evidence.wall_timeout) {
        return {Status::timeout, "Execution timed out after " + std::to_string(limits.wall.count()) +
                                     " ms (wall-clock limit)", ""};
    }
    // A process killed by its CPU rlimit gets SIGXCPU (soft) or SIGKILL (hard).
    const bool signalled = WIFSIGNALED(evidence.wait_status);
    const int exit_code = WIFEXITED(evidence.wait_status) ? WEXITSTATUS(evidence.wait_status) : -1;
    const int jail_signal = signalled ? WTERMSIG(evidence.wait_status) : (exit_code > 128 ? exit_code - 128 : 0);
    // Either signal is only a CPU timeout with CPU time to show for it: a
    // script can send itself SIGXCPU. On a busy VM the kernel's rlimit clock
    // runs ahead of the cgroup's and rusage's accounting (seen: SIGXCPU at a
    // 1 s limit with 0.7 s accounted), so half the limit is the evidence.
    const bool cpu_signal = (jail_signal == SIGXCPU || jail_signal == SIGKILL) && evidence.cpu * 2 >= limits.cpu;
    if (evidence.cpu_timeout || (evidence.report.started && cpu_signal && !evidence.report.kind)) {
        return {Status::timeout, "Execution timed out: CPU time limit of " + std::to_string(limits.cpu.count()) +
                                     " ms exceeded", ""};
    }
    if (evidence.oom_kills > 0) {
        return {Status::memory_limit, "Memory limit of " + std::to_string(limits.memory_bytes) +
                                          " bytes exceeded: the script was killed", ""};
    }
    if (!evidence.report.started && !evidence.report.malformed) {
        std::string how = signalled ? "was killed by " + signal_name(WTERMSIG(evidence.wait_status))
                                    : "exited with status " + std::to_string(exit_code);
        return sandbox_failure(evidence.jail + " " + how + " before the script started",
                               evidence.jail + " " + how + "; log: " + tail(evidence.jail_log, 4000));
    }
    // From here on the script had the channel: anything odd on it is its doing.
    if (evidence.report.malformed) {
        return {Status::script_error, "The result channel was tampered with: the script wrote to safepy's result channel", ""};
    }
    if (evidence.report.kind) {
        return from_record(evidence, signalled ? 128 + WTERMSIG(evidence.wait_status) : exit_code);
    }
    if (signalled || jail_signal > 0) {
        return {Status::script_error, "Script was killed by " + signal_name(jail_signal) + " before main() returned", ""};
    }
    if (exit_code == 70) {
        return {Status::script_error, "Script broke safepy's result channel before main() returned", ""};
    }
    return {Status::script_error, "Script exited with status " + std::to_string(exit_code) +
                                      " before main() returned", ""};
}

}  // namespace safepy

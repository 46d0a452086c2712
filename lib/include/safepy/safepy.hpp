// libsafepy: run an untrusted Python script's main() in a fresh sandbox.
//
// Every decision lives here; the CLI and the server only translate their input
// into a Request, call Sandbox::run and print envelope_json(outcome).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace safepy {

// How a run ended. Values are listed in the order a client usually switches on.
enum class Status {
    ok,               // main() returned a JSON object or array
    invalid_request,  // the request itself was rejected before anything ran
    invalid_script,   // syntax error, no callable main(), or main() needs arguments
    script_error,     // exception, sys.exit/os._exit before main() returned, signal, bad exit
    invalid_result,   // main() returned something that is not a JSON object or array
    timeout,          // wall-clock or CPU-time limit reached
    memory_limit,     // memory limit reached (cgroup OOM kill or MemoryError)
    output_limit,     // stdout, stderr or the result exceeded its cap
    sandbox_error,    // the sandbox itself failed: our bug or the deployment's, never the script's
};

// Who a status is down to: nobody (ok), the request, the script, or the
// sandbox itself. Exit codes and HTTP status codes follow from it.
enum class Party { none, request, script, sandbox };
Party party_of(Status status);

// The lower-case name used in JSON ("ok", "script_error", ...).
std::string_view status_name(Status status);

// Parses a status name; empty when unknown.
std::optional<Status> parse_status(std::string_view name);

// Per-run resource limits. Every field is enforced under both jails.
struct Limits {
    std::chrono::milliseconds wall{10'000};
    std::chrono::milliseconds cpu{10'000};
    std::uint64_t memory_bytes = 512ull << 20;
    std::uint32_t processes = 64;  // processes and threads, the jail's own included
    std::uint64_t tmp_bytes = 64ull << 20;
    std::uint64_t file_bytes = 32ull << 20;  // largest file the script may write
    std::uint32_t open_files = 256;
    std::uint64_t stdout_bytes = 1ull << 20;
    std::uint64_t stderr_bytes = 1ull << 20;
    std::uint64_t result_bytes = 16ull << 20;  // main()'s serialised return value
    std::uint32_t cpu_cores = 1;  // CPU quota: at most this many CPUs' worth of time at once
    std::uint64_t stdin_bytes = 16ull << 20;        // the script's stdin (Request::stdin_bytes)
    std::uint32_t input_files = 100;                // files handed in (Request::files)
    std::uint64_t input_files_bytes = 16ull << 20;  // their bytes in all
    std::uint32_t output_files = 100;               // entries under /tmp/out when main() returns
    std::uint64_t output_files_bytes = 16ull << 20; // the bytes of the files returned from /tmp/out

    bool operator==(const Limits&) const = default;
};

// The absolute ceilings, whatever the host: no configuration goes above them.
Limits default_maxima();

// What the host gives safepy, for sizing the maxima.
struct HostResources {
    std::uint32_t cpus = 1;
    std::string cpus_source;          // e.g. "sched_getaffinity", "cgroup cpu.max of /x"
    std::uint64_t memory_bytes = 0;   // memory safepy may use in all: server, templates, runs
    std::string memory_source;        // e.g. "cgroup memory.max of /x", "MemAvailable"
};

// Reads this process's CPUs (affinity, cgroup quota) and memory (its cgroup's
// limit, else MemAvailable).
HostResources read_host_resources();

// Memory kept back for safepy itself: the server, and in warm mode a template
// per concurrent run.
std::uint64_t memory_reserve_bytes(std::size_t concurrency, bool warm);

// `ceiling` lowered to what one of `concurrency` runs may take of `host`:
// memory and /tmp (which is memory) to an even share after the reserve,
// cpu_cores to the host's CPUs.
Limits host_maxima(const Limits& ceiling, const HostResources& host, std::size_t concurrency, bool warm);

// Why `concurrency` runs at `maxima` cannot fit on `host`; empty when they can.
std::optional<std::string> check_fits(const Limits& maxima, const HostResources& host, std::size_t concurrency,
                                      bool warm);

// `defaults` with each field lowered to at most `maxima`.
Limits fit_defaults(Limits defaults, const Limits& maxima);

// default_maxima() sized for one run on this host (read once per process).
Limits local_maxima();

// One limit by name, for CLI flags and request fields.
struct LimitField {
    std::string_view name;     // e.g. "wall_ms", "memory_bytes"
    std::string_view summary;  // one line for --help and the README
};
const std::vector<LimitField>& limit_fields();

// Sets the limit called `name` to `value`; an error message when the name is
// unknown or the value is out of range (zero, or above `maxima`).
std::optional<std::string> set_limit(Limits& limits, std::string_view name, std::uint64_t value,
                                     const Limits& maxima);

// Parses a limit value: digits with an optional K, M or G suffix (binary
// multiples, for byte limits); empty when malformed or out of range.
std::optional<std::uint64_t> parse_quantity(std::string_view text);

// Reads the limit called `name`; empty when unknown.
std::optional<std::uint64_t> get_limit(const Limits& limits, std::string_view name);

// An error message when any limit is below its minimum (zero for most; the
// input and output caps may be zero) or above `maxima`.
std::optional<std::string> check_limits(const Limits& limits, const Limits& maxima);

enum class Mode {
    run,    // execute the script and call main()
    check,  // compile it and look for a top-level main, without executing it
};

// A file handed to a run or returned by one. `path` is relative: to the run's
// working directory (/tmp) for a file in, to /tmp/out for a file out; its
// components are never empty, "." or "..", and it is valid UTF-8.
struct File {
    std::string path;
    std::string content;

    bool operator==(const File&) const = default;
};

struct Request {
    std::string script;  // Python source; UTF-8 expected, validated by Python
    Limits limits;
    Mode mode = Mode::run;
    // Run mode only. A JSON object's text: main is called as main(**args).
    // Empty: main() is called without arguments.
    std::optional<std::string> args_json;
    std::string stdin_bytes;  // the script's stdin (at most limits.stdin_bytes); empty: an empty stdin
    // Placed read-only in the working directory (/tmp) before the script
    // runs; at most limits.input_files of them and limits.input_files_bytes
    // in all, and they count against tmp_bytes and memory_bytes.
    std::vector<File> files;
};

enum class JailKind { automatic, nsjail, bwrap };

std::string_view jail_name(JailKind kind);
std::optional<JailKind> parse_jail(std::string_view name);

// How runs' memory and processes are limited.
enum class ResourceControl {
    cgroup,   // per-run cgroups (v2, else v1); Sandbox::create fails with the reason when none can be made
    rlimits,  // the operator's choice: rlimits only (RLIMIT_AS per process, RLIMIT_NPROC per uid), no cgroup
};

// "cgroup" or "rlimits", as the --resource-control flag spells them.
std::string_view resource_control_name(ResourceControl control);
std::optional<ResourceControl> parse_resource_control(std::string_view name);

// Deployment settings, fixed for the life of a Sandbox.
struct Config {
    JailKind jail = JailKind::automatic;   // automatic prefers nsjail when it is found
    std::string nsjail_path;               // empty: search PATH
    std::string bwrap_path;                // empty: search PATH
    std::string python_path = "/usr/bin/python3";
    std::string nsjail_config_path;        // empty: the embedded nsjail/safepy.cfg
    ResourceControl resource_control = ResourceControl::cgroup;
    std::size_t max_script_bytes = 1u << 20;
    Limits defaults;                 // what a request starts from
    Limits maxima = local_maxima();  // what no request may exceed
    // Runs at once. Sandbox::create refuses maxima that many runs could not
    // all have, and in warm mode keeps a template per concurrent run.
    std::size_t concurrency = 1;
    // Host uids and gids for runs: each concurrent run gets its own, from
    // [sandbox_uid_base, sandbox_uid_base + sandbox_uid_count), so per-uid
    // kernel counters (pipe buffers, descriptors in flight, inotify, mqueue)
    // are never shared between runs. Used when started as root.
    std::uint32_t sandbox_uid_base = 100000;
    std::uint32_t sandbox_uid_count = 1024;
    // Warm mode: a template inside the jail imports `warm_preload` once and
    // forks a prepared child per run, each with its own namespaces, /tmp,
    // limits and seccomp filter. Cold mode starts a fresh jail per run.
    bool warm = false;
    std::size_t warm_pool_size = 4;  // children kept prepared ahead of demand
    std::vector<std::string> warm_preload = {"numpy", "pandas"};
};

struct Usage {
    std::chrono::milliseconds wall{0};
    std::chrono::milliseconds cpu{0};
    std::uint64_t peak_memory_bytes = 0;
};

struct Outcome {
    Status status = Status::sandbox_error;
    std::string error;         // the envelope's "error" text; empty when ok
    std::string result_json;   // main()'s value as validated JSON text; only when ok
    std::string stdout_bytes;  // raw, possibly invalid UTF-8, at most the stdout cap
    std::string stderr_bytes;
    bool script_started = false;  // Python ran inside the jail: stdout/stderr belong in the envelope
    bool cancelled = false;       // Sandbox::cancel_all ended it (a sandbox_error); a run that ended on its own never is
    bool stdout_truncated = false;
    bool stderr_truncated = false;
    // Ok runs: the regular files the run left under /tmp/out, by path. What
    // was not returned (links, special files) is listed as "path: why".
    std::vector<File> files;
    std::vector<std::string> skipped_files;
    Usage usage;
    std::string jail;              // "nsjail" or "bwrap"; empty when nothing ran
    std::string resource_control;  // "cgroup-v2", "cgroup-v1" or "rlimits-only"
    std::string detail;            // for sandbox_error: what failed, for the operator's log
};

// Serialises an outcome as the JSON envelope:
//   ok:    {"result": <value>, "stdout": "..."[, "files": [...]][, "files_skipped": [...]]}
//   error: {"error": "...", "status": "<status_name>"[, "stdout": "...", "stderr": "..."]}
// "files" (only when the run left any) lists {"path", "size", "content_base64"};
// without `file_contents` each entry has only "path" and "size".
// With `with_details`, "status" is always present and "usage" is added.
// Invalid UTF-8 in the output is replaced by U+FFFD.
std::string envelope_json(const Outcome& outcome, bool with_details = false, bool file_contents = true);

// Writes an ok run's files under `dir` (created if missing; its parent must
// exist). Never follows a link: a path through a symbolic link, or onto one,
// is refused. An existing file is refused unless `force`, and then replaced.
// Every path is checked before any file is written. An error message, or
// empty when every file was written.
std::optional<std::string> write_output_files(const std::string& dir, const std::vector<File>& files, bool force);

// Why `path` cannot name a file handed to or returned by a run (see File);
// empty when it can.
std::optional<std::string> check_file_path(std::string_view path);

// The CLI's exit code for a status: 0 ok, 1 the script failed, 2 usage or
// invalid request, 3 the sandbox failed.
int exit_code(Status status);

struct Diagnostics {
    std::string mode;  // "cold" or "warm"
    std::string jail;
    std::string jail_path;
    std::string resource_control;         // "cgroup-v2", "cgroup-v1" or "rlimits-only"
    std::string resource_control_reason;  // what was set up for it, or why rlimits
    std::string cgroup_path;
    std::string python_path;
    std::string cpu_mode;            // how CPU is shared between runs (share, quota) or why it is not
    std::string uid_range;           // the host uids runs get
    std::string maxima_source;       // how the host's resources size the maxima
    std::vector<std::string> notes;  // e.g. why a cgroup is not used
    // Filled by a probe run inside the sandbox:
    Status probe_status = Status::sandbox_error;
    std::string probe_error;
    std::string python_version;
    std::string numpy_version;
    std::string pandas_version;
    std::chrono::milliseconds probe_wall{0};
};

class Sandbox {
public:
    // Resolves the jail and cgroups once, and removes what killed earlier
    // processes left behind. On failure returns nullptr and sets `error`.
    static std::unique_ptr<Sandbox> create(const Config& config, std::string& error);

    ~Sandbox();
    Sandbox(const Sandbox&) = delete;
    Sandbox& operator=(const Sandbox&) = delete;

    // Runs one request in a fresh sandbox. Never throws; safe from many threads.
    Outcome run(const Request& request) const noexcept;

    // Why `run` would reject the request without starting anything (script
    // size, NUL bytes, limits); empty when it would run it.
    std::optional<std::string> check(const Request& request) const;

    // Kills every run in progress now (for a shutdown's end): each returns a
    // sandbox_error saying it was cancelled. Later runs are not affected.
    void cancel_all() const;

    // The defaults a request starts from, and the maxima it may not exceed.
    const Config& config() const;

    // What is in effect; with `probe`, also runs a script in the sandbox that
    // reports the Python, numpy and pandas versions.
    Diagnostics diagnostics(bool probe) const;

    // Warm mode: waits until prepared children are available (false after
    // `timeout`). Cold mode: true at once.
    bool wait_ready(std::chrono::milliseconds timeout) const;

    struct Impl;

private:
    explicit Sandbox(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> m_impl;
};

}  // namespace safepy

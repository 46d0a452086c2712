// Starting the jail process and draining a run: fork, child set-up (cgroup,
// rlimits, unprivileged uid), exec; then one poll loop over every pipe with
// caps enforced while reading, a wall-clock timer and CPU accounting.
#pragma once

#include "contain.hpp"
#include "fd.hpp"
#include "safepy/safepy.hpp"

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <sys/resource.h>
#include <vector>

namespace safepy {

// Bytes of the result channel beyond the result itself: the runner's "S"
// marker and its record header, or an error record's message.
inline constexpr std::uint64_t k_channel_overhead = 64 * 1024;

struct SpawnSpec {
    std::vector<std::string> argv;
    std::vector<std::string> environment;  // the jail process's own, minimal
    std::string script;                    // becomes k_script_fd
    std::string policy;                    // becomes k_policy_fd (BPF or nsjail config)
    bool jail_log = false;                 // open a pipe on k_jail_log_fd
    Limits limits;
    bool rlimit_memory = false;            // no cgroup: RLIMIT_AS and RLIMIT_NPROC stand in
    bool unlimited_cpu = false;            // a long-lived process (the warm template)
    int control_fd = -1;                   // >= 0: goes on k_result_fd instead of a result pipe
    bool drop_privileges = false;          // setresuid/gid before exec (when started as root)
    std::uint32_t uid = 65534;
    std::uint32_t gid = 65534;
    std::vector<int> cgroup_join_fds;
};

// A running job: the process whose exit ends the run, and the read ends of its
// pipes.
struct Job {
    pid_t pid = -1;
    Fd pidfd;          // readable when the process exits; required
    Fd out, err, result, log;
    std::chrono::steady_clock::time_point started;
    std::function<void()> kill;  // ends the process and everything it started
    // After exit: the raw wait status, CPU time and peak RSS; false if unknown.
    std::function<bool(int& status, rusage& usage)> reap;
};

// RLIMIT_CPU's soft limit for a run. With a cgroup the library's own CPU
// accounting ends the run at the limit and the rlimit is a backstop a second
// later; without one the rlimit is the limit.
inline std::uint64_t rlimit_cpu_seconds(const Limits& limits, bool cgroup_accounting) {
    return static_cast<std::uint64_t>((limits.cpu.count() + 999) / 1000) + (cgroup_accounting ? 1 : 0);
}

// The rlimit inputs of a run (lib/contain.cpp's rlimit_plan decides the rlimits
// from them, for cold and warm runs alike).
safepy_run_limits run_limits(const Limits& limits, Mode mode, bool rlimit_memory, bool unlimited_cpu);

// Starts the jail; on failure returns a job with pid -1 and sets `error`.
Job start_jail(const SpawnSpec& spec, std::string& error);

struct DrainSpec {
    Limits limits;
    std::function<std::uint64_t()> cpu_microseconds;  // whole-run CPU, may be empty
    std::function<void()> kill_all;                   // every process of the run, may be empty
    std::function<bool()> cancelled;                  // checked every 100 ms, may be empty
};

struct SpawnResult {
    std::string spawn_error;  // non-empty: nothing ran
    int wait_status = 0;      // raw status of the job's process
    std::string stdout_bytes;
    std::string stderr_bytes;
    std::string result_bytes;
    std::string jail_log;
    bool stdout_over = false;
    bool stderr_over = false;
    bool result_over = false;
    bool wall_timeout = false;
    bool cpu_timeout = false;
    bool cancelled = false;
    std::chrono::milliseconds wall{0};
    std::chrono::milliseconds cpu{0};
    std::uint64_t max_rss_bytes = 0;
};

// Whether this kernel gives pidfds (Linux 5.3+), which runs require.
bool pidfd_supported();

// Reads every pipe of `job` until it exits (or is killed for a limit).
SpawnResult drain_job(Job& job, const DrainSpec& spec);

// start_jail then drain_job, for a cold run.
SpawnResult spawn_and_drain(const SpawnSpec& spec, const DrainSpec& drain);

}  // namespace safepy

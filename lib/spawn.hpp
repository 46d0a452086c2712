// Starting the jail process and draining it: fork, child set-up (cgroup,
// rlimits, unprivileged uid), exec, then one poll loop over every pipe with
// caps enforced while reading, a wall-clock timer and CPU accounting.
#pragma once

#include "safepy/safepy.hpp"

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace safepy {

struct SpawnSpec {
    std::vector<std::string> argv;
    std::vector<std::string> environment;  // the jail process's own, minimal
    std::string script;                    // becomes k_script_fd
    std::string policy;                    // becomes k_policy_fd (BPF or nsjail config)
    bool jail_log = false;                 // open a pipe on k_jail_log_fd
    Limits limits;
    bool rlimit_memory = false;            // no cgroup: RLIMIT_AS and RLIMIT_NPROC stand in
    bool drop_privileges = false;          // setresuid/gid before exec (when started as root)
    std::uint32_t uid = 65534;
    std::uint32_t gid = 65534;
    std::vector<int> cgroup_join_fds;
    std::function<std::uint64_t()> cpu_microseconds;  // whole-run CPU, may be empty
    std::function<void()> kill_all;                   // kills every process of the run
};

struct SpawnResult {
    std::string spawn_error;  // non-empty: nothing ran
    int wait_status = 0;      // raw status of the jail process
    std::string stdout_bytes;
    std::string stderr_bytes;
    std::string result_bytes;
    std::string jail_log;
    bool stdout_over = false;
    bool stderr_over = false;
    bool result_over = false;
    bool wall_timeout = false;
    bool cpu_timeout = false;
    std::chrono::milliseconds wall{0};
    std::chrono::milliseconds cpu{0};
    std::uint64_t max_rss_bytes = 0;
};

SpawnResult spawn_and_drain(const SpawnSpec& spec);

}  // namespace safepy

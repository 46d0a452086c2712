// Per-run cgroups: created, limited, read and removed by the library, for
// both jails. v2 where it is writable with the memory and pids controllers,
// else v1, else none (the caller falls back to rlimits).
#pragma once

#include "safepy/safepy.hpp"

#include <memory>
#include <sys/types.h>
#include <string>
#include <vector>

namespace safepy {

enum class CgroupVersion { none, v1, v2 };

struct CgroupUsage {
    std::uint64_t oom_kills = 0;
    std::uint64_t peak_memory_bytes = 0;  // 0 when the kernel does not report it
    std::uint64_t cpu_microseconds = 0;   // 0 when not accounted
    bool has_cpu = false;
};

class RunCgroup {
public:
    ~RunCgroup();  // kills what is left and removes the directories
    RunCgroup(const RunCgroup&) = delete;
    RunCgroup& operator=(const RunCgroup&) = delete;

    // Open cgroup.procs descriptors: the child writes its pid into each
    // before it drops privileges.
    const std::vector<int>& join_fds() const { return m_join_fds; }

    // Applies a run's memory and pids limits; false with `error` on failure.
    bool set_limits(const Limits& limits, std::string& error) const;

    // Moves a process (by host pid) into the run's cgroups.
    bool join(pid_t pid) const;

    CgroupUsage usage() const;
    std::uint64_t cpu_microseconds() const;

    // SIGKILLs every process in the run's cgroups until they are empty.
    void kill_all() const;

private:
    friend class Cgroups;
    RunCgroup() = default;
    CgroupVersion m_version = CgroupVersion::none;
    std::vector<std::string> m_dirs;  // v1: memory, pids, then cpuacct and cpu when mounted; v2: one
    int m_cpuacct = -1;               // v1: index in m_dirs of the cpuacct (CPU time) directory
    int m_cpu = -1;                   // index of the directory with the cpu controller (share, quota)
    std::vector<int> m_join_fds;
};

class Cgroups {
public:
    // Finds a writable place for per-run cgroups and removes runs that a
    // killed process left behind. `note` explains a fallback.
    static Cgroups detect(std::string& note);

    CgroupVersion version() const { return m_version; }
    std::string name() const;   // "cgroup-v2", "cgroup-v1" or "rlimits-only"
    std::string path() const;   // where runs are created

    // How CPU is shared between runs, for doctor: the controller's files, or why there is no share.
    std::string cpu_mode() const;

    // Why swap escapes the memory limit (swap on, not accounted); empty when it does not.
    std::string swap_note() const;

    // A new cgroup for one run with the memory and pids limits applied.
    std::unique_ptr<RunCgroup> create(const Limits& limits, std::string& error) const;

private:
    void weigh_base() const;

    CgroupVersion m_version = CgroupVersion::none;
    std::vector<std::string> m_bases;  // as RunCgroup::m_dirs
    int m_cpuacct = -1;
    int m_cpu = -1;
};

}  // namespace safepy

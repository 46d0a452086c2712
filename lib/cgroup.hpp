// Per-run cgroups: created, limited, read and removed by the library, for
// both jails. v2 where it is writable with the memory and pids controllers,
// else v1, else none (the caller refuses to start unless the operator chose
// rlimits).
#pragma once

#include "safepy/safepy.hpp"

#include <memory>
#include <sys/types.h>
#include <string>
#include <string_view>
#include <vector>

namespace safepy {

enum class CgroupVersion { none, v1, v2 };

// This process's cgroup path from the text of /proc/self/cgroup: the v2 entry
// ("0::/path") for `controller` "", else the v1 line that lists `controller`.
// "/" when there is no such line.
std::string cgroup_path_for(std::string_view proc_self_cgroup, std::string_view controller);

// The directory names the v2 set-up creates below safepy's home cgroup.
inline constexpr std::string_view k_v2_server_leaf = "safepy-server";  // safepy itself
inline constexpr std::string_view k_v2_other_leaf = "safepy-other";    // processes that shared the home with it
inline constexpr std::string_view k_v2_runs = "safepy";                // per-run cgroups: safepy/run-PID-N

// The v2 cgroup where safepy sets up, given its own cgroup path: the parent
// when safepy already sits in one of the leaves above (a process started from
// a shell that an earlier safepy moved), else the cgroup itself.
std::string v2_home_path(const std::string& own_path);

// What safepy found in its v2 home cgroup, read before anything is changed.
struct V2Observation {
    std::string home_dir;          // absolute: mount point + v2_home_path()
    bool home_is_root = false;     // the hierarchy's real root (exempt from the no-internal-process rule)
    bool self_listed = false;      // this process appears in the home or one of its leaves
    bool writable = false;         // cgroup.procs and cgroup.subtree_control can be written
    int not_writable_errno = 0;    // why not: EROFS (read-only mount), EACCES (not delegated to this uid)
    std::string controllers;       // cgroup.controllers of the home
    std::string subtree_control;   // cgroup.subtree_control of the home
    std::vector<pid_t> home_pids;  // cgroup.procs of the home itself (0: outside our PID namespace)
    pid_t self = 0;
};

// The steps that give safepy per-run v2 cgroups, or why it cannot have them.
struct V2Plan {
    std::string refusal;           // non-empty: no per-run cgroups, and why
    std::string home_dir;
    std::string server_leaf;       // where this process moves; empty: stays (the root cgroup)
    std::string other_leaf;        // where other_pids move
    std::vector<pid_t> other_pids; // other processes of the home
    std::string enable;            // required, for the home's cgroup.subtree_control: "+memory +pids"
    std::string optional_enable;   // tried after it, failure ignored: "+cpu" when available
    std::string runs_dir;          // parent of the per-run cgroups
    std::string runs_enable;       // required, for runs_dir's cgroup.subtree_control
    std::string runs_optional_enable;
};

// Decides the v2 set-up from an observation; no I/O. Cgroup v2 lets a
// cgroup give controllers to its children only when it holds no processes
// itself, so safepy moves itself (all threads) into a leaf, and any process
// that shares its cgroup into another, before it enables memory and pids.
V2Plan plan_v2(const V2Observation& observed);

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

    // Makes the cgroup ready for another run, in place of removing it and
    // creating a new one (a mkdir and rmdir per hierarchy, and the kernel's
    // deferred teardown): only when every hierarchy holds no process, it
    // holds at most k_recycle_memory_bytes of memory, and each counter a run
    // reports starts again from zero (peak memory and CPU time reset or
    // measured from here, OOM kills counted from here). False, with why, when
    // it cannot be reused; it must then be removed. Only where
    // Cgroups::recyclable().
    bool recycle(std::string& why);

    // What a recycled cgroup may still hold: page cache the last run read,
    // which the kernel reclaims under the next run's limit before it fails.
    static constexpr std::uint64_t k_recycle_memory_bytes = 4 << 20;

private:
    friend class Cgroups;
    RunCgroup() = default;
    CgroupVersion m_version = CgroupVersion::none;
    std::vector<std::string> m_dirs;  // v1: memory, pids, then cpuacct and cpu when mounted; v2: one
    int m_cpuacct = -1;               // v1: index in m_dirs of the cpuacct (CPU time) directory
    int m_cpu = -1;                   // index of the directory with the cpu controller (share, quota)
    std::vector<int> m_join_fds;
    // Counters that cannot be reset, as they stood when the cgroup was recycled.
    std::uint64_t m_oom_kills_base = 0;
    std::uint64_t m_cpu_base_us = 0;  // v2's cpu.stat
    int m_peak_fd = -1;               // v2: memory.peak, reset for reads through this descriptor
};

class Cgroups {
public:
    // Finds or sets up a writable place for per-run cgroups (on v2 this may
    // move this process, and others sharing its cgroup, into leaves) and
    // removes runs that a killed process left behind. reason() says what was
    // done, or why no cgroup can be had.
    static Cgroups detect();

    // No cgroups, because the operator chose rlimits.
    static Cgroups rlimits_only(std::string reason);

    CgroupVersion version() const { return m_version; }
    std::string name() const;   // "cgroup-v2", "cgroup-v1" or "rlimits-only"
    std::string path() const;   // where runs are created
    const std::string& reason() const { return m_reason; }

    // How CPU is shared between runs, for doctor: the controller's files, or why there is no share.
    std::string cpu_mode() const;

    // Why swap escapes the memory limit (swap on, not accounted); empty when it does not.
    std::string swap_note() const;

    // Whether a run's cgroup can be recycled (RunCgroup::recycle) here: on v1,
    // and on v2 where memory.peak can be reset (Linux 6.12+). Decided once.
    bool recyclable() const { return m_recyclable; }

    // A new cgroup for one run with the memory and pids limits applied.
    std::unique_ptr<RunCgroup> create(const Limits& limits, std::string& error) const;

private:
    void weigh_base() const;

    CgroupVersion m_version = CgroupVersion::none;
    std::vector<std::string> m_bases;  // as RunCgroup::m_dirs
    int m_cpuacct = -1;
    int m_cpu = -1;
    std::string m_reason;
    bool m_recyclable = false;
};

}  // namespace safepy

// Starting the jail process: fork, child set-up (cgroup, descriptors,
// rlimits, unprivileged uid, no_new_privs), exec. supervisor.hpp watches it.
#pragma once

#include "cgroup.hpp"
#include "contain.hpp"
#include "fd.hpp"
#include "supervisor.hpp"
#include "safepy/safepy.hpp"

#include <chrono>
#include <cstdint>
#include <string>
#include <sys/resource.h>
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
    bool unlimited_cpu = false;            // a long-lived process (the warm template)
    int control_fd = -1;                   // >= 0: goes on k_result_fd instead of a result pipe
    bool drop_privileges = false;          // setresuid/gid before exec (when started as root)
    std::uint32_t uid = 65534;
    std::uint32_t gid = 65534;
    std::vector<int> cgroup_join_fds;
};

// A jail process: a cold run's, or a warm template. Ends its process group;
// CPU accounting and killing the rest come from the run's cgroup, if any.
class JailProcess final : public RunProcess {
public:
    JailProcess() = default;
    explicit JailProcess(pid_t pid) : m_pid(pid) {}

    pid_t pid() const { return m_pid; }
    void set_cgroup(const RunCgroup* cgroup) { m_cgroup = cgroup; }

    void kill() override;
    bool reap(int& status, rusage& usage) override;

private:
    pid_t m_pid = -1;
};

// A started jail: its process and the descriptors to supervise it with.
struct Jail {
    JailProcess process;
    RunChannels channels;
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

// Starts the jail; on failure returns a jail whose pid is -1 and sets `error`.
Jail start_jail(const SpawnSpec& spec, std::string& error);

// Whether this kernel gives pidfds (Linux 5.3+), which runs require.
bool pidfd_supported();

// start_jail then supervise, for a cold run.
SpawnResult spawn_and_supervise(const SpawnSpec& spec, const RunCgroup* cgroup, int cancel_fd);

}  // namespace safepy

// Warm mode: a template Python inside the jail imports the heavy modules once
// and forks a prepared child per run (see template.py). This is the pool: the
// templates, their prepared children and the policy for handing them out;
// warm_template.hpp runs one template process, warm_slot.hpp makes and
// drives its children. There is a template per
// concurrent run, each with a host uid of its own, and a run holds its
// template's uid until it ends, so no two runs at once share a uid. A manager
// thread keeps children ready, each already in its own per-run cgroup, so that
// neither the fork nor the cgroup move is on a request's path; a finished
// run's cgroup is recycled for a later child once it is shown empty and its
// counters start over (RunCgroup::recycle), else removed.
#pragma once

#include "cgroup.hpp"
#include "jail_command.hpp"
#include "spawn.hpp"
#include "uid_pool.hpp"

#include <functional>
#include <memory>
#include <string>
#include <string_view>

namespace safepy {

struct WarmSettings {
    SpawnSpec template_spawn;     // the template's jail (JailPlan::warm_template); script = template_payload()
    std::function<std::vector<std::string>(std::uint32_t uid)> template_argv;  // the jail's argv for a template's uid
    const Cgroups* cgroups = nullptr;
    UidPool* uids = nullptr;      // when set, each template runs as a uid of its own
    std::size_t templates = 1;    // one per concurrent run: a template serves one run at a time
    std::size_t pool_size = 2;    // children kept prepared, over all templates
    Limits defaults;  // limits a prepared child's cgroup starts with
};

// What the template reads on its script descriptor: the length of the
// containment library (8 bytes, little-endian), the library, then the
// children's seccomp filter (BPF).
std::string template_payload(std::string_view contain_library, std::string_view bpf);

struct WarmRun {
    SpawnResult spawned;
    CgroupUsage usage;
};

class WarmPool {
public:
    // Starts the manager; the template starts in the background and is
    // restarted whenever it dies.
    explicit WarmPool(WarmSettings settings);
    ~WarmPool();  // stops the manager, the template and every prepared child
    WarmPool(const WarmPool&) = delete;
    WarmPool& operator=(const WarmPool&) = delete;

    // Runs one request on a prepared child. Safe from many threads.
    // cancel_fd: an eventfd that ends the run when signalled, or -1.
    WarmRun run(const Request& request, int cancel_fd);

    // "ready (N prepared)" or why the template is not running.
    std::string state() const;

    // Waits until the template is up (or `timeout` passes); false if not.
    bool wait_ready(std::chrono::milliseconds timeout) const;

    struct Impl;

private:
    std::unique_ptr<Impl> m_impl;
};

}  // namespace safepy

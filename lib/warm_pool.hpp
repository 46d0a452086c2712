// Warm mode: a template Python inside the jail imports the heavy modules once
// and forks a prepared child per run (see template.py). A manager thread keeps
// a small pool of children ready, each already in its own per-run cgroup, so
// that neither the fork nor the cgroup move is on a request's path.
#pragma once

#include "cgroup.hpp"
#include "jail_command.hpp"
#include "spawn.hpp"

#include <functional>
#include <memory>
#include <string>

namespace safepy {

struct WarmSettings {
    SpawnSpec template_spawn;     // the template's jail (JailPlan::warm_template); script = the BPF for the children
    const Cgroups* cgroups = nullptr;
    std::size_t pool_size = 2;
    Limits defaults;  // limits a prepared child's cgroup starts with
};

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
    WarmRun run(const Request& request, std::function<bool()> cancelled);

    // "ready (N prepared)" or why the template is not running.
    std::string state() const;

    // Waits until the template is up (or `timeout` passes); false if not.
    bool wait_ready(std::chrono::milliseconds timeout) const;

    struct Impl;

private:
    std::unique_ptr<Impl> m_impl;
};

}  // namespace safepy

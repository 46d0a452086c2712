// A warm template process: its jail (started, watched, stopped), its control
// socket and its log. See template.py for what runs inside.
#pragma once

#include "cgroup.hpp"
#include "spawn.hpp"

#include <memory>
#include <mutex>
#include <string>

namespace safepy {

class TemplateProcess {
public:
    TemplateProcess() = default;
    ~TemplateProcess() { stop(); }
    TemplateProcess(const TemplateProcess&) = delete;
    TemplateProcess& operator=(const TemplateProcess&) = delete;

    // Starts the template's jail from `spec` (its control socket goes on the
    // result descriptor), in a cgroup of its own when `cgroups` is set.
    bool start(SpawnSpec spec, const Cgroups* cgroups, std::string& error);

    // Kills and reaps the template (its children die with its namespaces).
    void stop();

    bool alive() const;

    // Sends SPAWN with the host end's peer, `slot_socket`; one at a time,
    // from any thread. False when the template is not running.
    bool send_spawn(int slot_socket);

    // What the template and its jail wrote so far (the last 16 KiB).
    const std::string& collect_log();

private:
    std::mutex m_control_mutex;
    Fd m_control;  // under m_control_mutex
    Jail m_jail;
    std::string m_log;
    std::unique_ptr<RunCgroup> m_cgroup;
};

}  // namespace safepy

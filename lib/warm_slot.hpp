// The warm slot factory: a prepared child of a template (SPAWN, then READY
// with its credentials, its pidfd, its run's cgroup), the hand-over of a run
// (RUN with its descriptors) and how the run ended (EXIT from the template).
// The messages are template_protocol.hpp's.
#pragma once

#include "cgroup.hpp"
#include "fd.hpp"
#include "supervisor.hpp"
#include "warm_template.hpp"
#include "safepy/safepy.hpp"

#include <memory>
#include <string>

namespace safepy {

// A prepared child: pid 1 of its own namespaces, waiting for a run.
struct Slot {
    Fd socket;  // host end of the slot socket
    pid_t pid = -1;
    Fd pidfd;
    std::unique_ptr<RunCgroup> cgroup;
    Limits cgroup_limits;  // what the cgroup is set to now
};

// A cgroup an earlier run left, recycled (RunCgroup::recycle), with the
// limits it is set to.
struct SpareCgroup {
    std::unique_ptr<RunCgroup> cgroup;
    Limits limits;
};

// Asks `owner` for a prepared child and moves it into a cgroup of its own
// when `cgroups` is set: `spare` when it holds one, else a new one with
// `defaults`. nullptr and `error` on failure.
std::unique_ptr<Slot> make_slot(TemplateProcess& owner, const Cgroups* cgroups, const Limits& defaults,
                                SpareCgroup spare, std::string& error);

// The host's ends of a run's pipes.
struct SlotPipes {
    Fd out, err, result;
};

// Hands `request` to the slot's child; false (and `error`) if it could not be
// delivered, e.g. because the child died while prepared.
bool start_run(Slot& slot, const Request& request, bool rlimit_memory, SlotPipes& pipes, std::string& error);

// A warm child during its run. Its parent, the template (which never runs user
// code), reports how it ended on the slot socket.
class WarmChild final : public RunProcess {
public:
    WarmChild(int pidfd, int socket, const RunCgroup* cgroup) : m_pidfd(pidfd), m_socket(socket) { m_cgroup = cgroup; }

    void kill() override;
    bool reap(int& status, rusage& usage) override;

private:
    int m_pidfd;  // owned by the run's channels
    int m_socket;
};

// The RUN message for a request (template_protocol.hpp).
safepy_run_message run_message(const Request& request, bool rlimit_memory);

}  // namespace safepy

#include "warm_template.hpp"

#include "template_protocol.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>

namespace safepy {
namespace {

constexpr std::size_t k_log_bytes = 16 * 1024;

// Reads what is waiting on a non-blocking descriptor, for error messages.
std::string read_available(int fd, std::size_t cap) {
    std::string text;
    char buffer[4096];
    while (fd >= 0 && text.size() < cap) {
        const ssize_t n = read(fd, buffer, sizeof buffer);
        if (n <= 0) {
            break;
        }
        text.append(buffer, static_cast<std::size_t>(n));
    }
    return text;
}

}  // namespace

bool TemplateProcess::start(SpawnSpec spec, const Cgroups* cgroups, std::string& error) {
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) != 0) {
        error = std::string("socketpair: ") + std::strerror(errno);
        return false;
    }
    Fd host(pair[0]);
    Fd child(pair[1]);
    spec.control_fd = child.get();
    if (cgroups) {
        // The template lives in a cgroup of its own; each
        // prepared child moves to its run's cgroup.
        Limits limits = spec.limits;
        limits.memory_bytes = std::max<std::uint64_t>(limits.memory_bytes, 2ull << 30);
        limits.processes = 4096;
        m_cgroup = cgroups->create(limits, error);
        if (!m_cgroup) {
            return false;
        }
        spec.cgroup_join_fds = m_cgroup->join_fds();
    }
    m_jail = start_jail(spec, error);
    if (m_jail.process.pid() < 0) {
        return false;
    }
    fcntl(m_jail.channels.err.get(), F_SETFL, O_NONBLOCK);
    if (m_jail.channels.log) {
        fcntl(m_jail.channels.log.get(), F_SETFL, O_NONBLOCK);
    }
    m_jail.channels.out.reset();  // the template prints nothing; a write would fail, not block
    std::lock_guard lock(m_control_mutex);
    m_control = std::move(host);
    return true;
}

void TemplateProcess::stop() {
    if (m_jail.process.pid() >= 0) {
        m_jail.process.kill();
        int status;
        rusage usage;
        m_jail.process.reap(status, usage);
        collect_log();
    }
    m_jail = Jail();
    {
        std::lock_guard lock(m_control_mutex);
        m_control.reset();
    }
    m_cgroup.reset();
}

bool TemplateProcess::alive() const {
    if (m_jail.process.pid() < 0) {
        return false;
    }
    pollfd item{m_jail.channels.pidfd.get(), POLLIN, 0};
    return poll(&item, 1, 0) == 0;
}

bool TemplateProcess::send_spawn(int slot_socket) {
    const safepy_message message{SAFEPY_PROTOCOL_MAGIC, SAFEPY_MESSAGE_SPAWN};
    SafepyFrame<sizeof slot_socket> frame(&message, sizeof message, SCM_RIGHTS, &slot_socket);
    std::lock_guard lock(m_control_mutex);
    if (!m_control) {
        return false;
    }
    ssize_t sent;
    do {
        sent = sendmsg(m_control.get(), &frame.header, MSG_NOSIGNAL);
    } while (sent < 0 && errno == EINTR);
    return sent == static_cast<ssize_t>(sizeof message);
}

const std::string& TemplateProcess::collect_log() {
    m_log += read_available(m_jail.channels.err.get(), k_log_bytes);
    m_log += read_available(m_jail.channels.log.get(), k_log_bytes);  // nsjail's own log
    if (m_log.size() > k_log_bytes) {
        m_log.erase(0, m_log.size() - k_log_bytes);
    }
    return m_log;
}

}  // namespace safepy

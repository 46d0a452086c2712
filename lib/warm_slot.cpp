#include "warm_slot.hpp"

#include "job.hpp"
#include "spawn.hpp"
#include "template_protocol.hpp"

#include <cerrno>
#include <csignal>
#include <cstring>
#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <vector>

namespace safepy {
namespace {

constexpr auto k_ready_timeout = std::chrono::seconds(20);
constexpr auto k_exit_report_timeout = std::chrono::seconds(2);

bool wait_readable(int fd, std::chrono::milliseconds timeout) {
    pollfd item{fd, POLLIN, 0};
    int ready;
    do {
        ready = poll(&item, 1, static_cast<int>(timeout.count()));
    } while (ready < 0 && errno == EINTR);
    return ready > 0;
}

// Receives one message and the sender's credentials (SO_PASSCRED is on).
bool receive_with_credentials(int socket, std::string& message, ucred& credentials) {
    char buffer[256];
    iovec data{buffer, sizeof buffer};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(ucred)) + CMSG_SPACE(sizeof(int) * 4)];
    msghdr header{};
    header.msg_iov = &data;
    header.msg_iovlen = 1;
    header.msg_control = control;
    header.msg_controllen = sizeof control;
    const ssize_t got = recvmsg(socket, &header, MSG_CMSG_CLOEXEC);
    if (got <= 0) {
        return false;
    }
    message.assign(buffer, static_cast<std::size_t>(got));
    bool found = false;
    for (cmsghdr* item = CMSG_FIRSTHDR(&header); item; item = CMSG_NXTHDR(&header, item)) {
        if (item->cmsg_level == SOL_SOCKET && item->cmsg_type == SCM_CREDENTIALS) {
            std::memcpy(&credentials, CMSG_DATA(item), sizeof credentials);
            found = true;
        } else if (item->cmsg_level == SOL_SOCKET && item->cmsg_type == SCM_RIGHTS) {
            // Nobody should send us descriptors: close them.
            const auto count = (item->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            for (std::size_t i = 0; i < count; ++i) {
                int fd;
                std::memcpy(&fd, CMSG_DATA(item) + i * sizeof(int), sizeof fd);
                close(fd);
            }
        }
    }
    return found;
}

bool is_ready(const std::string& message) {
    safepy_message ready{};
    if (message.size() != sizeof ready) {
        return false;
    }
    std::memcpy(&ready, message.data(), sizeof ready);
    return ready.magic == SAFEPY_PROTOCOL_MAGIC && ready.kind == SAFEPY_MESSAGE_READY;
}

Fd sealed_memory_file(const std::string& content) {
    Fd fd(memfd_create("safepy-script", MFD_CLOEXEC | MFD_ALLOW_SEALING));
    std::size_t done = 0;
    while (fd && done < content.size()) {
        const ssize_t n = write(fd.get(), content.data() + done, content.size() - done);
        if (n <= 0) {
            return Fd();
        }
        done += static_cast<std::size_t>(n);
    }
    if (fd) {
        fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL);
        lseek(fd.get(), 0, SEEK_SET);
    }
    return fd;
}

bool make_pipe(Fd& read_end, Fd& write_end) {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) {
        return false;
    }
    read_end.reset(fds[0]);
    write_end.reset(fds[1]);
    return true;
}

}  // namespace

safepy_run_message run_message(const Request& request, bool rlimit_memory) {
    safepy_run_message message{};
    message.magic = SAFEPY_PROTOCOL_MAGIC;
    message.kind = SAFEPY_MESSAGE_RUN;
    message.limits = run_limits(request.limits, request.mode, rlimit_memory, false);
    return message;
}

std::unique_ptr<Slot> make_slot(TemplateProcess& owner, const Cgroups* cgroups, const Limits& defaults,
                                SpareCgroup spare, std::string& error) {
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) != 0) {
        error = std::string("socketpair: ") + std::strerror(errno);
        return nullptr;
    }
    auto slot = std::make_unique<Slot>();
    slot->socket.reset(pair[0]);
    Fd child(pair[1]);
    const int on = 1;
    setsockopt(slot->socket.get(), SOL_SOCKET, SO_PASSCRED, &on, sizeof on);
    if (!owner.send_spawn(child.get())) {
        error = "the warm template is not running";
        return nullptr;
    }
    child.reset();
    std::string message;
    ucred credentials{};
    if (!wait_readable(slot->socket.get(), k_ready_timeout) ||
        !receive_with_credentials(slot->socket.get(), message, credentials) || !is_ready(message) ||
        credentials.pid <= 0) {
        error = "a warm child did not get ready";
        return nullptr;
    }
    slot->pid = credentials.pid;
    slot->pidfd.reset(static_cast<int>(syscall(SYS_pidfd_open, slot->pid, 0)));
    if (!slot->pidfd) {
        error = std::string("pidfd_open: ") + std::strerror(errno);
        return nullptr;
    }
    if (cgroups) {
        if (spare.cgroup) {
            slot->cgroup = std::move(spare.cgroup);
            slot->cgroup_limits = spare.limits;
        } else {
            slot->cgroup = cgroups->create(defaults, error);
            slot->cgroup_limits = defaults;
        }
        if (!slot->cgroup) {
            return nullptr;
        }
        if (!slot->cgroup->join(slot->pid)) {
            error = std::string("cannot move a warm child into its cgroup: ") + std::strerror(errno);
            return nullptr;
        }
    }
    return slot;
}

bool start_run(Slot& slot, const Request& request, bool rlimit_memory, SlotPipes& pipes, std::string& error) {
    Fd out_r, out_write, err_r, err_write, result_r, result_write;
    if (!make_pipe(out_r, out_write) || !make_pipe(err_r, err_write) || !make_pipe(result_r, result_write)) {
        error = std::string("pipe2: ") + std::strerror(errno);
        return false;
    }
    Fd script = sealed_memory_file(encode_job(request));
    if (!script) {
        error = "cannot hold the script in memory";
        return false;
    }
    const safepy_run_message message = run_message(request, rlimit_memory);
    const int fds[] = {out_write.get(), err_write.get(), result_write.get(), script.get()};
    SafepyFrame<sizeof fds> frame(&message, sizeof message, SCM_RIGHTS, fds);
    ssize_t sent;
    do {
        sent = sendmsg(slot.socket.get(), &frame.header, MSG_NOSIGNAL);
    } while (sent < 0 && errno == EINTR);
    if (sent != static_cast<ssize_t>(sizeof message)) {
        error = "the prepared child is gone";
        return false;
    }
    pipes.out = std::move(out_r);
    pipes.err = std::move(err_r);
    pipes.result = std::move(result_r);
    return true;
}

void WarmChild::kill() { syscall(SYS_pidfd_send_signal, m_pidfd, SIGKILL, nullptr, 0); }

bool WarmChild::reap(int& status, rusage& usage) {
    if (!wait_readable(m_socket, k_exit_report_timeout)) {
        return false;
    }
    alignas(safepy_exit_message) char buffer[2 * sizeof(safepy_exit_message)];
    const ssize_t got = recv(m_socket, buffer, sizeof buffer, 0);
    safepy_exit_message exit{};
    if (got != static_cast<ssize_t>(sizeof exit)) {
        return false;
    }
    std::memcpy(&exit, buffer, sizeof exit);
    if (exit.magic != SAFEPY_PROTOCOL_MAGIC || exit.kind != SAFEPY_MESSAGE_EXIT) {
        return false;
    }
    status = exit.wait_status;
    usage.ru_utime.tv_sec = static_cast<time_t>(exit.cpu_ms / 1000);
    usage.ru_utime.tv_usec = static_cast<suseconds_t>((exit.cpu_ms % 1000) * 1000);
    usage.ru_maxrss = static_cast<long>(exit.max_rss_kb);
    return true;
}

}  // namespace safepy

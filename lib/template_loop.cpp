#include "template_loop.hpp"

#include "contain.hpp"
#include "template_protocol.hpp"

#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

namespace safepy::contain {
namespace {

// The host keeps a few prepared children per template; more than this at
// once is a host bug, refused by closing the slot (the host sees it end).
constexpr int k_max_children = 64;

struct Child {
    pid_t pid;
    int pidfd;
    int slot;
};

// The template's state. Static, so that a fork copies no heap of ours.
Child g_children[k_max_children];
int g_child_count = 0;

constexpr const char* k_child_failed = "safepy warm child set-up failed: ";
constexpr const char* k_spawn_failed = "safepy warm template could not start a child: ";

// The template's log: its stderr, which the host collects.
void write_stderr(const char* first, const char* second, const char* third = "", const char* fourth = "") {
    char line[512];
    Text text(line, sizeof line - 1);
    text.add(first).add(second).add(third).add(fourth);
    const size_t length = std::strlen(line);
    line[length] = '\n';
    [[maybe_unused]] const ssize_t written = write(2, line, length + 1);
}

// For the caller of safepy_template_serve, when it cannot serve.
int refuse(char* error, size_t error_len, const char* what, const char* why, int error_number) {
    if (error && error_len > 0) {
        Text(error, error_len).add(what).add(why);
    }
    return -error_number;
}

ssize_t send_all_flags(int socket, const msghdr* header) {
    ssize_t sent;
    do {
        sent = sendmsg(socket, header, MSG_NOSIGNAL);
    } while (sent < 0 && errno == EINTR);
    return sent;
}

ssize_t receive(int socket, void* buffer, size_t size, int* fds, int max_fds, int& fd_count) {
    iovec data{buffer, size};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 8)];
    msghdr header{};
    header.msg_iov = &data;
    header.msg_iovlen = 1;
    header.msg_control = control;
    header.msg_controllen = sizeof control;
    ssize_t got;
    do {
        got = recvmsg(socket, &header, MSG_CMSG_CLOEXEC);
    } while (got < 0 && errno == EINTR);
    fd_count = 0;
    if (got < 0) {
        return got;
    }
    for (cmsghdr* item = CMSG_FIRSTHDR(&header); item; item = CMSG_NXTHDR(&header, item)) {
        if (item->cmsg_level != SOL_SOCKET || item->cmsg_type != SCM_RIGHTS) {
            continue;
        }
        const size_t count = (item->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < count; ++i) {
            int fd;
            std::memcpy(&fd, CMSG_DATA(item) + i * sizeof(int), sizeof fd);
            if (fd_count < max_fds) {
                fds[fd_count++] = fd;
            } else {
                close(fd);
            }
        }
    }
    if (header.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) {
        // A message or descriptors that did not fit: not ours to use.
        for (int i = 0; i < fd_count; ++i) {
            close(fds[i]);
        }
        fd_count = 0;
        errno = EMSGSIZE;
        return -1;
    }
    return got;
}

void close_all(const int* fds, int count) {
    for (int i = 0; i < count; ++i) {
        close(fds[i]);
    }
}

// Threads other than the caller would leave their locks held in a child
// forked without Python's fork handlers.
int thread_count() {
    const int dir = open("/proc/self/task", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir < 0) {
        return -1;
    }
    char buffer[1024];
    int count = 0;
    for (;;) {
        const long got = syscall(SYS_getdents64, dir, buffer, sizeof buffer);
        if (got <= 0) {
            break;
        }
        for (long at = 0; at < got;) {
            const auto* entry = reinterpret_cast<const dirent64*>(buffer + at);
            if (entry->d_name[0] != '.') {
                ++count;
            }
            at += entry->d_reclen;
        }
    }
    close(dir);
    return count;
}

// In the child, first: no two runs share a random stream.
void refill(const safepy_reseed* reseed, uint32_t count) {
    for (uint32_t i = 0; i < count; ++i) {
        auto* key = static_cast<unsigned char*>(reseed[i].key);
        for (uint64_t done = 0; done < reseed[i].key_bytes;) {
            const ssize_t got = getrandom(key + done, reseed[i].key_bytes - done, 0);
            if (got < 0 && errno == EINTR) {
                continue;
            }
            if (got <= 0) {
                write_stderr(k_child_failed, "getrandom: ", error_text(errno));
                _exit(71);
            }
            done += static_cast<uint64_t>(got);
        }
        if (reseed[i].position) {
            *reseed[i].position = reseed[i].position_value;
        }
    }
}

// Runs the steps of one stage; false, with "context step: reason" on
// stderr (the template's log), when one fails.
bool run_stage(const safepy_contain_request& request, uint32_t uid, uint32_t gid, const char* context) {
    Plan plan;
    const char* why = nullptr;
    if (!make_plan(request, uid, gid, plan, why)) {
        write_stderr(context, why);
        return false;
    }
    if (const Failure failure = execute(plan); !failure.ok()) {
        write_stderr(context, failure.step, ": ", error_text(failure.error_number));
        return false;
    }
    return true;
}

// In the child: prepare, report READY, wait for the run, contain it.
// Returns the run's mode; exits on any failure (the host sees the slot end).
int become_run(int slot, const void* bpf, uint64_t bpf_bytes) {
    const uint32_t uid = static_cast<uint32_t>(getuid());
    const uint32_t gid = static_cast<uint32_t>(getgid());
    safepy_contain_request request{};
    request.size = sizeof request;
    request.stage = SAFEPY_STAGE_PREPARE;
    if (!run_stage(request, uid, gid, k_child_failed)) {
        _exit(71);
    }

    safepy_message ready{SAFEPY_PROTOCOL_MAGIC, SAFEPY_MESSAGE_READY};
    ucred credentials{getpid(), static_cast<uid_t>(uid), static_cast<gid_t>(gid)};
    SafepyFrame<sizeof credentials> frame(&ready, sizeof ready, SCM_CREDENTIALS, &credentials);
    if (send_all_flags(slot, &frame.header) != static_cast<ssize_t>(sizeof ready)) {
        _exit(0);  // the host gave up on this slot
    }

    safepy_run_message run{};
    int fds[4];
    int fd_count = 0;
    const ssize_t got = receive(slot, &run, sizeof run, fds, 4, fd_count);
    if (got != static_cast<ssize_t>(sizeof run) || fd_count != 4 || run.magic != SAFEPY_PROTOCOL_MAGIC ||
        run.kind != SAFEPY_MESSAGE_RUN || run.limits.mode > SAFEPY_MODE_CHECK) {
        _exit(0);  // the host gave up on this slot, or this is not a run
    }
    request.stage = SAFEPY_STAGE_RUN;
    request.limits = run.limits;
    request.stdout_fd = fds[0];
    request.stderr_fd = fds[1];
    request.result_fd = fds[2];
    request.script_fd = fds[3];
    request.bpf = bpf;
    request.bpf_bytes = bpf_bytes;
    // Arranging the descriptors closes the slot and everything else.
    if (!run_stage(request, uid, gid, k_child_failed)) {
        _exit(71);
    }
    return static_cast<int>(run.limits.mode);
}

// Backs the template's anonymous memory (the heap, Python's arenas) with
// huge pages where the kernel can: a fork then copies one entry per 2 MiB
// instead of 512, and each child's exit unmaps as few. Children still copy
// only the 4 KiB pages they write (the kernel splits a shared huge page
// first). Best effort: kernels without MADV_COLLAPSE (before 6.1) or with
// huge pages off refuse, and nothing changes.
void collapse_anonymous_memory() {
    constexpr uintptr_t k_huge = uintptr_t{1} << 21;
    const int maps = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
    if (maps < 0) {
        return;
    }
    // Read whole first: madvise changes the mappings being listed.
    static char text[1 << 18];
    size_t used = 0;
    for (;;) {
        const ssize_t got = read(maps, text + used, sizeof text - 1 - used);
        if (got <= 0) {
            break;
        }
        used += static_cast<size_t>(got);
    }
    close(maps);
    if (used == sizeof text - 1) {
        // Cut short: keep whole lines only.
        while (used > 0 && text[used - 1] != '\n') {
            --used;
        }
    }
    text[used] = '\0';
    for (char* line = text; *line;) {
        char* end = std::strchr(line, '\n');
        if (end) {
            *end = '\0';
        }
        // start-end perms offset dev inode [path]
        char* cursor = nullptr;
        const uintptr_t start = std::strtoull(line, &cursor, 16);
        const uintptr_t stop = *cursor == '-' ? std::strtoull(cursor + 1, &cursor, 16) : 0;
        if (*cursor != ' ' || std::strlen(cursor) < 5) {
            if (!end) {
                break;
            }
            line = end + 1;
            continue;  // not a line of the form this reads
        }
        const char* perms = cursor + 1;
        const char* path = perms;
        for (int field = 0; field < 4 && *path; ++field) {
            path = std::strchr(path, ' ');
            path = path ? path + 1 : "";
            while (*path == ' ') {
                ++path;
            }
        }
        const bool anonymous = *path == '\0' || std::strcmp(path, "[heap]") == 0;
        if (anonymous && perms[0] == 'r' && perms[1] == 'w' && perms[3] == 'p') {
            const uintptr_t first = (start + k_huge - 1) & ~(k_huge - 1);
            const uintptr_t last = stop & ~(k_huge - 1);
            if (last > first) {
                void* at = reinterpret_cast<void*>(first);
                madvise(at, last - first, MADV_HUGEPAGE);
                madvise(at, last - first, 25 /* MADV_COLLAPSE */);
            }
        }
        if (!end) {
            break;
        }
        line = end + 1;
    }
}

// Forks a prepared child for `slot`. In the template child_mode stays -1;
// in the child it is the run's mode, with the child contained (see serve).
void start_child(int control_fd, int slot, const void* bpf, uint64_t bpf_bytes, const safepy_reseed* reseed,
                 uint32_t reseed_count, int& child_mode) {
    child_mode = -1;
    if (g_child_count >= k_max_children) {
        write_stderr(k_spawn_failed, "too many children at once");
        close(slot);
        return;
    }
    safepy_contain_request request{};
    request.size = sizeof request;
    request.stage = SAFEPY_STAGE_FORK;
    if (!run_stage(request, 0, 0, k_spawn_failed)) {
        close(slot);
        return;
    }
    const pid_t pid = fork();
    if (pid < 0) {
        write_stderr(k_spawn_failed, "fork: ", error_text(errno));
        close(slot);
        return;
    }
    if (pid == 0) {
        // Only its own slot: not the control socket, not another child's
        // slot or pidfd.
        close(control_fd);
        for (int i = 0; i < g_child_count; ++i) {
            close(g_children[i].pidfd);
            close(g_children[i].slot);
        }
        g_child_count = 0;
        refill(reseed, reseed_count);
        child_mode = become_run(slot, bpf, bpf_bytes);
        return;
    }
    // A child that already ended is a zombie until reaped here: its pidfd is
    // readable at once.
    const int pidfd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
    if (pidfd < 0) {
        // Without a pidfd its exit could not be reported: end it now.
        kill(pid, SIGKILL);
        waitpid(pid, nullptr, 0);
        write_stderr(k_spawn_failed, "pidfd_open: ", error_text(errno));
        close(slot);
        return;
    }
    fcntl(pidfd, F_SETFD, FD_CLOEXEC);
    g_children[g_child_count++] = Child{pid, pidfd, slot};
}

// Reaps child `index` and reports its end on its slot.
void reap_child(int index) {
    const Child child = g_children[index];
    g_children[index] = g_children[--g_child_count];
    int status = 0;
    rusage usage{};
    pid_t reaped;
    do {
        reaped = wait4(child.pid, &status, 0, &usage);
    } while (reaped < 0 && errno == EINTR);
    close(child.pidfd);
    if (reaped == child.pid) {
        safepy_exit_message exit{};
        exit.magic = SAFEPY_PROTOCOL_MAGIC;
        exit.kind = SAFEPY_MESSAGE_EXIT;
        exit.wait_status = status;
        const uint64_t cpu_us = static_cast<uint64_t>(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) * 1000000u +
                                static_cast<uint64_t>(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec);
        exit.cpu_ms = cpu_us / 1000;
        exit.max_rss_kb = static_cast<uint64_t>(usage.ru_maxrss);
        // The host may have given up on this slot: nothing to do then.
        [[maybe_unused]] const ssize_t sent = send(child.slot, &exit, sizeof exit, MSG_NOSIGNAL);
    }
    close(child.slot);
}

}  // namespace
}  // namespace safepy::contain

extern "C" int safepy_template_serve(int control_fd, const void* bpf, uint64_t bpf_bytes,
                                     const safepy_reseed* reseed, uint32_t reseed_count, char* error,
                                     size_t error_len) {
    using namespace safepy::contain;
    if (control_fd < 0 || !bpf || bpf_bytes == 0) {
        return refuse(error, error_len, "serve: ", "missing control socket or seccomp filter", EINVAL);
    }
    for (uint32_t i = 0; i < reseed_count; ++i) {
        if (!reseed || !reseed[i].key || reseed[i].key_bytes == 0) {
            return refuse(error, error_len, "serve: ", "a generator to re-seed has no key", EINVAL);
        }
    }
    // Only this loop runs from here on, and it starts no thread: one check
    // covers every fork.
    if (const int threads = thread_count(); threads != 1) {
        return refuse(error, error_len, "serve: ",
                      threads < 0 ? "cannot count the template's threads"
                                  : "the template has more than one thread, whose locks a child would inherit",
                      EBUSY);
    }
    collapse_anonymous_memory();
    pollfd items[1 + k_max_children];
    for (;;) {
        items[0] = pollfd{control_fd, POLLIN, 0};
        for (int i = 0; i < g_child_count; ++i) {
            items[1 + i] = pollfd{g_children[i].pidfd, POLLIN, 0};
        }
        const int watched = 1 + g_child_count;
        const int ready = poll(items, static_cast<nfds_t>(watched), -1);
        if (ready < 0) {
            if (errno == EINTR) {
                continue;
            }
            const int saved = errno;
            return refuse(error, error_len, "poll: ", error_text(saved), saved);
        }
        // Children first, from the last so that removing one keeps the
        // others' indices (reap_child moves the last into the gap).
        for (int i = watched - 1; i >= 1; --i) {
            if (items[i].revents != 0) {
                reap_child(i - 1);
            }
        }
        if (items[0].revents == 0) {
            continue;
        }
        safepy_message message{};
        int fds[1];
        int fd_count = 0;
        const ssize_t got = receive(control_fd, &message, sizeof message, fds, 1, fd_count);
        if (got == 0 || (got < 0 && errno != EMSGSIZE && errno != EAGAIN)) {
            _exit(0);  // the host is gone
        }
        if (got != static_cast<ssize_t>(sizeof message) || fd_count != 1 || message.magic != SAFEPY_PROTOCOL_MAGIC ||
            message.kind != SAFEPY_MESSAGE_SPAWN) {
            close_all(fds, fd_count);
            continue;
        }
        int mode = -1;
        start_child(control_fd, fds[0], bpf, bpf_bytes, reseed, reseed_count, mode);
        if (mode >= 0) {
            return mode;  // a contained child, for its run
        }
    }
}

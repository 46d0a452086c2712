#include "warm_pool.hpp"

#include <cerrno>
#include <condition_variable>
#include <csignal>
#include <cstring>
#include <deque>
#include <fcntl.h>
#include <mutex>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <thread>

namespace safepy {
namespace {

using Clock = std::chrono::steady_clock;

// A prepared child: pid 1 of its own namespaces, waiting for a run.
struct Slot {
    Fd socket;  // host end of the slot socket
    pid_t pid = -1;
    Fd pidfd;
    std::unique_ptr<RunCgroup> cgroup;
    Limits cgroup_limits;  // what the cgroup is set to now
};

bool send_with_fds(int socket, const std::string& message, const std::vector<int>& fds) {
    iovec data{const_cast<char*>(message.data()), message.size()};
    msghdr header{};
    header.msg_iov = &data;
    header.msg_iovlen = 1;
    std::vector<char> control(CMSG_SPACE(sizeof(int) * fds.size()));
    if (!fds.empty()) {
        header.msg_control = control.data();
        header.msg_controllen = control.size();
        cmsghdr* item = CMSG_FIRSTHDR(&header);
        item->cmsg_level = SOL_SOCKET;
        item->cmsg_type = SCM_RIGHTS;
        item->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
        std::memcpy(CMSG_DATA(item), fds.data(), sizeof(int) * fds.size());
    }
    ssize_t sent;
    do {
        sent = sendmsg(socket, &header, MSG_NOSIGNAL);
    } while (sent < 0 && errno == EINTR);
    return sent == static_cast<ssize_t>(message.size());
}

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

std::string run_header(const Request& request, bool rlimit_memory) {
    const Limits& limits = request.limits;
    return "run {\"mode\": \"" + std::string(request.mode == Mode::check ? "check" : "run") +
           "\", \"tmp_bytes\": " + std::to_string(limits.tmp_bytes) +
           ", \"cpu_seconds\": " + std::to_string(rlimit_cpu_seconds(limits, !rlimit_memory)) +
           ", \"file_bytes\": " + std::to_string(limits.file_bytes) +
           ", \"open_files\": " + std::to_string(limits.open_files) +
           ", \"memory_bytes\": " + std::to_string(limits.memory_bytes) +
           ", \"processes\": " + std::to_string(limits.processes) +
           ", \"rlimit_memory\": " + (rlimit_memory ? "true" : "false") + "}";
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

constexpr auto k_ready_timeout = std::chrono::seconds(20);
constexpr auto k_exit_report_timeout = std::chrono::seconds(2);

}  // namespace

struct WarmPool::Impl {
    WarmSettings settings;

    mutable std::mutex mutex;
    mutable std::condition_variable changed;
    std::deque<std::unique_ptr<Slot>> ready;
    std::deque<std::unique_ptr<Slot>> retired;  // finished runs, removed off the request path
    bool stopping = false;
    bool template_up = false;
    std::string last_error = "the warm template is starting";

    std::mutex control_mutex;  // one "spawn" message at a time on the control socket
    Job template_job;
    Fd control;
    std::string template_log;
    std::unique_ptr<RunCgroup> template_cgroup;
    std::thread manager;

    void set_error(std::string error) {
        std::lock_guard lock(mutex);
        template_up = false;
        last_error = std::move(error);
        changed.notify_all();
    }

    bool template_alive() {
        if (template_job.pid < 0) {
            return false;
        }
        pollfd item{template_job.pidfd.get(), POLLIN, 0};
        return poll(&item, 1, 0) == 0;
    }

    void stop_template() {
        if (template_job.pid >= 0) {
            template_job.kill();
            int status;
            rusage usage;
            template_job.reap(status, usage);
            template_log += read_available(template_job.err.get(), 16 * 1024);
            template_log += read_available(template_job.log.get(), 16 * 1024);
        }
        template_job = Job();
        {
            std::lock_guard lock(control_mutex);
            control.reset();
        }
        template_cgroup.reset();
        std::deque<std::unique_ptr<Slot>> dropped;
        {
            std::lock_guard lock(mutex);
            dropped.swap(ready);
            template_up = false;
        }
        // Removing their cgroups waits for the kernel: never under the lock
        // that every request takes.
        dropped.clear();
    }

    bool start_template(std::string& error) {
        int pair[2];
        if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) != 0) {
            error = std::string("socketpair: ") + std::strerror(errno);
            return false;
        }
        Fd host(pair[0]);
        Fd child(pair[1]);
        SpawnSpec spec = settings.template_spawn;
        spec.control_fd = child.get();
        if (settings.cgroups) {
            // The template and the reapers live in a cgroup of their own; each
            // prepared child moves to its run's cgroup.
            Limits limits = spec.limits;
            limits.memory_bytes = std::max<std::uint64_t>(limits.memory_bytes, 2ull << 30);
            limits.processes = 4096;
            template_cgroup = settings.cgroups->create(limits, error);
            if (!template_cgroup) {
                return false;
            }
            spec.cgroup_join_fds = template_cgroup->join_fds();
        }
        template_job = start_jail(spec, error);
        if (template_job.pid < 0) {
            return false;
        }
        fcntl(template_job.err.get(), F_SETFL, O_NONBLOCK);
        if (template_job.log) {
            fcntl(template_job.log.get(), F_SETFL, O_NONBLOCK);
        }
        template_job.out.reset();  // the template prints nothing; a write would fail, not block
        std::lock_guard lock(control_mutex);
        control = std::move(host);
        return true;
    }

    std::unique_ptr<Slot> make_slot(std::string& error) {
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
        {
            std::lock_guard lock(control_mutex);
            if (!control || !send_with_fds(control.get(), "spawn", {child.get()})) {
                error = "the warm template is not running";
                return nullptr;
            }
        }
        child.reset();
        std::string message;
        ucred credentials{};
        if (!wait_readable(slot->socket.get(), k_ready_timeout) ||
            !receive_with_credentials(slot->socket.get(), message, credentials) || message != "ready" ||
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
        if (settings.cgroups) {
            slot->cgroup = settings.cgroups->create(settings.defaults, error);
            slot->cgroup_limits = settings.defaults;
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

    void manage() {
        auto backoff = std::chrono::milliseconds(250);
        auto pause = [this](std::chrono::milliseconds time) {
            std::unique_lock lock(mutex);
            changed.wait_for(lock, time, [this] { return stopping; });
        };
        for (;;) {
            std::deque<std::unique_ptr<Slot>> finished;
            {
                std::lock_guard lock(mutex);
                if (stopping) {
                    return;
                }
                finished.swap(retired);
            }
            finished.clear();  // removes their cgroups (their processes are already gone)
            if (!template_alive()) {
                stop_template();
                std::string error;
                if (!start_template(error)) {
                    set_error("the warm template could not be started: " + error);
                    pause(backoff);
                    backoff = std::min(backoff * 2, std::chrono::milliseconds(5000));
                    continue;
                }
            }
            std::size_t have;
            {
                std::lock_guard lock(mutex);
                have = ready.size();
            }
            if (have >= settings.pool_size) {
                std::unique_lock lock(mutex);
                changed.wait_for(lock, std::chrono::milliseconds(500), [this] {
                    return stopping || ready.size() < settings.pool_size || !retired.empty();
                });
                continue;
            }
            std::string error;
            auto slot = make_slot(error);
            if (!slot) {
                template_log += read_available(template_job.err.get(), 16 * 1024);
                template_log += read_available(template_job.log.get(), 16 * 1024);  // nsjail's own log
                if (template_log.size() > 16 * 1024) {
                    template_log.erase(0, template_log.size() - 16 * 1024);
                }
                set_error(error + (template_log.empty() ? "" : "; template log: " + template_log));
                // A child failed to get ready: start over with a new template.
                stop_template();
                pause(backoff);
                backoff = std::min(backoff * 2, std::chrono::milliseconds(5000));
                continue;
            }
            backoff = std::chrono::milliseconds(250);
            std::lock_guard lock(mutex);
            ready.push_back(std::move(slot));
            template_up = true;
            changed.notify_all();
        }
    }

    // A prepared child, or, while the template is up, one made here.
    std::unique_ptr<Slot> take_slot(std::string& error) {
        {
            std::unique_lock lock(mutex);
            if (!template_up) {
                // Give a starting template a moment before failing the run.
                changed.wait_for(lock, std::chrono::seconds(5), [this] { return stopping || template_up; });
            }
            if (!ready.empty()) {
                auto slot = std::move(ready.front());
                ready.pop_front();
                changed.notify_all();
                return slot;
            }
            if (!template_up) {
                error = last_error;
                return nullptr;
            }
        }
        return make_slot(error);
    }
};

WarmPool::WarmPool(WarmSettings settings) : m_impl(std::make_unique<Impl>()) {
    m_impl->settings = std::move(settings);
    m_impl->manager = std::thread([impl = m_impl.get()] { impl->manage(); });
}

WarmPool::~WarmPool() {
    {
        std::lock_guard lock(m_impl->mutex);
        m_impl->stopping = true;
        m_impl->changed.notify_all();
    }
    m_impl->manager.join();
    m_impl->retired.clear();
    m_impl->stop_template();
}

std::string WarmPool::state() const {
    std::lock_guard lock(m_impl->mutex);
    if (m_impl->template_up) {
        return "ready (" + std::to_string(m_impl->ready.size()) + " prepared)";
    }
    return m_impl->last_error;
}

bool WarmPool::wait_ready(std::chrono::milliseconds timeout) const {
    std::unique_lock lock(m_impl->mutex);
    return m_impl->changed.wait_for(lock, timeout, [this] { return m_impl->template_up; });
}

WarmRun WarmPool::run(const Request& request, std::function<bool()> cancelled) {
    WarmRun run;
    std::unique_ptr<Slot> slot;
    Clock::time_point started;
    Fd out_read, err_read, result_read;
    // A child may have died since it was prepared: try a second one.
    for (int attempt = 0; attempt < 2 && !out_read; ++attempt) {
        std::string error;
        slot = m_impl->take_slot(error);
        if (!slot) {
            run.spawned.spawn_error = "warm mode: " + error;
            return run;
        }
        if (slot->cgroup && !(slot->cgroup_limits == request.limits)) {
            if (!slot->cgroup->set_limits(request.limits, error)) {
                run.spawned.spawn_error = error;
                return run;
            }
            slot->cgroup_limits = request.limits;
        }
        Fd out_r, out_write, err_r, err_write, result_r, result_write;
        auto make_pipe = [](Fd& read_end, Fd& write_end) {
            int fds[2];
            if (pipe2(fds, O_CLOEXEC) != 0) {
                return false;
            }
            read_end.reset(fds[0]);
            write_end.reset(fds[1]);
            return true;
        };
        if (!make_pipe(out_r, out_write) || !make_pipe(err_r, err_write) || !make_pipe(result_r, result_write)) {
            run.spawned.spawn_error = std::string("pipe2: ") + std::strerror(errno);
            return run;
        }
        Fd script = sealed_memory_file(request.script);
        if (!script) {
            run.spawned.spawn_error = "cannot hold the script in memory";
            return run;
        }
        const bool rlimit_memory = m_impl->settings.cgroups == nullptr;
        if (send_with_fds(slot->socket.get(), run_header(request, rlimit_memory),
                          {out_write.get(), err_write.get(), result_write.get(), script.get()})) {
            // The wall clock starts when the child has its run, not while a
            // slot was being found: that time is not the script's.
            started = Clock::now();
            out_read = std::move(out_r);
            err_read = std::move(err_r);
            result_read = std::move(result_r);
        }
    }
    if (!out_read) {
        run.spawned.spawn_error = "warm mode: prepared children died before the run could start";
        return run;
    }

    Job job;
    job.pid = slot->pid;
    job.pidfd = std::move(slot->pidfd);
    job.out = std::move(out_read);
    job.err = std::move(err_read);
    job.result = std::move(result_read);
    job.started = started;
    const int pidfd = job.pidfd.get();
    job.kill = [pidfd] { syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, nullptr, 0); };
    const int socket = slot->socket.get();
    job.reap = [socket](int& status, rusage& usage) {
        // The reaper (the child's parent, which never runs user code) reports.
        if (!wait_readable(socket, k_exit_report_timeout)) {
            return false;
        }
        char buffer[128];
        const ssize_t got = recv(socket, buffer, sizeof buffer - 1, 0);
        if (got <= 0) {
            return false;
        }
        buffer[got] = '\0';
        long long raw = 0, cpu_ms = 0, rss_kb = 0;
        if (std::sscanf(buffer, "exit %lld %lld %lld", &raw, &cpu_ms, &rss_kb) != 3) {
            return false;
        }
        status = static_cast<int>(raw);
        usage.ru_utime.tv_sec = static_cast<time_t>(cpu_ms / 1000);
        usage.ru_utime.tv_usec = static_cast<suseconds_t>((cpu_ms % 1000) * 1000);
        usage.ru_maxrss = static_cast<long>(rss_kb);
        return true;
    };
    DrainSpec drain;
    drain.limits = request.limits;
    drain.cancelled = std::move(cancelled);
    const RunCgroup* cgroup = slot->cgroup.get();
    if (cgroup) {
        drain.cpu_microseconds = [cgroup] { return cgroup->cpu_microseconds(); };
        drain.kill_all = [cgroup] { cgroup->kill_all(); };
    }
    run.spawned = drain_job(job, drain);
    if (cgroup) {
        run.usage = cgroup->usage();
    }
    // drain_job killed whatever was left in the cgroup; removing the empty
    // directories is the manager's job.
    std::lock_guard lock(m_impl->mutex);
    m_impl->retired.push_back(std::move(slot));
    m_impl->changed.notify_all();
    return run;
}

}  // namespace safepy

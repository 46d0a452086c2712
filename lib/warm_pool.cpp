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
#include <optional>
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

// "run " and the run's limits as lib/contain.hpp lays them out.
std::string run_header(const Request& request, bool rlimit_memory) {
    const safepy_run_limits limits = run_limits(request.limits, request.mode, rlimit_memory, false);
    std::string header = "run ";
    header.append(reinterpret_cast<const char*>(&limits), sizeof limits);
    return header;
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

// A warm child during its run. Its parent, the reaper (which never runs user
// code), reports how it ended on the slot socket.
class WarmChild final : public RunProcess {
public:
    WarmChild(int pidfd, int socket, const RunCgroup* cgroup) : m_pidfd(pidfd), m_socket(socket), m_cgroup(cgroup) {}

    void kill() override { syscall(SYS_pidfd_send_signal, m_pidfd, SIGKILL, nullptr, 0); }

    bool reap(int& status, rusage& usage) override {
        if (!wait_readable(m_socket, k_exit_report_timeout)) {
            return false;
        }
        char buffer[128];
        const ssize_t got = recv(m_socket, buffer, sizeof buffer - 1, 0);
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
    }

    std::optional<std::uint64_t> cpu_microseconds() const override {
        if (!m_cgroup) {
            return std::nullopt;
        }
        return m_cgroup->cpu_microseconds();
    }

    void kill_all() override {
        if (m_cgroup) {
            m_cgroup->kill_all();
        }
    }

private:
    int m_pidfd;  // owned by the run's channels
    int m_socket;
    const RunCgroup* m_cgroup;
};

}  // namespace

std::string template_payload(std::string_view contain_library, std::string_view bpf) {
    std::string payload(8, '\0');
    std::uint64_t length = contain_library.size();
    for (int i = 0; i < 8; ++i) {
        payload[static_cast<std::size_t>(i)] = static_cast<char>((length >> (8 * i)) & 0xff);
    }
    payload.append(contain_library);
    payload.append(bpf);
    return payload;
}

// One template: a jail with its own host uid. Its children share that uid,
// so it serves one run at a time.
struct Template {
    std::optional<UidLease> uid;  // held for the pool's life; empty when not root
    std::mutex control_mutex;     // one "spawn" message at a time on the control socket
    Jail job;
    Fd control;
    std::string log;
    std::unique_ptr<RunCgroup> cgroup;
    // Under WarmPool::Impl::mutex:
    std::deque<std::unique_ptr<Slot>> ready;
    bool up = false;
    bool busy = false;  // a run holds this template's uid
    std::string last_error = "the warm template is starting";
};

struct WarmPool::Impl {
    WarmSettings settings;

    mutable std::mutex mutex;
    mutable std::condition_variable changed;
    std::vector<std::unique_ptr<Template>> templates;
    std::deque<std::unique_ptr<Slot>> retired;  // finished runs, removed off the request path
    bool stopping = false;
    std::size_t per_template = 1;  // children kept prepared by each template
    std::thread manager;

    void set_error(Template& t, std::string error) {
        std::lock_guard lock(mutex);
        t.up = false;
        t.last_error = std::move(error);
        changed.notify_all();
    }

    static bool template_alive(const Template& t) {
        if (t.job.process.pid() < 0) {
            return false;
        }
        pollfd item{t.job.channels.pidfd.get(), POLLIN, 0};
        return poll(&item, 1, 0) == 0;
    }

    void stop_template(Template& t) {
        if (t.job.process.pid() >= 0) {
            t.job.process.kill();
            int status;
            rusage usage;
            t.job.process.reap(status, usage);
            t.log += read_available(t.job.channels.err.get(), 16 * 1024);
            t.log += read_available(t.job.channels.log.get(), 16 * 1024);
        }
        t.job = Jail();
        {
            std::lock_guard lock(t.control_mutex);
            t.control.reset();
        }
        t.cgroup.reset();
        std::deque<std::unique_ptr<Slot>> dropped;
        {
            std::lock_guard lock(mutex);
            dropped.swap(t.ready);
            t.up = false;
        }
        // Removing their cgroups waits for the kernel: never under the lock
        // that every request takes.
        dropped.clear();
    }

    bool start_template(Template& t, std::string& error) {
        int pair[2];
        if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) != 0) {
            error = std::string("socketpair: ") + std::strerror(errno);
            return false;
        }
        Fd host(pair[0]);
        Fd child(pair[1]);
        SpawnSpec spec = settings.template_spawn;
        spec.control_fd = child.get();
        if (t.uid) {
            spec.uid = spec.gid = t.uid->uid();
            spec.argv = settings.template_argv(t.uid->uid());
        }
        if (settings.cgroups) {
            // The template and the reapers live in a cgroup of their own; each
            // prepared child moves to its run's cgroup.
            Limits limits = spec.limits;
            limits.memory_bytes = std::max<std::uint64_t>(limits.memory_bytes, 2ull << 30);
            limits.processes = 4096;
            t.cgroup = settings.cgroups->create(limits, error);
            if (!t.cgroup) {
                return false;
            }
            spec.cgroup_join_fds = t.cgroup->join_fds();
        }
        t.job = start_jail(spec, error);
        if (t.job.process.pid() < 0) {
            return false;
        }
        fcntl(t.job.channels.err.get(), F_SETFL, O_NONBLOCK);
        if (t.job.channels.log) {
            fcntl(t.job.channels.log.get(), F_SETFL, O_NONBLOCK);
        }
        t.job.channels.out.reset();  // the template prints nothing; a write would fail, not block
        std::lock_guard lock(t.control_mutex);
        t.control = std::move(host);
        return true;
    }

    std::unique_ptr<Slot> make_slot(Template& t, std::string& error) {
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
            std::lock_guard lock(t.control_mutex);
            if (!t.control || !send_with_fds(t.control.get(), "spawn", {child.get()})) {
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

    // Keeps one template running and prepared; false when it failed and
    // needs a pause before the next try.
    bool tend(Template& t) {
        if (!t.uid && settings.uids) {
            set_error(t, "warm mode: no sandbox uid for this template");
            return false;
        }
        if (!template_alive(t)) {
            stop_template(t);
            std::string error;
            if (!start_template(t, error)) {
                set_error(t, "the warm template could not be started: " + error);
                return false;
            }
        }
        {
            std::lock_guard lock(mutex);
            if (t.ready.size() >= per_template) {
                return true;
            }
        }
        std::string error;
        auto slot = make_slot(t, error);
        if (!slot) {
            t.log += read_available(t.job.channels.err.get(), 16 * 1024);
            t.log += read_available(t.job.channels.log.get(), 16 * 1024);  // nsjail's own log
            if (t.log.size() > 16 * 1024) {
                t.log.erase(0, t.log.size() - 16 * 1024);
            }
            set_error(t, error + (t.log.empty() ? "" : "; template log: " + t.log));
            // A child failed to get ready: start over with a new template.
            stop_template(t);
            return false;
        }
        std::lock_guard lock(mutex);
        t.ready.push_back(std::move(slot));
        t.up = true;
        changed.notify_all();
        return true;
    }

    bool all_prepared() const {
        for (const auto& t : templates) {
            if (!t->up || t->ready.size() < per_template) {
                return false;
            }
        }
        return true;
    }

    void manage() {
        auto backoff = std::chrono::milliseconds(250);
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
            bool failed = false;
            for (auto& t : templates) {
                failed = !tend(*t) || failed;
            }
            std::unique_lock lock(mutex);
            if (failed) {
                changed.wait_for(lock, backoff, [this] { return stopping; });
                backoff = std::min(backoff * 2, std::chrono::milliseconds(5000));
                continue;
            }
            backoff = std::chrono::milliseconds(250);
            if (all_prepared()) {
                changed.wait_for(lock, std::chrono::milliseconds(500),
                                 [this] { return stopping || !all_prepared() || !retired.empty(); });
            }
        }
    }

    bool any_up() const {
        for (const auto& t : templates) {
            if (t->up) {
                return true;
            }
        }
        return false;
    }

    // A free template (no run holds its uid) and a prepared child of it, or,
    // while the template is up, one made here. Waits while every template is busy.
    std::unique_ptr<Slot> take_slot(Template*& taken, std::string& error) {
        std::unique_lock lock(mutex);
        if (!any_up()) {
            // Give a starting template a moment before failing the run.
            changed.wait_for(lock, std::chrono::seconds(5), [this] { return stopping || any_up(); });
        }
        for (;;) {
            if (stopping || !any_up()) {
                error = stopping ? "the warm pool is stopping" : templates.front()->last_error;
                return nullptr;
            }
            Template* free = nullptr;
            for (auto& t : templates) {
                if (t->up && !t->busy && (!free || (free->ready.empty() && !t->ready.empty()))) {
                    free = t.get();
                }
            }
            if (free) {
                free->busy = true;
                taken = free;
                if (!free->ready.empty()) {
                    auto slot = std::move(free->ready.front());
                    free->ready.pop_front();
                    changed.notify_all();
                    return slot;
                }
                break;
            }
            changed.wait(lock);
        }
        lock.unlock();
        auto slot = make_slot(*taken, error);
        if (!slot) {
            release(*taken, nullptr);
        }
        return slot;
    }

    // The run on `t` is over: its slot goes to the manager for clean-up.
    void release(Template& t, std::unique_ptr<Slot> slot) {
        std::lock_guard lock(mutex);
        if (slot) {
            retired.push_back(std::move(slot));
        }
        t.busy = false;
        changed.notify_all();
    }
};

WarmPool::WarmPool(WarmSettings settings) : m_impl(std::make_unique<Impl>()) {
    m_impl->settings = std::move(settings);
    const std::size_t count = std::max<std::size_t>(m_impl->settings.templates, 1);
    m_impl->per_template = std::max<std::size_t>(1, (m_impl->settings.pool_size + count - 1) / count);
    for (std::size_t i = 0; i < count; ++i) {
        auto t = std::make_unique<Template>();
        if (m_impl->settings.uids) {
            std::string error;
            t->uid = m_impl->settings.uids->acquire(error);
            if (!t->uid) {
                t->last_error = "warm mode: " + error;
            }
        }
        m_impl->templates.push_back(std::move(t));
    }
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
    for (auto& t : m_impl->templates) {
        m_impl->stop_template(*t);
    }
}

std::string WarmPool::state() const {
    std::lock_guard lock(m_impl->mutex);
    std::size_t prepared = 0, up = 0;
    for (const auto& t : m_impl->templates) {
        prepared += t->ready.size();
        up += t->up ? 1 : 0;
    }
    if (up > 0) {
        return "ready (" + std::to_string(up) + " of " + std::to_string(m_impl->templates.size()) +
               " templates up, " + std::to_string(prepared) + " prepared)";
    }
    return m_impl->templates.front()->last_error;
}

bool WarmPool::wait_ready(std::chrono::milliseconds timeout) const {
    std::unique_lock lock(m_impl->mutex);
    return m_impl->changed.wait_for(lock, timeout, [this] { return m_impl->any_up(); });
}

WarmRun WarmPool::run(const Request& request, int cancel_fd) {
    WarmRun run;
    std::unique_ptr<Slot> slot;
    Template* owner = nullptr;
    // Whatever happens below, the template is free again when this returns.
    auto give_back = [this, &owner, &slot] {
        if (owner) {
            m_impl->release(*owner, std::move(slot));
            owner = nullptr;
        }
    };
    struct Guard {
        decltype(give_back)& done;
        ~Guard() { done(); }
    } guard{give_back};
    Clock::time_point started;
    Fd out_read, err_read, result_read;
    // A child may have died since it was prepared: try a second one.
    for (int attempt = 0; attempt < 2 && !out_read; ++attempt) {
        std::string error;
        give_back();
        slot = m_impl->take_slot(owner, error);
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

    WarmChild child(slot->pidfd.get(), slot->socket.get(), slot->cgroup.get());
    RunChannels channels;
    channels.pidfd = std::move(slot->pidfd);
    channels.out = std::move(out_read);
    channels.err = std::move(err_read);
    channels.result = std::move(result_read);
    channels.started = started;
    const RunCgroup* cgroup = slot->cgroup.get();
    run.spawned = supervise(child, std::move(channels), request.limits, cancel_fd);
    if (cgroup) {
        run.usage = cgroup->usage();
    }
    // The supervisor killed whatever was left in the cgroup; removing the empty
    // directories is the manager's job (give_back hands the slot over).
    return run;
}

}  // namespace safepy

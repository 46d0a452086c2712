#include "spawn.hpp"

#include "jail_command.hpp"

#include <algorithm>
#include <array>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <fcntl.h>
#include <grp.h>
#include <linux/close_range.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <optional>
#include <utility>

namespace safepy {
namespace {

using Clock = std::chrono::steady_clock;


struct Pipe {
    Fd read;
    Fd write;
};

bool make_pipe(Pipe& pipe) {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) {
        return false;
    }
    pipe.read.reset(fds[0]);
    pipe.write.reset(fds[1]);
    return true;
}

// A sealed in-memory file holding `content`, readable from offset 0.
Fd memory_file(const char* name, const std::string& content) {
    Fd fd(memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING));
    if (!fd) {
        return fd;
    }
    std::size_t done = 0;
    while (done < content.size()) {
        const ssize_t n = write(fd.get(), content.data() + done, content.size() - done);
        if (n <= 0) {
            return Fd();
        }
        done += static_cast<std::size_t>(n);
    }
    fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL);
    lseek(fd.get(), 0, SEEK_SET);
    return fd;
}

// What the child reports through the exec-error pipe when set-up fails.
struct ChildFailure {
    char step[48];
    int error_number;
};

[[noreturn]] void child_fail(int report_fd, const contain::Failure& failure) {
    ChildFailure report{};
    for (std::size_t i = 0; failure.step[i] != '\0' && i + 1 < sizeof report.step; ++i) {
        report.step[i] = failure.step[i];
    }
    report.error_number = failure.error_number;
    [[maybe_unused]] auto ignored = write(report_fd, &report, sizeof report);
    _exit(127);
}

[[noreturn]] void child_fail(int report_fd, const char* step) { child_fail(report_fd, contain::Failure{step, errno}); }

// Writes a decimal pid without allocating (we are between fork and exec).
bool write_pid(int fd, pid_t pid) {
    char digits[16];
    int n = 0;
    do {
        digits[sizeof digits - 1 - n++] = static_cast<char>('0' + pid % 10);
        pid /= 10;
    } while (pid > 0);
    return write(fd, digits + sizeof digits - n, static_cast<std::size_t>(n)) == n;
}

struct ChildPlan {
    std::array<int, 7> target_fds;  // source descriptor for 0..6, -1: leave closed
    contain::RlimitPlan rlimits;
};

// Only async-signal-safe calls from here to execve: the parent may be a
// threaded server.
[[noreturn]] void run_child(const SpawnSpec& spec, const ChildPlan& plan, int report_fd, char* const* argv,
                            char* const* envp) {
    const int parent = getppid();
    if (setpgid(0, 0) != 0) {
        child_fail(report_fd, "setpgid");
    }
    for (int fd : spec.cgroup_join_fds) {
        if (!write_pid(fd, getpid())) {
            child_fail(report_fd, "joining the cgroup");
        }
    }
    // Move every source out of the way first so that dup2 cannot clobber one.
    std::array<int, 7> moved{};
    for (std::size_t i = 0; i < plan.target_fds.size(); ++i) {
        moved[i] = plan.target_fds[i] < 0 ? -1 : fcntl(plan.target_fds[i], F_DUPFD_CLOEXEC, 64);
        if (plan.target_fds[i] >= 0 && moved[i] < 0) {
            child_fail(report_fd, "arranging descriptors");
        }
    }
    const int report = fcntl(report_fd, F_DUPFD_CLOEXEC, 64 + static_cast<int>(moved.size()));
    if (report < 0) {
        child_fail(report_fd, "arranging descriptors");
    }
    report_fd = report;
    for (std::size_t i = 0; i < moved.size(); ++i) {
        if (moved[i] >= 0 && dup2(moved[i], static_cast<int>(i)) < 0) {
            child_fail(report_fd, "arranging descriptors");
        }
        // A slot we do not fill must not pass on whatever the caller had
        // there (a file, a client's socket).
        if (moved[i] < 0) {
            close(static_cast<int>(i));
        }
    }
    // The steps of lib/contain.cpp that apply before exec (the jail does the rest).
    if (auto failure = contain::close_descriptors_from(moved.size(), true); !failure.ok()) {
        child_fail(report_fd, failure);
    }
    if (auto failure = contain::set_rlimits(plan.rlimits); !failure.ok()) {
        child_fail(report_fd, failure);
    }
    if (spec.drop_privileges) {
        if (auto failure = contain::drop_credentials(spec.uid, spec.gid); !failure.ok()) {
            child_fail(report_fd, failure);
        }
    }
    // Set after the uid change, which clears it.
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) {
        child_fail(report_fd, "prctl(PR_SET_PDEATHSIG)");
    }
    if (auto failure = contain::no_new_privs(); !failure.ok()) {
        child_fail(report_fd, failure);
    }
    if (getppid() != parent) {
        _exit(127);
    }
    execve(argv[0], argv, envp);
    child_fail(report_fd, "execve");
}

ChildPlan make_child_plan(const SpawnSpec& spec) {
    ChildPlan plan{};
    plan.rlimits = contain::rlimit_plan(run_limits(spec.limits, Mode::run, spec.rlimit_memory, spec.unlimited_cpu));
    return plan;
}

}  // namespace

safepy_run_limits run_limits(const Limits& limits, Mode mode, bool rlimit_memory, bool unlimited_cpu) {
    safepy_run_limits out{};
    out.magic = SAFEPY_PROTOCOL_MAGIC;
    out.mode = mode == Mode::check ? SAFEPY_MODE_CHECK : SAFEPY_MODE_RUN;
    out.tmp_bytes = limits.tmp_bytes;
    out.cpu_seconds = rlimit_cpu_seconds(limits, !rlimit_memory);
    out.file_bytes = limits.file_bytes;
    out.open_files = limits.open_files;
    out.memory_bytes = limits.memory_bytes;
    out.processes = limits.processes;
    out.rlimit_memory = rlimit_memory ? 1 : 0;
    out.unlimited_cpu = unlimited_cpu ? 1 : 0;
    return out;
}

Jail start_jail(const SpawnSpec& spec, std::string& error) {
    Jail job;
    job.channels.started = Clock::now();
    Pipe out, err, res, log, report;
    Fd null_fd(open("/dev/null", O_RDONLY | O_CLOEXEC));
    Fd script = memory_file("safepy-script", spec.script);
    Fd policy = memory_file("safepy-policy", spec.policy);
    if (!make_pipe(out) || !make_pipe(err) || (spec.control_fd < 0 && !make_pipe(res)) || !make_pipe(report) ||
        (spec.jail_log && !make_pipe(log)) || !null_fd || !script || !policy) {
        error = std::string("cannot create pipes or memory files: ") + std::strerror(errno);
        return job;
    }

    ChildPlan plan = make_child_plan(spec);
    plan.target_fds = {null_fd.get(),
                       out.write.get(),
                       err.write.get(),
                       spec.control_fd >= 0 ? spec.control_fd : res.write.get(),
                       script.get(),
                       policy.get(),
                       spec.jail_log ? log.write.get() : -1};
    std::vector<char*> argv, envp;
    for (const auto& word : spec.argv) {
        argv.push_back(const_cast<char*>(word.c_str()));
    }
    argv.push_back(nullptr);
    for (const auto& entry : spec.environment) {
        envp.push_back(const_cast<char*>(entry.c_str()));
    }
    envp.push_back(nullptr);

    const pid_t pid = fork();
    if (pid < 0) {
        error = std::string("fork failed: ") + std::strerror(errno);
        return job;
    }
    if (pid == 0) {
        run_child(spec, plan, report.write.get(), argv.data(), envp.data());
    }
    report.write.reset();
    ChildFailure failure{};
    ssize_t got;
    do {
        got = read(report.read.get(), &failure, sizeof failure);
    } while (got < 0 && errno == EINTR);
    if (got == static_cast<ssize_t>(sizeof failure)) {
        int status = 0;
        waitpid(pid, &status, 0);
        failure.step[sizeof failure.step - 1] = '\0';
        error = std::string("starting the jail failed at ") + failure.step + ": " +
                std::strerror(failure.error_number);
        return job;
    }

    // A pidfd is the only sign of exit that cannot be fooled: a zombie still
    // answers kill(pid, 0). Sandbox::create refuses kernels without it.
    job.channels.pidfd.reset(static_cast<int>(syscall(SYS_pidfd_open, pid, 0)));
    if (!job.channels.pidfd) {
        error = std::string("pidfd_open failed: ") + std::strerror(errno);
        kill(-pid, SIGKILL);
        kill(pid, SIGKILL);
        int status = 0;
        waitpid(pid, &status, 0);
        return job;
    }
    job.process = JailProcess(pid);
    job.channels.out = std::move(out.read);
    job.channels.err = std::move(err.read);
    job.channels.result = std::move(res.read);
    job.channels.log = std::move(log.read);
    return job;
}

void JailProcess::kill() {
    if (m_pid > 0) {
        ::kill(-m_pid, SIGKILL);
        ::kill(m_pid, SIGKILL);
    }
}

bool JailProcess::reap(int& status, rusage& usage) {
    if (m_pid <= 0) {
        return false;
    }
    pid_t waited;
    do {
        waited = wait4(m_pid, &status, 0, &usage);
    } while (waited < 0 && errno == EINTR);
    const bool reaped = waited == m_pid;
    m_pid = -1;  // never signal a number that may now be another process's
    return reaped;
}

bool pidfd_supported() {
    Fd self(static_cast<int>(syscall(SYS_pidfd_open, getpid(), 0)));
    return static_cast<bool>(self);
}

SpawnResult spawn_and_supervise(const SpawnSpec& spec, const RunCgroup* cgroup, int cancel_fd) {
    std::string error;
    Jail jail = start_jail(spec, error);
    if (jail.process.pid() < 0) {
        SpawnResult result;
        result.spawn_error = error;
        return result;
    }
    jail.process.set_cgroup(cgroup);
    return supervise(jail.process, std::move(jail.channels), spec.limits, cancel_fd);
}

}  // namespace safepy

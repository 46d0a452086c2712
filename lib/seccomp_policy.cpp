#include "seccomp_policy.hpp"

#include <cerrno>
#include <cstdio>
#include <sched.h>
#include <seccomp.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <termios.h>
#include <utility>
#include <unistd.h>

namespace safepy {
namespace {

using Kind = SeccompRule::Kind;

static_assert(k_seccomp_default_errno == EPERM);

// CLONE_NEWTIME is left out: clone() cannot take it (its bit is part of the
// exit signal there), only clone3 and unshare, which are refused.
constexpr std::uint64_t k_namespace_flags =
    CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWCGROUP;

// x32 system calls are x86-64's numbers with this bit set (same audit arch).
constexpr std::uint32_t k_x32_syscall_bit = 0x40000000;
// kafel has no range syntax: the x32 numbers it kills one by one. The x32
// table ends at 547 today; 1024 leaves room, and numbers past it do not
// exist (and would get the default errno, never run).
constexpr std::uint32_t k_x32_numbers_killed = 1024;

SeccompRule allow(std::string_view name) {
    return {name, Kind::allow, -1, {}, 0, 0, k_seccomp_default_errno};
}

SeccompRule allow_if_equal(std::string_view name, int argument, std::vector<std::uint64_t> values,
                           int error_number = k_seccomp_default_errno) {
    return {name, Kind::allow_if_equal, argument, std::move(values), 0, 0, error_number};
}

SeccompRule allow_if_masked(std::string_view name, int argument, std::uint64_t mask, std::uint64_t value) {
    return {name, Kind::allow_if_masked, argument, {}, mask, value};
}

SeccompRule refuse(std::string_view name, int error_number) {
    return {name, Kind::refuse, -1, {}, 0, 0, error_number};
}

std::string hex(std::uint64_t number) {
    char text[32];
    std::snprintf(text, sizeof text, "0x%llx", static_cast<unsigned long long>(number));
    return text;
}

// The kafel condition under which a rule's action applies (empty: always).
std::string kafel_condition(const SeccompRule& rule, bool refused_side) {
    const std::string arg = "a" + std::to_string(rule.argument);
    std::string condition;
    if (rule.kind == Kind::allow_if_equal) {
        for (const auto value : rule.values) {
            condition += (condition.empty() ? "" : refused_side ? " && " : " || ") + arg + (refused_side ? " != " : " == ") +
                         hex(value);
        }
    } else if (rule.kind == Kind::allow_if_masked) {
        condition = "(" + arg + " & " + hex(rule.mask) + ") == " + hex(rule.value);
    }
    return condition;
}

// kafel's amd64 table names a few calls after their kernel entry points.
std::string_view kafel_name(std::string_view name) {
    static constexpr std::pair<std::string_view, std::string_view> k_renamed[] = {
        {"stat", "newstat"},        {"fstat", "newfstat"},   {"lstat", "newlstat"},
        {"uname", "newuname"},      {"sendfile", "sendfile64"}, {"umount2", "umount"},
    };
    for (const auto& [ours, kafels] : k_renamed) {
        if (name == ours) {
            return kafels;
        }
    }
    return name;
}

std::string kafel_statement(const std::string& action, const SeccompRule& rule, const std::string& condition) {
    std::string statement = action + " { " + std::string(kafel_name(rule.syscall));
    if (!condition.empty()) {
        // kafel's own argument names differ per call: name all six.
        statement += "(a0, a1, a2, a3, a4, a5) { " + condition + " }";
    }
    return statement + " }\n";
}

}  // namespace

// Derived by tracing every script in tests/scripts (among them
// multiprocessing_pool.py and stdlib_tour.py: pools, spawn, forkserver,
// asyncio, sqlite3, subprocess, threads, numpy, pandas) under bwrap, cold and
// warm (tests/tools/trace_syscalls.py), then reviewed by hand: a few siblings
// of traced calls are added so that ordinary programs a script may start
// (/bin/sh, coreutils) and the older entry points of the same operation work
// too. What an allowed call can reach is the run's own: its processes (PID
// namespace), its files (/tmp; the rest is read-only) and its memory.
const std::vector<SeccompRule>& seccomp_rules() {
    static const std::vector<SeccompRule> rules = {
        // Files and descriptors (the only writable file system is /tmp).
        allow("read"), allow("write"), allow("readv"), allow("writev"), allow("pread64"), allow("pwrite64"),
        allow("preadv"), allow("pwritev"), allow("open"), allow("openat"), allow("creat"), allow("close"),
        allow("close_range"), allow("lseek"), allow("dup"), allow("dup2"), allow("dup3"), allow("fcntl"),
        allow("flock"), allow("fsync"), allow("fdatasync"), allow("ftruncate"), allow("truncate"),
        allow("fallocate"), allow("fadvise64"), allow("sendfile"), allow("copy_file_range"),
        allow("stat"), allow("fstat"), allow("lstat"), allow("newfstatat"), allow("statx"), allow("statfs"),
        allow("fstatfs"), allow("access"), allow("faccessat"), allow("faccessat2"), allow("readlink"),
        allow("readlinkat"), allow("getdents64"), allow("getcwd"), allow("chdir"), allow("fchdir"),
        allow("mkdir"), allow("mkdirat"), allow("rmdir"), allow("unlink"), allow("unlinkat"), allow("rename"),
        allow("renameat"), allow("renameat2"), allow("link"), allow("linkat"), allow("symlink"),
        allow("symlinkat"), allow("chmod"), allow("fchmod"), allow("fchmodat"), allow("utimensat"),
        allow("umask"),
        // Reading extended attributes: shutil.copy2 and copytree treat any
        // errno but ENOTSUP/ENODATA/EINVAL from listxattr as fatal.
        allow("getxattr"), allow("lgetxattr"), allow("fgetxattr"), allow("listxattr"), allow("llistxattr"),
        allow("flistxattr"),
        // Named pipes only (os.mkfifo); device nodes need a capability anyway.
        allow_if_masked("mknod", 1, S_IFMT, S_IFIFO), allow_if_masked("mknodat", 2, S_IFMT, S_IFIFO),
        // Only the requests Python and the C library make. Python's
        // set_inheritable treats any errno but ENOTTY/EACCES from FIOCLEX as
        // fatal, so those two must pass; others get EPERM (callers of
        // isatty-like probes take any error as "not a terminal").
        allow_if_equal("ioctl", 1, {TCGETS, TIOCGWINSZ, TIOCGPGRP, FIONREAD, FIONBIO, FIOCLEX, FIONCLEX}),

        // Memory.
        allow("brk"), allow("mmap"), allow("munmap"), allow("mremap"), allow("mprotect"), allow("madvise"),
        allow("msync"), allow("mincore"), allow("memfd_create"),

        // Processes and threads, inside the run's PID namespace. clone may
        // not create namespaces (the list is the only guard of that inside
        // a warm child). clone3 passes its flags in memory a filter cannot
        // read: ENOSYS, the one answer on which the C library falls back to
        // clone (pthread_create, posix_spawn).
        allow_if_masked("clone", 0, k_namespace_flags, 0), refuse("clone3", ENOSYS), allow("fork"),
        allow("vfork"), allow("execve"), allow("exit"), allow("exit_group"), allow("wait4"), allow("waitid"),
        allow("kill"), allow("tkill"), allow("tgkill"), allow("getpid"), allow("getppid"), allow("gettid"),
        allow("getuid"), allow("geteuid"), allow("getgid"), allow("getegid"), allow("getgroups"),
        allow("getresuid"), allow("getresgid"), allow("getpgrp"), allow("getpgid"), allow("getsid"),
        allow("setsid"), allow("setpgid"), allow("set_tid_address"), allow("set_robust_list"), allow("rseq"),
        allow("arch_prctl"), allow("futex"), allow("sched_yield"), allow("sched_getaffinity"), allow("getcpu"),
        allow("prlimit64"), allow("getrlimit"), allow("getrusage"), allow("times"), allow("sysinfo"),
        allow("uname"), allow("getrandom"),
        // Naming itself, the parent-death signal and queries; nothing that
        // changes privileges, memory layout or other processes.
        allow_if_equal("prctl", 0,
                       {PR_SET_PDEATHSIG, PR_GET_PDEATHSIG, PR_GET_DUMPABLE, PR_SET_NAME, PR_GET_NAME,
                        PR_GET_SECCOMP, PR_GET_NO_NEW_PRIVS}),
        // Querying (0xffffffff) or asking for what it already is (PER_LINUX).
        allow_if_equal("personality", 0, {0xffffffff, PER_LINUX}),

        // Signals and time.
        allow("rt_sigaction"), allow("rt_sigprocmask"), allow("rt_sigreturn"), allow("rt_sigsuspend"),
        allow("rt_sigpending"), allow("rt_sigtimedwait"), allow("sigaltstack"), allow("restart_syscall"),
        allow("pause"), allow("alarm"), allow("getitimer"), allow("setitimer"), allow("nanosleep"),
        allow("clock_nanosleep"), allow("clock_gettime"), allow("clock_getres"), allow("gettimeofday"),
        allow("time"),

        // Waiting on descriptors.
        allow("poll"), allow("ppoll"), allow("select"), allow("pselect6"), allow("epoll_create"),
        allow("epoll_create1"), allow("epoll_ctl"), allow("epoll_wait"), allow("epoll_pwait"),
        allow("eventfd2"), allow("pipe"), allow("pipe2"),

        // Only local sockets: no network even if a namespace were
        // misconfigured. EAFNOSUPPORT is what a kernel without the family says.
        allow_if_equal("socket", 0, {AF_UNIX}, EAFNOSUPPORT), allow_if_equal("socketpair", 0, {AF_UNIX}, EAFNOSUPPORT),
        allow("bind"), allow("listen"), allow("accept"), allow("accept4"), allow("connect"), allow("getsockname"),
        allow("getpeername"), allow("sendto"), allow("recvfrom"), allow("sendmsg"), allow("recvmsg"),
        allow("shutdown"), allow("setsockopt"), allow("getsockopt"),
    };
    return rules;
}

std::string seccomp_kafel_policy() {
    std::string policy;
    for (const auto& rule : seccomp_rules()) {
        const std::string refused = "ERRNO(" + std::to_string(rule.error_number) + ")";
        if (rule.kind == Kind::refuse) {
            policy += kafel_statement(refused, rule, "");
            continue;
        }
        policy += kafel_statement("ALLOW", rule, kafel_condition(rule, false));
        if (rule.kind == Kind::allow_if_equal && rule.error_number != k_seccomp_default_errno) {
            policy += kafel_statement(refused, rule, kafel_condition(rule, true));
        }
    }
    // kafel kills calls of another audit arch (i386) itself; x32 calls share
    // x86-64's and are killed here, as libseccomp's filter does.
    policy += "KILL_PROCESS {";
    for (std::uint32_t number = 0; number < k_x32_numbers_killed; ++number) {
        policy += (number == 0 ? " SYSCALL[" : ", SYSCALL[") + hex(k_x32_syscall_bit | number) + "]";
    }
    policy += " }\n";
    policy += "DEFAULT ERRNO(" + std::to_string(k_seccomp_default_errno) + ")\n";
    return policy;
}

SeccompProgram compile_seccomp_bpf() {
    SeccompProgram program;
    scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ERRNO(k_seccomp_default_errno));
    if (!ctx) {
        program.error = "seccomp_init failed";
        return program;
    }
    // Only the native arch is in the filter: i386 calls (int 0x80) and x32
    // calls (numbers with k_x32_syscall_bit) take the bad-arch action.
    int rc = seccomp_attr_set(ctx, SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_KILL_PROCESS);
    // A binary search over the call numbers: a linear chain of some 170
    // comparisons would cost every system call hundreds of nanoseconds.
    if (rc == 0) {
        rc = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_OPTIMIZE, 2);
    }
    if (rc != 0) {
        program.error = "setting the seccomp filter attributes failed: errno " + std::to_string(-rc);
        seccomp_release(ctx);
        return program;
    }
    for (const auto& rule : seccomp_rules()) {
        const std::string name(rule.syscall);
        const int number = seccomp_syscall_resolve_name(name.c_str());
        if (number == __NR_SCMP_ERROR) {
            continue;  // not a system call of this arch: nothing to allow
        }
        const auto argument = static_cast<unsigned>(rule.argument);
        const auto refused = SCMP_ACT_ERRNO(static_cast<std::uint32_t>(rule.error_number));
        switch (rule.kind) {
        case Kind::allow:
            rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, number, 0);
            break;
        case Kind::refuse:
            rc = seccomp_rule_add(ctx, refused, number, 0);
            break;
        case Kind::allow_if_masked:
            rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, number, 1,
                                  SCMP_CMP(argument, SCMP_CMP_MASKED_EQ, rule.mask, rule.value));
            break;
        case Kind::allow_if_equal:
            for (std::size_t i = 0; i < rule.values.size() && rc == 0; ++i) {
                rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, number, 1, SCMP_CMP(argument, SCMP_CMP_EQ, rule.values[i]));
            }
            if (rc == 0 && rule.error_number != k_seccomp_default_errno) {
                // libseccomp evaluates overlapping rules of one call in no
                // promised order, and one rule cannot test an argument twice:
                // a refusal errno of its own needs the complement of a
                // single value.
                if (rule.values.size() != 1) {
                    rc = -EINVAL;
                } else {
                    rc = seccomp_rule_add(ctx, refused, number, 1, SCMP_CMP(argument, SCMP_CMP_NE, rule.values[0]));
                }
            }
            break;
        }
        if (rc != 0) {
            program.error = "seccomp rule for " + name + " failed: errno " + std::to_string(-rc);
            seccomp_release(ctx);
            return program;
        }
    }
    const int fd = memfd_create("safepy-seccomp", MFD_CLOEXEC);
    if (fd < 0 || seccomp_export_bpf(ctx, fd) != 0) {
        program.error = "exporting the seccomp filter failed";
    } else {
        const off_t size = lseek(fd, 0, SEEK_END);
        program.bpf.resize(static_cast<std::size_t>(size > 0 ? size : 0));
        if (pread(fd, program.bpf.data(), program.bpf.size(), 0) != static_cast<ssize_t>(program.bpf.size())) {
            program.error = "reading the seccomp filter back failed";
            program.bpf.clear();
        }
    }
    if (fd >= 0) {
        close(fd);
    }
    seccomp_release(ctx);
    return program;
}

}  // namespace safepy

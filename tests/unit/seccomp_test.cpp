#include "seccomp_policy.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <dlfcn.h>
#include <functional>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <seccomp.h>
#include <set>
#include <sys/ioctl.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

namespace safepy {
namespace {

using Kind = SeccompRule::Kind;

const SeccompRule* rule_for(std::string_view name) {
    const auto& rules = seccomp_rules();
    const auto found =
        std::find_if(rules.begin(), rules.end(), [name](const SeccompRule& rule) { return rule.syscall == name; });
    return found == rules.end() ? nullptr : &*found;
}

TEST(Seccomp, EveryRuleNamesOneX86_64CallOnce) {
    std::set<std::string_view> seen;
    for (const auto& rule : seccomp_rules()) {
        EXPECT_TRUE(seen.insert(rule.syscall).second) << "listed twice: " << rule.syscall;
        const std::string name(rule.syscall);
        EXPECT_NE(seccomp_syscall_resolve_name_arch(SCMP_ARCH_X86_64, name.c_str()), __NR_SCMP_ERROR) << name;
        if (rule.kind == Kind::allow_if_equal || rule.kind == Kind::allow_if_masked) {
            EXPECT_GE(rule.argument, 0) << name;
            EXPECT_LT(rule.argument, 6) << name;
        }
        if (rule.kind == Kind::allow_if_equal && rule.error_number != k_seccomp_default_errno) {
            EXPECT_EQ(rule.values.size(), 1u) << name << ": an errno of its own needs a single allowed value";
        }
    }
    // A real allow-list, not a handful of calls and not everything.
    EXPECT_GT(seen.size(), 100u);
    EXPECT_LT(seen.size(), 250u);
}

TEST(Seccomp, DangerousCallsAreNotAllowed) {
    for (const char* name :
         {"ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd", "mount", "umount2", "pivot_root",
          "chroot", "unshare", "setns", "open_tree", "move_mount", "fsopen", "fsmount", "mount_setattr",
          "open_by_handle_at", "name_to_handle_at", "bpf", "perf_event_open", "userfaultfd", "io_uring_setup",
          "io_uring_enter", "keyctl", "add_key", "request_key", "kexec_load", "kexec_file_load", "init_module",
          "finit_module", "delete_module", "reboot", "swapon", "swapoff", "acct", "quotactl", "syslog", "vhangup",
          "iopl", "ioperm", "fanotify_init", "inotify_init1", "mq_open", "seccomp", "setuid", "setgid", "setresuid",
          "capset", "settimeofday", "clock_settime", "sethostname", "execveat"}) {
        const SeccompRule* rule = rule_for(name);
        EXPECT_TRUE(rule == nullptr || rule->kind == Kind::refuse) << name;
    }
    EXPECT_EQ(rule_for("clone")->kind, Kind::allow_if_masked);
    EXPECT_EQ(rule_for("clone3")->error_number, ENOSYS);
    EXPECT_EQ(rule_for("socket")->kind, Kind::allow_if_equal);
    EXPECT_EQ(rule_for("ioctl")->kind, Kind::allow_if_equal);
    EXPECT_EQ(rule_for("prctl")->kind, Kind::allow_if_equal);
    EXPECT_EQ(rule_for("personality")->kind, Kind::allow_if_equal);
}

TEST(Seccomp, KafelPolicyGolden) {
    const std::string policy = seccomp_kafel_policy();
    EXPECT_EQ(policy.rfind("ALLOW { read }\nALLOW { write }\nALLOW { readv }\n", 0), 0u) << policy;
    for (const char* line : {
             "ALLOW { newfstat }\n",  // kafel's names for fstat, stat, lstat, uname and sendfile
             "ALLOW { newstat }\n",
             "ALLOW { newlstat }\n",
             "ALLOW { newuname }\n",
             "ALLOW { sendfile64 }\n",
             "ALLOW { clone(a0, a1, a2, a3, a4, a5) { (a0 & 0x7e020000) == 0x0 } }\n",
             "ERRNO(38) { clone3 }\n",
             "ALLOW { socket(a0, a1, a2, a3, a4, a5) { a0 == 0x1 } }\n",
             "ERRNO(97) { socket(a0, a1, a2, a3, a4, a5) { a0 != 0x1 } }\n",
             "ALLOW { ioctl(a0, a1, a2, a3, a4, a5) { a1 == 0x5401 || a1 == 0x5413 || a1 == 0x540f || a1 == 0x541b || "
             "a1 == 0x5421 || a1 == 0x5451 || a1 == 0x5450 } }\n",
             "ALLOW { prctl(a0, a1, a2, a3, a4, a5) { a0 == 0x1 || a0 == 0x2 || a0 == 0x3 || a0 == 0xf || a0 == 0x10 || "
             "a0 == 0x15 || a0 == 0x27 } }\n",
             "ALLOW { personality(a0, a1, a2, a3, a4, a5) { a0 == 0xffffffff || a0 == 0x0 } }\n",
             "ALLOW { mknodat(a0, a1, a2, a3, a4, a5) { (a2 & 0xf000) == 0x1000 } }\n",
         }) {
        EXPECT_NE(policy.find(line), std::string::npos) << line;
    }
    for (const char* absent : {"{ fstat }", "{ stat }", "{ uname }", "{ sendfile }", "umount2", "ptrace", "DEFAULT ALLOW"}) {
        EXPECT_EQ(policy.find(absent), std::string::npos) << absent;
    }
    EXPECT_NE(policy.find("\nKILL_PROCESS { SYSCALL[0x40000000], SYSCALL[0x40000001], "), std::string::npos);
    EXPECT_TRUE(policy.ends_with(", SYSCALL[0x400003ff] }\nDEFAULT ERRNO(1)\n")) << policy.substr(policy.size() - 200);
    // One ALLOW statement per rule that allows anything.
    std::size_t allows = 0;
    for (std::size_t at = policy.find("ALLOW {"); at != std::string::npos; at = policy.find("ALLOW {", at + 1)) {
        ++allows;
    }
    const auto& rules = seccomp_rules();
    EXPECT_EQ(allows, static_cast<std::size_t>(std::count_if(rules.begin(), rules.end(), [](const SeccompRule& rule) {
                  return rule.kind != Kind::refuse;
              })));
}

TEST(Seccomp, CompilesToABpfProgram) {
    const SeccompProgram program = compile_seccomp_bpf();
    ASSERT_EQ(program.error, "");
    ASSERT_FALSE(program.bpf.empty());
    EXPECT_EQ(program.bpf.size() % sizeof(sock_filter), 0u);
    EXPECT_LE(program.bpf.size() / sizeof(sock_filter), static_cast<std::size_t>(BPF_MAXINSNS));
}

// Executing the policy: a forked child loads the filter (with no_new_privs)
// and makes one call; the parent learns its result and errno, or the signal
// that killed it.

struct CallOutcome {
    long result = 0;
    int error = 0;
    int signal = 0;  // non-zero: the child was killed by it
};

// A compiled filter: the libseccomp program, or the kafel one where kafel
// can be loaded.
struct Filter {
    std::vector<sock_filter> instructions;
    std::string error;
};

Filter libseccomp_filter() {
    Filter filter;
    const SeccompProgram program = compile_seccomp_bpf();
    filter.error = program.error;
    filter.instructions.resize(program.bpf.size() / sizeof(sock_filter));
    std::memcpy(filter.instructions.data(), program.bpf.data(), filter.instructions.size() * sizeof(sock_filter));
    return filter;
}

// nsjail compiles the kafel text with libkafel; SAFEPY_KAFEL_LIBRARY names a
// libkafel.so built from the same kafel (it is no Debian package).
Filter kafel_filter(std::string& skip_reason) {
    Filter filter;
    const char* path = std::getenv("SAFEPY_KAFEL_LIBRARY");
    if (!path || !*path) {
        skip_reason = "SAFEPY_KAFEL_LIBRARY is not set: set it to a libkafel.so to execute the kafel rendering";
        return filter;
    }
    void* library = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!library) {
        filter.error = std::string("dlopen: ") + dlerror();
        return filter;
    }
    using Compile = int (*)(const char*, sock_fprog*);
    auto compile = reinterpret_cast<Compile>(dlsym(library, "kafel_compile_string"));
    sock_fprog program{};
    if (!compile || compile(seccomp_kafel_policy().c_str(), &program) != 0) {
        filter.error = "kafel_compile_string failed";
        return filter;
    }
    filter.instructions.assign(program.filter, program.filter + program.len);
    std::free(program.filter);
    return filter;
}

CallOutcome call_filtered(const Filter& filter, const std::function<long()>& call) {
    int channel[2];
    if (pipe(channel) != 0) {
        ADD_FAILURE() << "pipe failed";
        return {};
    }
    const pid_t child = fork();
    if (child == 0) {
        close(channel[0]);
        setsid();  // no controlling terminal: vhangup must not hang up the test's
        sock_fprog program{static_cast<unsigned short>(filter.instructions.size()),
                           const_cast<sock_filter*>(filter.instructions.data())};
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &program) != 0) {
            _exit(100);
        }
        errno = 0;
        long outcome[2];
        outcome[0] = call();
        outcome[1] = errno;
        _exit(write(channel[1], outcome, sizeof outcome) == static_cast<ssize_t>(sizeof outcome) ? 0 : 101);
    }
    close(channel[1]);
    long outcome[2] = {0, 0};
    const bool reported = read(channel[0], outcome, sizeof outcome) == static_cast<ssize_t>(sizeof outcome);
    close(channel[0]);
    int status = 0;
    waitpid(child, &status, 0);
    CallOutcome result;
    if (WIFSIGNALED(status)) {
        result.signal = WTERMSIG(status);
    } else {
        EXPECT_TRUE(reported) << "the child exited with " << WEXITSTATUS(status) << " without reporting";
        result.result = outcome[0];
        result.error = static_cast<int>(outcome[1]);
    }
    return result;
}

// A classic-BPF interpreter for seccomp programs: enough to compare two
// renderings of the policy on every call number without making the calls.
std::uint32_t run_bpf(const std::vector<sock_filter>& program, const seccomp_data& data) {
    std::uint32_t a = 0, x = 0, memory[BPF_MEMWORDS] = {};
    const auto* bytes = reinterpret_cast<const unsigned char*>(&data);
    for (std::size_t pc = 0; pc < program.size(); ++pc) {
        const sock_filter& op = program[pc];
        const std::uint32_t operand = BPF_SRC(op.code) == BPF_X ? x : op.k;
        switch (BPF_CLASS(op.code)) {
        case BPF_LD:
            if (BPF_MODE(op.code) == BPF_ABS) {
                if (op.k + 4 > sizeof data) {
                    return 0;
                }
                std::memcpy(&a, bytes + op.k, 4);
            } else {
                a = BPF_MODE(op.code) == BPF_MEM ? memory[op.k % BPF_MEMWORDS] : op.k;
            }
            break;
        case BPF_LDX:
            x = BPF_MODE(op.code) == BPF_MEM ? memory[op.k % BPF_MEMWORDS] : op.k;
            break;
        case BPF_ST:
            memory[op.k % BPF_MEMWORDS] = a;
            break;
        case BPF_STX:
            memory[op.k % BPF_MEMWORDS] = x;
            break;
        case BPF_ALU:
            switch (BPF_OP(op.code)) {
            case BPF_ADD: a += operand; break;
            case BPF_SUB: a -= operand; break;
            case BPF_MUL: a *= operand; break;
            case BPF_DIV: a = operand ? a / operand : 0; break;
            case BPF_OR: a |= operand; break;
            case BPF_AND: a &= operand; break;
            case BPF_LSH: a <<= operand; break;
            case BPF_RSH: a >>= operand; break;
            case BPF_NEG: a = -a; break;
            default: ADD_FAILURE() << "unhandled ALU op " << op.code; return 0;
            }
            break;
        case BPF_JMP: {
            if (BPF_OP(op.code) == BPF_JA) {
                pc += op.k;
                break;
            }
            bool taken = false;
            switch (BPF_OP(op.code)) {
            case BPF_JEQ: taken = a == operand; break;
            case BPF_JGT: taken = a > operand; break;
            case BPF_JGE: taken = a >= operand; break;
            case BPF_JSET: taken = (a & operand) != 0; break;
            default: ADD_FAILURE() << "unhandled jump " << op.code; return 0;
            }
            pc += taken ? op.jt : op.jf;
            break;
        }
        case BPF_RET:
            return BPF_RVAL(op.code) == BPF_A ? a : op.k;
        case BPF_MISC:
            if (BPF_MISCOP(op.code) == BPF_TAX) {
                x = a;
            } else {
                a = x;
            }
            break;
        }
    }
    ADD_FAILURE() << "the program fell off its end";
    return 0;
}

// Killing the thread or the process counts as the same verdict (kafel kills
// a foreign arch's call with KILL, libseccomp with KILL_PROCESS).
std::uint32_t verdict(std::uint32_t action) {
    const std::uint32_t kind = action & SECCOMP_RET_ACTION_FULL;
    return kind == SECCOMP_RET_KILL_PROCESS ? SECCOMP_RET_KILL_THREAD : action;
}

long x32_getpid() {
    long result;
    const long number = 0x40000000L | SYS_getpid;
    asm volatile("syscall" : "=a"(result) : "a"(number) : "rcx", "r11", "memory");
    return result;
}

long i386_getpid() {
    long result;
    asm volatile("int $0x80" : "=a"(result) : "a"(20L) : "memory");  // 20: getpid on i386
    return result;
}

class SeccompExecution : public ::testing::TestWithParam<bool> {
protected:
    void SetUp() override {
        std::string skip_reason;
        m_filter = GetParam() ? kafel_filter(skip_reason) : libseccomp_filter();
        if (!skip_reason.empty()) {
            GTEST_SKIP() << skip_reason;
        }
        ASSERT_EQ(m_filter.error, "");
        ASSERT_FALSE(m_filter.instructions.empty());
    }

    CallOutcome call(const std::function<long()>& function) const { return call_filtered(m_filter, function); }

    void expect_refused(const char* what, const std::function<long()>& function, int error) const {
        const CallOutcome outcome = call(function);
        EXPECT_EQ(outcome.signal, 0) << what;
        EXPECT_EQ(outcome.result, -1) << what;
        EXPECT_EQ(outcome.error, error) << what << ": " << strerror(outcome.error);
    }

    void expect_allowed(const char* what, const std::function<long()>& function) const {
        const CallOutcome outcome = call(function);
        EXPECT_EQ(outcome.signal, 0) << what;
        EXPECT_GE(outcome.result, 0) << what << ": " << strerror(outcome.error);
    }

    Filter m_filter;
};

INSTANTIATE_TEST_SUITE_P(Renderings, SeccompExecution, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "kafel" : "libseccomp"; });

TEST_P(SeccompExecution, AllowedCallsWork) {
    expect_allowed("getpid", [] { return static_cast<long>(getpid()); });
    expect_allowed("write", [] { return static_cast<long>(write(STDERR_FILENO, "", 0)); });
    expect_allowed("socket(AF_UNIX)", [] { return static_cast<long>(socket(AF_UNIX, SOCK_STREAM, 0)); });
    expect_allowed("ioctl(FIOCLEX)", [] { return static_cast<long>(ioctl(STDERR_FILENO, FIOCLEX)); });
    expect_allowed("prctl(PR_SET_NAME)", [] { return static_cast<long>(prctl(PR_SET_NAME, "filtered", 0, 0, 0)); });
    expect_allowed("personality(query)", [] { return static_cast<long>(personality(0xffffffff)); });
    // A plain fork: clone without namespace flags.
    expect_allowed("clone(SIGCHLD)", [] {
        const long pid = syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0);
        if (pid == 0) {
            _exit(0);
        }
        return pid;
    });
}

TEST_P(SeccompExecution, CallsOffTheListFailWithEperm) {
    expect_refused("acct", [] { return syscall(SYS_acct, "/nonexistent/acct"); }, EPERM);
    expect_refused("swapon", [] { return syscall(SYS_swapon, "/nonexistent/swap", 0); }, EPERM);
    expect_refused("syslog", [] { return syscall(SYS_syslog, 10 /* SYSLOG_ACTION_SIZE_BUFFER */, 0, 0); }, EPERM);
    expect_refused("vhangup", [] { return syscall(SYS_vhangup); }, EPERM);
    expect_refused("pivot_root", [] { return syscall(SYS_pivot_root, "/nonexistent", "/nonexistent"); }, EPERM);
    expect_refused("ptrace", [] { return syscall(SYS_ptrace, 0 /* PTRACE_TRACEME */, 0, 0, 0); }, EPERM);
    expect_refused("unshare", [] { return syscall(SYS_unshare, CLONE_NEWUSER); }, EPERM);
}

TEST_P(SeccompExecution, ArgumentFiltersRefuseTheRest) {
    expect_refused("socket(AF_INET)", [] { return static_cast<long>(socket(AF_INET, SOCK_STREAM, 0)); }, EAFNOSUPPORT);
    expect_refused("socket(AF_NETLINK)", [] { return static_cast<long>(socket(AF_NETLINK, SOCK_RAW, 0)); },
                   EAFNOSUPPORT);
    // The kernel reads the family as an int: the upper half must not smuggle AF_INET past the filter.
    expect_refused("socket(AF_UNIX | 1 << 32)", [] { return syscall(SYS_socket, (1L << 32) | AF_UNIX, SOCK_STREAM, 0); },
                   EAFNOSUPPORT);
    expect_refused("clone(CLONE_NEWUSER)",
                   [] {
                       const long pid = syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);
                       if (pid == 0) {
                           _exit(0);
                       }
                       return pid;
                   },
                   EPERM);
    expect_refused("clone3", [] { return syscall(SYS_clone3, nullptr, 0); }, ENOSYS);
    expect_refused("ioctl(TIOCSTI)", [] { return static_cast<long>(ioctl(STDIN_FILENO, TIOCSTI, "x")); }, EPERM);
    expect_refused("prctl(PR_SET_DUMPABLE)", [] { return static_cast<long>(prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)); },
                   EPERM);
    expect_refused("personality(ADDR_NO_RANDOMIZE)", [] { return static_cast<long>(personality(ADDR_NO_RANDOMIZE)); },
                   EPERM);
    expect_refused("mknod(S_IFCHR)", [] { return static_cast<long>(mknod("/nonexistent/dev", S_IFCHR | 0600, 0)); },
                   EPERM);
}

std::uint32_t verdict_for(const Filter& filter, long number, std::uint64_t a0 = 0, std::uint64_t a1 = 0,
                          std::uint32_t arch = AUDIT_ARCH_X86_64) {
    seccomp_data data{};
    data.nr = static_cast<int>(number);
    data.arch = arch;
    data.args[0] = a0;
    data.args[1] = a1;
    return run_bpf(filter.instructions, data);
}

TEST(SeccompRenderings, TheInterpreterReadsTheCompiledPolicy) {
    const Filter filter = libseccomp_filter();
    ASSERT_EQ(filter.error, "");
    EXPECT_EQ(verdict_for(filter, SYS_getpid), SECCOMP_RET_ALLOW);
    EXPECT_EQ(verdict_for(filter, SYS_acct), SECCOMP_RET_ERRNO | EPERM);
    EXPECT_EQ(verdict_for(filter, 1000), SECCOMP_RET_ERRNO | EPERM);  // no such call yet
    EXPECT_EQ(verdict_for(filter, SYS_socket, AF_UNIX), SECCOMP_RET_ALLOW);
    EXPECT_EQ(verdict_for(filter, SYS_socket, AF_INET), SECCOMP_RET_ERRNO | EAFNOSUPPORT);
    EXPECT_EQ(verdict_for(filter, SYS_ioctl, 0, TCGETS), SECCOMP_RET_ALLOW);
    EXPECT_EQ(verdict_for(filter, SYS_ioctl, 0, TCGETS | 1ull << 32), SECCOMP_RET_ERRNO | EPERM);
    EXPECT_EQ(verdict_for(filter, SYS_clone, SIGCHLD), SECCOMP_RET_ALLOW);
    EXPECT_EQ(verdict_for(filter, SYS_clone, SIGCHLD | CLONE_NEWNET), SECCOMP_RET_ERRNO | EPERM);
    EXPECT_EQ(verdict_for(filter, SYS_clone3), SECCOMP_RET_ERRNO | ENOSYS);
    EXPECT_EQ(verdict_for(filter, 0x40000000 | SYS_getpid), SECCOMP_RET_KILL_PROCESS);
    EXPECT_EQ(verdict_for(filter, 0x40000000 | 520 /* x32 execve */), SECCOMP_RET_KILL_PROCESS);
    EXPECT_EQ(verdict_for(filter, 20, 0, 0, AUDIT_ARCH_I386), SECCOMP_RET_KILL_PROCESS);
}

TEST(SeccompRenderings, KafelAndLibseccompAgreeOnEveryCall) {
    std::string skip_reason;
    const Filter kafel = kafel_filter(skip_reason);
    if (!skip_reason.empty()) {
        GTEST_SKIP() << skip_reason;
    }
    ASSERT_EQ(kafel.error, "");
    const Filter libseccomp = libseccomp_filter();
    ASSERT_EQ(libseccomp.error, "");
    // Every value a rule tests, its neighbours, and the upper half set.
    std::set<std::uint64_t> values = {0, 1, 2, 0xffff, 0xffffffff, ~0ull};
    for (const auto& rule : seccomp_rules()) {
        for (std::uint64_t value : rule.values) {
            values.insert({value, value + 1, value - 1, value | 1ull << 32});
        }
        if (rule.kind == Kind::allow_if_masked) {
            for (int bit = 0; bit < 64; ++bit) {
                values.insert({rule.value | 1ull << bit, rule.value});
            }
        }
    }
    std::size_t compared = 0, allowed = 0;
    for (const std::uint32_t arch : {std::uint32_t{AUDIT_ARCH_X86_64}, std::uint32_t{AUDIT_ARCH_I386}}) {
        for (std::uint32_t base : {0u, 0x40000000u}) {
            for (std::uint32_t number = base; number < base + 600; ++number) {
                for (int argument = 0; argument < 6; ++argument) {
                    for (const std::uint64_t value : values) {
                        seccomp_data data{};
                        data.nr = static_cast<int>(number);
                        data.arch = arch;
                        data.args[argument] = value;
                        const std::uint32_t ours = run_bpf(libseccomp.instructions, data);
                        ASSERT_EQ(verdict(ours), verdict(run_bpf(kafel.instructions, data)))
                            << "call " << number << " arch " << arch << " a" << argument << " = " << value;
                        ++compared;
                        allowed += ours == SECCOMP_RET_ALLOW ? 1 : 0;
                    }
                }
            }
        }
    }
    EXPECT_GT(allowed, 0u);
    EXPECT_GT(compared, 100000u);
}

TEST_P(SeccompExecution, X32CallsKillTheProcess) {
    EXPECT_EQ(call(x32_getpid).signal, SIGSYS);
}

TEST_P(SeccompExecution, I386CallsKillTheProcess) {
    // Without the kernel's ia32 emulation int 0x80 faults before seccomp sees it.
    const pid_t child = fork();
    if (child == 0) {
        _exit(i386_getpid() > 0 ? 0 : 1);
    }
    int status = 0;
    waitpid(child, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        GTEST_SKIP() << "this kernel runs no i386 system calls (no ia32 emulation)";
    }
    EXPECT_EQ(call(i386_getpid).signal, SIGSYS);
}

}  // namespace
}  // namespace safepy

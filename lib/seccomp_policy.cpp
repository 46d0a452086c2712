#include "seccomp_policy.hpp"

#include <cerrno>
#include <cstdio>
#include <sched.h>
#include <seccomp.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

namespace safepy {
namespace {

// CLONE_NEWTIME is left out: clone() cannot take it (its bit is part of the
// exit signal there), only clone3 and unshare, which are denied outright.
constexpr std::uint64_t k_namespace_flags =
    CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWCGROUP;

SeccompRule always(std::string_view name, int error_number = EPERM) {
    return {name, error_number};
}

}  // namespace

const std::vector<SeccompRule>& seccomp_rules() {
    static const std::vector<SeccompRule> rules = {
        // Inspecting or changing other processes.
        always("ptrace"), always("process_vm_readv"), always("process_vm_writev"),
        always("kcmp"), always("pidfd_getfd"),
        // Mounts and namespaces: the jail's layout is final.
        always("mount"), always("umount2"), always("pivot_root"), always("chroot"),
        always("unshare"), always("setns"), always("open_tree"), always("move_mount"),
        always("fsopen"), always("fsconfig"), always("fsmount"), always("fspick"),
        always("mount_setattr"), always("open_by_handle_at"), always("name_to_handle_at"),
        // clone3 passes its flags in memory a filter cannot read: make libc fall
        // back to clone, whose flags are checked below.
        always("clone3", ENOSYS),
        {"clone", EPERM, 0, k_namespace_flags, false},
        // Kernel attack surface a Python script has no use for.
        always("bpf"), always("perf_event_open"), always("userfaultfd"),
        always("io_uring_setup"), always("io_uring_enter"), always("io_uring_register"),
        always("keyctl"), always("add_key"), always("request_key"),
        always("kexec_load"), always("kexec_file_load"), always("init_module"),
        always("finit_module"), always("delete_module"), always("reboot"), always("swapon"),
        always("swapoff"), always("acct"), always("quotactl"), always("syslog"),
        always("iopl"), always("ioperm"), always("fanotify_init"),
        // Only local sockets: no network even if a namespace were misconfigured.
        {"socket", EAFNOSUPPORT, 0, AF_UNIX, true},
    };
    return rules;
}

std::string seccomp_kafel_policy() {
    std::string policy;
    for (const auto& rule : seccomp_rules()) {
        // kafel's amd64 table names umount2 "umount".
        const std::string name = rule.syscall == "umount2" ? "umount" : std::string(rule.syscall);
        policy += "ERRNO(" + std::to_string(rule.error_number) + ") { " + name;
        if (rule.argument >= 0) {
            char mask[32];
            std::snprintf(mask, sizeof mask, "0x%llx", static_cast<unsigned long long>(rule.mask));
            policy += "(a0, a1, a2, a3, a4, a5) { ";
            const std::string arg = "a" + std::to_string(rule.argument);
            policy += rule.deny_unless_equal ? arg + " != " + mask : "(" + arg + " & " + mask + ") != 0";
            policy += " }";
        }
        policy += " }\n";
    }
    policy += "DEFAULT ALLOW\n";
    return policy;
}

SeccompProgram compile_seccomp_bpf() {
    SeccompProgram program;
    scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);
    if (!ctx) {
        program.error = "seccomp_init failed";
        return program;
    }
    int rc = 0;
    for (const auto& rule : seccomp_rules()) {
        const std::string name(rule.syscall);
        const int number = seccomp_syscall_resolve_name(name.c_str());
        if (number == __NR_SCMP_ERROR) {
            continue;  // not a syscall on this architecture
        }
        const auto action = SCMP_ACT_ERRNO(static_cast<std::uint32_t>(rule.error_number));
        if (rule.argument < 0) {
            rc = seccomp_rule_add(ctx, action, number, 0);
        } else if (rule.deny_unless_equal) {
            rc = seccomp_rule_add(ctx, action, number, 1,
                                  SCMP_CMP(static_cast<unsigned>(rule.argument), SCMP_CMP_NE, rule.mask));
        } else {
            // One rule per flag bit: libseccomp ORs rules on the same syscall.
            for (int bit = 0; bit < 64 && rc == 0; ++bit) {
                const std::uint64_t flag = 1ull << bit;
                if (rule.mask & flag) {
                    rc = seccomp_rule_add(ctx, action, number, 1,
                                          SCMP_CMP(static_cast<unsigned>(rule.argument), SCMP_CMP_MASKED_EQ, flag, flag));
                }
            }
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

#include "seccomp_policy.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <linux/filter.h>

namespace safepy {
namespace {

bool denied(std::string_view name) {
    const auto& rules = seccomp_rules();
    return std::any_of(rules.begin(), rules.end(), [name](const SeccompRule& rule) { return rule.syscall == name; });
}

TEST(Seccomp, DenyListCoversTheRequiredCalls) {
    for (const char* name :
         {"ptrace", "process_vm_readv", "process_vm_writev", "mount", "umount2", "pivot_root", "chroot", "unshare",
          "setns", "bpf", "perf_event_open", "keyctl", "add_key", "request_key", "kexec_load", "kexec_file_load",
          "init_module", "finit_module", "delete_module", "userfaultfd", "io_uring_setup", "io_uring_enter",
          "io_uring_register", "socket", "clone", "clone3"}) {
        EXPECT_TRUE(denied(name)) << name;
    }
}

TEST(Seccomp, KafelPolicyGolden) {
    const std::string policy = seccomp_kafel_policy();
    EXPECT_EQ(policy.rfind("ERRNO(1) { ptrace }\nERRNO(1) { process_vm_readv }\n", 0), 0u) << policy;
    EXPECT_NE(policy.find("ERRNO(1) { umount }\n"), std::string::npos);   // kafel's name for umount2
    EXPECT_EQ(policy.find("umount2"), std::string::npos);
    EXPECT_NE(policy.find("ERRNO(38) { clone3 }\n"), std::string::npos);
    EXPECT_NE(policy.find("ERRNO(1) { clone(a0, a1, a2, a3, a4, a5) { (a0 & 0x7e020000) != 0 } }\n"), std::string::npos)
        << policy;
    EXPECT_NE(policy.find("ERRNO(97) { socket(a0, a1, a2, a3, a4, a5) { a0 != 0x1 } }\n"), std::string::npos);
    EXPECT_TRUE(policy.ends_with("DEFAULT ALLOW\n"));
}

TEST(Seccomp, CompilesToABpfProgram) {
    const SeccompProgram program = compile_seccomp_bpf();
    ASSERT_EQ(program.error, "");
    ASSERT_FALSE(program.bpf.empty());
    EXPECT_EQ(program.bpf.size() % sizeof(sock_filter), 0u);
    // A deny-list with per-flag clone rules needs more than a handful of instructions.
    EXPECT_GT(program.bpf.size() / sizeof(sock_filter), 40u);
}

}  // namespace
}  // namespace safepy

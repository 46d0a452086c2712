// The one seccomp allow-list, enforced under both jails and in both modes:
// compiled to BPF with libseccomp (bubblewrap's --seccomp FD, and the warm
// template's children) and rendered as a kafel policy for nsjail
// (--seccomp_string). A call not on the list fails with EPERM; x32 and i386
// system calls kill the process.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace safepy {

// The errno of every call the list does not name (and of a filtered call
// whose argument is refused, unless its rule says otherwise).
inline constexpr int k_seccomp_default_errno = 1;  // EPERM

struct SeccompRule {
    enum class Kind {
        allow,            // always allowed
        allow_if_equal,   // allowed when argument `argument` is one of `values`
        allow_if_masked,  // allowed when (argument & mask) == value
        refuse,           // always refused with error_number
    };
    std::string_view syscall;  // libseccomp's name (the kafel text renames the few kafel spells otherwise)
    Kind kind = Kind::allow;
    int argument = -1;
    std::vector<std::uint64_t> values;
    std::uint64_t mask = 0;
    std::uint64_t value = 0;
    // refuse: the errno; allow_if_equal with a single value: the errno when
    // the argument differs; else the default errno.
    int error_number = k_seccomp_default_errno;
};

// The allow-list, in the order it is rendered.
const std::vector<SeccompRule>& seccomp_rules();

// The kafel policy text nsjail compiles (golden-tested).
std::string seccomp_kafel_policy();

// The policy compiled for x86-64 as a BPF program, ready for bwrap's
// --seccomp or prctl(PR_SET_SECCOMP); an error message on failure.
struct SeccompProgram {
    std::vector<std::uint8_t> bpf;
    std::string error;
};
SeccompProgram compile_seccomp_bpf();

}  // namespace safepy

// The one seccomp deny-list, enforced under both jails: compiled to BPF with
// libseccomp for bubblewrap (--seccomp FD) and rendered as a kafel policy for
// nsjail (--seccomp_string). Everything not listed is allowed.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace safepy {

struct SeccompRule {
    std::string_view syscall;
    int error_number;                  // the call fails with this errno
    int argument = -1;                 // -1: always; else the argument index tested
    std::uint64_t mask = 0;            // with argument: deny when (arg & mask) != 0 ...
    bool deny_unless_equal = false;    // ... or, when true, deny when arg != mask
};

// The deny-list, in the order it is rendered.
const std::vector<SeccompRule>& seccomp_rules();

// The kafel policy text nsjail compiles (golden-tested).
std::string seccomp_kafel_policy();

// The deny-list compiled for this machine's architecture as a BPF program,
// ready for bwrap's --seccomp; an error message on failure.
struct SeccompProgram {
    std::vector<std::uint8_t> bpf;
    std::string error;
};
SeccompProgram compile_seccomp_bpf();

}  // namespace safepy

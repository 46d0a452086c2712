// Building a jail's command line: a pure function of the plan, golden-tested.
#pragma once

#include "safepy/safepy.hpp"

#include <string>
#include <vector>

namespace safepy {

// Descriptors as the jail process sees them (set up by spawn.cpp).
inline constexpr int k_result_fd = 3;    // the runner's result channel
inline constexpr int k_script_fd = 4;    // the script's source
inline constexpr int k_policy_fd = 5;    // bwrap: seccomp BPF; nsjail: its config file
inline constexpr int k_jail_log_fd = 6;  // nsjail's log

// One entry of the sandbox's file system, the same for both jails.
struct MountEntry {
    enum class Kind { read_only, device, symlink };
    Kind kind;
    std::string source;  // host path, or the link target for symlink
    std::string target;  // path inside the sandbox
};

// What of the host's file system layout the mounts depend on.
struct HostLayout {
    bool lib_is_link = true;  // merged /usr: /lib -> usr/lib
    bool lib64_exists = true;
    bool lib64_is_link = true;
    bool bin_is_link = true;
    bool has_alternatives = true;  // /etc/alternatives (numpy's BLAS is behind it)
    bool has_ld_cache = true;      // /etc/ld.so.cache
};

// Reads the layout of this machine.
HostLayout read_host_layout();

// The file system both jails build: read-only /usr and friends, three device
// nodes, and a /dev/shm link to the private /tmp (which, like /proc, the jail
// command adds itself). Host links are recreated as links.
std::vector<MountEntry> default_mounts(const HostLayout& host);

// The environment the script sees: a fixed allow-list, nothing from the host.
std::vector<std::string> sandbox_environment();

struct JailPlan {
    JailKind kind = JailKind::bwrap;  // never automatic here
    std::string jail_path;
    std::string python_path;
    Mode mode = Mode::run;
    Limits limits;
    std::uint32_t uid = 65534;
    std::uint32_t gid = 65534;
    std::vector<MountEntry> mounts;
    std::string seccomp_kafel;  // nsjail only; bwrap reads BPF from k_policy_fd
    std::string runner_source;
    // The warm template: the jail keeps its capabilities (inside its own user
    // namespace) and has no seccomp filter, so that the template can build each
    // child's namespaces; every child drops both before user code runs.
    bool warm_template = false;
    std::vector<std::string> preload;  // modules the template imports
};

// argv for the jail, argv[0] included.
std::vector<std::string> jail_argv(const JailPlan& plan);

}  // namespace safepy

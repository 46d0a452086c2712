// The containment of a run, written once (the shape of nsjail's contain.cc):
// an ordered list of named steps, each a function that reports its own name
// and errno. A warm child runs the whole list through libsafepy_contain.so
// (loaded by the template, whose loop in template_loop.cpp runs each stage;
// safepy_contain() runs one stage for a caller of its own); a cold
// run's child set-up (spawn.cpp) uses the steps that apply before exec, and
// the jail does the rest. Everything here is async-signal-safe: no allocation,
// no locks, only system calls (it runs between fork and exec, or in a forked
// child of a threaded Python).
#pragma once

#include "template_protocol.hpp"

#include <stddef.h>
#include <stdint.h>

extern "C" {

// Stages of a warm child's containment, in the order they happen.
#define SAFEPY_STAGE_FORK 1u     /* the template, before it forks a child: a fresh PID namespace for it */
#define SAFEPY_STAGE_PREPARE 2u  /* the child, before it reports ready */
#define SAFEPY_STAGE_RUN 3u      /* the child, once its run has arrived: last before user code */

struct safepy_contain_request {
    uint32_t size;   // sizeof(struct safepy_contain_request)
    uint32_t stage;  // SAFEPY_STAGE_*
    struct safepy_run_limits limits;  // run stage
    int32_t stdout_fd, stderr_fd, result_fd, script_fd;  // run stage: become 1, 2, 3, 4
    const void* bpf;  // run stage: the seccomp filter, struct sock_filter[]
    uint64_t bpf_bytes;
};

// Runs the steps of request->stage. 0 on success; otherwise the errno of the
// failed step, with "step: reason" in `error`.
__attribute__((visibility("default"))) int safepy_contain(const struct safepy_contain_request* request,
                                                          char* error, size_t error_len);
}

namespace safepy::contain {

enum class StepKind {
    fresh_pid_namespace,  // the template's next child is pid 1 of a new PID namespace
    unshare_namespaces,   // the child: mount, network, IPC, UTS
    make_mounts_private,
    mount_proc,
    arrange_descriptors,  // stdin /dev/null, then stdout, stderr, result, script; nothing else open
    mount_tmp,
    chdir_tmp,
    unshare_cgroup,   // the run's cgroup becomes its root
    user_namespace,   // unshare, setgroups deny, uid and gid maps (itself only)
    unshare_mount,    // a mount namespace owned by the new user namespace
    proc_read_only,   // which that namespace may now remount read-only
    drop_capabilities,  // bounding set, ambient, then capset to nothing
    set_rlimits,
    no_new_privs,
    seccomp,
};

struct Step {
    StepKind kind;
    const char* name;
    uint32_t stage;
};

// A failed step: its name and errno. ok() when nothing failed.
struct Failure {
    const char* step = nullptr;
    int error_number = 0;
    bool ok() const { return step == nullptr; }
};

inline constexpr size_t k_max_rlimits = 6;

struct Rlimit {
    int resource;
    uint64_t soft;
    uint64_t hard;
};

// The rlimits of a run, decided once for cold and warm runs.
struct RlimitPlan {
    Rlimit entries[k_max_rlimits];
    size_t count = 0;
};

// Which rlimits a run gets: RLIMIT_CPU (soft, then a hard backstop a second
// later, or none when unlimited_cpu), FSIZE, NOFILE, CORE 0, and AS and NPROC
// without a cgroup. Pure.
RlimitPlan rlimit_plan(const safepy_run_limits& limits);

inline constexpr size_t k_max_steps = 16;

// Every step of a warm child's containment with its parameters. Pure.
struct Plan {
    Step steps[k_max_steps];
    size_t count = 0;
    unsigned long namespaces = 0;  // unshare_namespaces' flags
    char tmp_options[128] = {};    // mount_tmp's data
    char uid_map[48] = {};
    char gid_map[48] = {};
    int descriptors[5] = {-1, -1, -1, -1, -1};  // sources of 0..4 (-1 for 0: /dev/null)
    RlimitPlan rlimits;
    const void* bpf = nullptr;
    uint64_t bpf_bytes = 0;
};

// The plan for one stage of `request`, for a process running as uid/gid.
// False (and `why`) when the request is malformed.
bool make_plan(const safepy_contain_request& request, uint32_t uid, uint32_t gid, Plan& plan, const char*& why);

// Runs every step of the plan in order; stops at the first failure.
Failure execute(const Plan& plan);

// Steps a cold run's child takes before exec, each reporting its own name.
Failure set_rlimits(const RlimitPlan& plan);  // never above the inherited hard limit
Failure drop_credentials(uint32_t uid, uint32_t gid);  // setgroups, setresgid, setresuid
Failure no_new_privs();
Failure close_descriptors_from(unsigned first, bool on_exec);  // close_range

// strerror without locale or allocation: async-signal-safe.
const char* error_text(int error_number);

// Appends to a fixed buffer without allocating; fits() is false once
// something did not fit.
class Text {
public:
    Text(char* buffer, size_t size) : m_buffer(buffer), m_size(size) { m_buffer[0] = '\0'; }

    Text& add(const char* text) {
        while (*text) {
            put(*text++);
        }
        return *this;
    }

    Text& add(uint64_t number) {
        char digits[24];
        size_t n = 0;
        do {
            digits[n++] = static_cast<char>('0' + number % 10);
            number /= 10;
        } while (number > 0);
        while (n > 0) {
            put(digits[--n]);
        }
        return *this;
    }

    bool fits() const { return m_fits; }

private:
    void put(char c) {
        if (m_used + 1 >= m_size) {
            m_fits = false;
            return;
        }
        m_buffer[m_used++] = c;
        m_buffer[m_used] = '\0';
    }

    char* m_buffer;
    size_t m_size;
    size_t m_used = 0;
    bool m_fits = true;
};


}  // namespace safepy::contain

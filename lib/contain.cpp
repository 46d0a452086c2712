#include "contain.hpp"

#include <cerrno>
#include <csignal>
#include <cstring>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <linux/close_range.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace safepy::contain {
namespace {

Failure fail(const char* step) { return Failure{step, errno != 0 ? errno : EINVAL}; }

int retry_close(int fd) {
    return fd >= 0 ? close(fd) : 0;
}

bool write_file(const char* path, const char* text) {
    const int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) {
        return false;
    }
    const size_t length = std::strlen(text);
    const bool written = write(fd, text, length) == static_cast<ssize_t>(length);
    const int saved = errno;
    retry_close(fd);
    errno = saved;
    return written;
}

Failure fresh_pid_namespace(const Plan&) {
    // unshare(CLONE_NEWPID) only sets the namespace of the caller's next
    // children, and only once while that differs from the caller's own: go
    // back to its own first, so the template can do this before every fork.
    const int own = open("/proc/self/ns/pid", O_RDONLY | O_CLOEXEC);
    if (own < 0) {
        return fail("open /proc/self/ns/pid");
    }
    const int entered = setns(own, CLONE_NEWPID);
    const int saved = errno;
    retry_close(own);
    errno = saved;
    if (entered != 0) {
        return fail("setns(own PID namespace)");
    }
    return unshare(CLONE_NEWPID) == 0 ? Failure{} : fail("unshare(CLONE_NEWPID)");
}

Failure unshare_namespaces(const Plan& plan) {
    return unshare(static_cast<int>(plan.namespaces)) == 0 ? Failure{} : fail("unshare namespaces");
}

Failure make_mounts_private(const Plan&) {
    return mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) == 0 ? Failure{}
                                                                           : fail("mount --make-rprivate /");
}

Failure mount_proc(const Plan&) {
    return mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr) == 0 ? Failure{}
                                                                                          : fail("mount /proc");
}

Failure arrange_descriptors(const Plan& plan) {
    // Move every source out of the way first so that dup2 cannot clobber one.
    int moved[5];
    for (int i = 0; i < 5; ++i) {
        const int source = plan.descriptors[i] >= 0 ? plan.descriptors[i] : open("/dev/null", O_RDONLY | O_CLOEXEC);
        moved[i] = source < 0 ? -1 : fcntl(source, F_DUPFD_CLOEXEC, 100);
        if (moved[i] < 0) {
            return fail("arrange descriptors");
        }
        if (plan.descriptors[i] < 0) {
            retry_close(source);
        }
    }
    for (int i = 0; i < 5; ++i) {
        if (dup2(moved[i], i) < 0) {
            return fail("arrange descriptors");
        }
    }
    // Nothing else stays: not the slot socket, not anything the template held.
    if (syscall(SYS_close_range, 5U, ~0U, 0) != 0) {
        return fail("close descriptors");
    }
    return {};
}

Failure mount_tmp(const Plan& plan) {
    return mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, plan.tmp_options) == 0 ? Failure{}
                                                                                        : fail("mount /tmp");
}

Failure chdir_tmp(const Plan&) { return chdir("/tmp") == 0 ? Failure{} : fail("chdir /tmp"); }

Failure unshare_cgroup(const Plan&) {
    return unshare(CLONE_NEWCGROUP) == 0 ? Failure{} : fail("unshare(CLONE_NEWCGROUP)");
}

Failure user_namespace(const Plan& plan) {
    if (unshare(CLONE_NEWUSER) != 0) {
        return fail("unshare(CLONE_NEWUSER)");
    }
    if (!write_file("/proc/self/setgroups", "deny")) {
        return fail("write /proc/self/setgroups");
    }
    if (!write_file("/proc/self/uid_map", plan.uid_map)) {
        return fail("write /proc/self/uid_map");
    }
    if (!write_file("/proc/self/gid_map", plan.gid_map)) {
        return fail("write /proc/self/gid_map");
    }
    return {};
}

Failure unshare_mount(const Plan&) {
    return unshare(CLONE_NEWNS) == 0 ? Failure{} : fail("unshare(CLONE_NEWNS)");
}

Failure proc_read_only(const Plan&) {
    const unsigned long flags = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC;
    return mount(nullptr, "/proc", nullptr, flags, nullptr) == 0 ? Failure{} : fail("mount -o remount,ro /proc");
}

Failure drop_capabilities(const Plan&) {
    // Up to the last capability this kernel knows (EINVAL past it).
    for (unsigned long capability = 0; capability < 64; ++capability) {
        if (prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0) {
            if (errno == EINVAL) {
                break;
            }
            return fail("drop the capability bounding set");
        }
    }
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0) {
        return fail("clear the ambient capabilities");
    }
    __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
    __user_cap_data_struct data[2] = {};
    if (syscall(SYS_capset, &header, data) != 0) {
        return fail("capset");
    }
    return {};
}

Failure set_rlimits_step(const Plan& plan) { return set_rlimits(plan.rlimits); }

Failure no_new_privs_step(const Plan&) { return no_new_privs(); }

Failure seccomp(const Plan& plan) {
    sock_fprog program{static_cast<unsigned short>(plan.bpf_bytes / sizeof(sock_filter)),
                       static_cast<sock_filter*>(const_cast<void*>(plan.bpf))};
    return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &program, 0, 0) == 0 ? Failure{} : fail("seccomp");
}

struct StepInfo {
    StepKind kind;
    const char* name;
    uint32_t stage;
    Failure (*run)(const Plan&);
};

// The whole containment of a warm child, in order.
constexpr StepInfo k_steps[] = {
    {StepKind::fresh_pid_namespace, "PID namespace", SAFEPY_STAGE_FORK, fresh_pid_namespace},
    {StepKind::unshare_namespaces, "unshare namespaces", SAFEPY_STAGE_PREPARE, unshare_namespaces},
    {StepKind::make_mounts_private, "make mounts private", SAFEPY_STAGE_PREPARE, make_mounts_private},
    {StepKind::mount_proc, "mount /proc", SAFEPY_STAGE_PREPARE, mount_proc},
    {StepKind::arrange_descriptors, "arrange descriptors", SAFEPY_STAGE_RUN, arrange_descriptors},
    {StepKind::mount_tmp, "mount /tmp", SAFEPY_STAGE_RUN, mount_tmp},
    {StepKind::chdir_tmp, "chdir /tmp", SAFEPY_STAGE_RUN, chdir_tmp},
    {StepKind::unshare_cgroup, "cgroup namespace", SAFEPY_STAGE_RUN, unshare_cgroup},
    {StepKind::user_namespace, "user namespace", SAFEPY_STAGE_RUN, user_namespace},
    {StepKind::unshare_mount, "mount namespace", SAFEPY_STAGE_RUN, unshare_mount},
    {StepKind::proc_read_only, "/proc read-only", SAFEPY_STAGE_RUN, proc_read_only},
    {StepKind::drop_capabilities, "drop capabilities", SAFEPY_STAGE_RUN, drop_capabilities},
    {StepKind::set_rlimits, "rlimits", SAFEPY_STAGE_RUN, set_rlimits_step},
    {StepKind::no_new_privs, "no_new_privs", SAFEPY_STAGE_RUN, no_new_privs_step},
    {StepKind::seccomp, "seccomp", SAFEPY_STAGE_RUN, seccomp},
};
static_assert(sizeof k_steps / sizeof k_steps[0] <= k_max_steps);

}  // namespace

RlimitPlan rlimit_plan(const safepy_run_limits& limits) {
    RlimitPlan plan;
    auto add = [&plan](int resource, uint64_t soft, uint64_t hard) {
        plan.entries[plan.count++] = Rlimit{resource, soft, hard};
    };
    // Soft limit: SIGXCPU, which the classifier reads as a CPU timeout; the
    // hard limit one second later is the backstop.
    if (limits.unlimited_cpu) {
        add(RLIMIT_CPU, RLIM_INFINITY, RLIM_INFINITY);
    } else {
        add(RLIMIT_CPU, limits.cpu_seconds, limits.cpu_seconds + 1);
    }
    add(RLIMIT_FSIZE, limits.file_bytes, limits.file_bytes);
    add(RLIMIT_NOFILE, limits.open_files, limits.open_files);
    add(RLIMIT_CORE, 0, 0);
    if (limits.rlimit_memory) {
        add(RLIMIT_AS, limits.memory_bytes, limits.memory_bytes);
        add(RLIMIT_NPROC, limits.processes, limits.processes);
    }
    return plan;
}

bool make_plan(const safepy_contain_request& request, uint32_t uid, uint32_t gid, Plan& plan, const char*& why) {
    plan = Plan{};
    if (request.size != sizeof(safepy_contain_request)) {
        why = "the request's size does not match this library's";
        return false;
    }
    if (request.stage < SAFEPY_STAGE_FORK || request.stage > SAFEPY_STAGE_RUN) {
        why = "unknown stage";
        return false;
    }
    for (const StepInfo& info : k_steps) {
        if (info.stage == request.stage) {
            plan.steps[plan.count++] = Step{info.kind, info.name, info.stage};
        }
    }
    plan.namespaces = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS;
    if (request.stage != SAFEPY_STAGE_RUN) {
        return true;
    }
    const safepy_run_limits& limits = request.limits;
    if (limits.magic != SAFEPY_PROTOCOL_MAGIC) {
        why = "the run's limits are not a safepy_run_limits";
        return false;
    }
    const int32_t sources[] = {request.stdout_fd, request.stderr_fd, request.result_fd, request.script_fd};
    for (int i = 0; i < 4; ++i) {
        if (sources[i] < 0) {
            why = "a run descriptor is missing";
            return false;
        }
        plan.descriptors[i + 1] = sources[i];
    }
    if (!request.bpf || request.bpf_bytes == 0 || request.bpf_bytes % sizeof(sock_filter) != 0 ||
        request.bpf_bytes / sizeof(sock_filter) > BPF_MAXINSNS) {
        why = "the seccomp filter is missing or malformed";
        return false;
    }
    plan.bpf = request.bpf;
    plan.bpf_bytes = request.bpf_bytes;
    Text tmp(plan.tmp_options, sizeof plan.tmp_options);
    tmp.add("size=").add(limits.tmp_bytes).add(",mode=0755,uid=").add(uint64_t{uid}).add(",gid=").add(uint64_t{gid});
    Text uid_map(plan.uid_map, sizeof plan.uid_map);
    uid_map.add(uint64_t{uid}).add(" ").add(uint64_t{uid}).add(" 1");
    Text gid_map(plan.gid_map, sizeof plan.gid_map);
    gid_map.add(uint64_t{gid}).add(" ").add(uint64_t{gid}).add(" 1");
    if (!tmp.fits() || !uid_map.fits() || !gid_map.fits()) {
        why = "a mount option does not fit";
        return false;
    }
    plan.rlimits = rlimit_plan(limits);
    return true;
}

Failure execute(const Plan& plan) {
    for (size_t i = 0; i < plan.count; ++i) {
        for (const StepInfo& info : k_steps) {
            if (info.kind != plan.steps[i].kind) {
                continue;
            }
            errno = 0;
            const Failure failure = info.run(plan);
            if (!failure.ok()) {
                return failure;
            }
        }
    }
    return {};
}

Failure set_rlimits(const RlimitPlan& plan) {
    for (size_t i = 0; i < plan.count; ++i) {
        const Rlimit& wanted = plan.entries[i];
        // Without CAP_SYS_RESOURCE nothing can go above the current hard
        // limit (a container's ulimit): ask for at most that rather than fail.
        rlimit value{static_cast<rlim_t>(wanted.soft), static_cast<rlim_t>(wanted.hard)};
        rlimit current{};
        if (getrlimit(wanted.resource, &current) == 0 && current.rlim_max != RLIM_INFINITY) {
            value.rlim_max = value.rlim_max < current.rlim_max ? value.rlim_max : current.rlim_max;
            value.rlim_cur = value.rlim_cur < value.rlim_max ? value.rlim_cur : value.rlim_max;
        }
        if (setrlimit(wanted.resource, &value) != 0) {
            return fail("setrlimit");
        }
    }
    return {};
}

Failure drop_credentials(uint32_t uid, uint32_t gid) {
    if (setgroups(0, nullptr) != 0) {
        return fail("setgroups");
    }
    if (setresgid(gid, gid, gid) != 0) {
        return fail("setresgid");
    }
    if (setresuid(uid, uid, uid) != 0) {
        return fail("setresuid");
    }
    return {};
}

Failure no_new_privs() {
    return prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 ? Failure{} : fail("no_new_privs");
}

const char* error_text(int error_number) {
    const char* text = strerrordesc_np(error_number);
    return text ? text : "unknown error";
}

Failure close_descriptors_from(unsigned first, bool on_exec) {
    return syscall(SYS_close_range, first, ~0U, on_exec ? CLOSE_RANGE_CLOEXEC : 0) == 0 ? Failure{}
                                                                                        : fail("close descriptors");
}

}  // namespace safepy::contain

extern "C" int safepy_contain(const safepy_contain_request* request, char* error, size_t error_len) {
    using namespace safepy::contain;
    auto report = [error, error_len](const char* step, const char* reason) {
        if (error && error_len > 0) {
            Text text(error, error_len);
            text.add(step).add(": ").add(reason);
        }
    };
    if (!request) {
        report("request", "missing");
        return EINVAL;
    }
    Plan plan;
    const char* why = nullptr;
    if (!make_plan(*request, static_cast<uint32_t>(getuid()), static_cast<uint32_t>(getgid()), plan, why)) {
        report("request", why);
        return EINVAL;
    }
    const Failure failure = execute(plan);
    if (!failure.ok()) {
        report(failure.step, error_text(failure.error_number));
        return failure.error_number;
    }
    return 0;
}

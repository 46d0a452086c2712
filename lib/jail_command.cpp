#include "jail_command.hpp"

#include <sys/stat.h>
#include <unistd.h>

namespace safepy {
namespace {

void append(std::vector<std::string>& argv, std::initializer_list<std::string> items) {
    argv.insert(argv.end(), items);
}

std::vector<std::string> python_command(const JailPlan& plan) {
    std::vector<std::string> argv = {plan.python_path, "-I", "-B", "-u", "-c", plan.runner_source};
    argv.push_back(plan.warm_template ? "template" : plan.mode == Mode::check ? "check" : "run");
    argv.push_back(std::to_string(k_result_fd));
    argv.push_back(std::to_string(k_script_fd));
    if (plan.warm_template) {
        argv.insert(argv.end(), plan.preload.begin(), plan.preload.end());
    }
    return argv;
}

std::vector<std::string> bwrap_argv(const JailPlan& plan) {
    std::vector<std::string> argv = {plan.jail_path};
    append(argv, {"--unshare-all", "--unshare-user"});
    if (!plan.warm_template) {
        append(argv, {"--disable-userns"});
    }
    // The runner is pid 1, as under nsjail: no bwrap init beside it whose
    // memory the script could open through /proc.
    append(argv, {"--as-pid-1", "--die-with-parent", "--new-session", plan.warm_template ? "--cap-add" : "--cap-drop", "ALL",
                  "--uid", std::to_string(plan.uid), "--gid", std::to_string(plan.gid), "--hostname", "safepy"});
    for (const auto& mount : plan.mounts) {
        switch (mount.kind) {
        case MountEntry::Kind::read_only:
            append(argv, {"--ro-bind", mount.source, mount.target});
            break;
        case MountEntry::Kind::device:
            append(argv, {"--dev-bind", mount.source, mount.target});
            break;
        case MountEntry::Kind::symlink:
            append(argv, {"--symlink", mount.source, mount.target});
            break;
        }
    }
    append(argv, {"--proc", "/proc", "--remount-ro", "/proc", "--size", std::to_string(plan.limits.tmp_bytes),
                  "--tmpfs", "/tmp", "--chdir", "/tmp", "--remount-ro", "/", "--clearenv"});
    for (const auto& entry : sandbox_environment()) {
        const auto equals = entry.find('=');
        append(argv, {"--setenv", entry.substr(0, equals), entry.substr(equals + 1)});
    }
    if (!plan.warm_template) {
        append(argv, {"--seccomp", std::to_string(k_policy_fd)});
    }
    append(argv, {"--"});
    for (auto& word : python_command(plan)) {
        argv.push_back(std::move(word));
    }
    return argv;
}

std::vector<std::string> nsjail_argv(const JailPlan& plan) {
    std::vector<std::string> argv = {plan.jail_path};
    // The config carries the namespaces and process settings; what follows it
    // overrides it and adds the per-run parts.
    append(argv, {"--config", "/proc/self/fd/" + std::to_string(k_policy_fd), "--log_fd",
                  std::to_string(k_jail_log_fd), "--user",
                  std::to_string(plan.uid) + ":" + std::to_string(plan.uid) + ":1", "--group",
                  std::to_string(plan.gid) + ":" + std::to_string(plan.gid) + ":1"});
    for (const auto& mount : plan.mounts) {
        switch (mount.kind) {
        case MountEntry::Kind::read_only:
            append(argv, {"--bindmount_ro", mount.source + ":" + mount.target});
            break;
        case MountEntry::Kind::device:
            append(argv, {"--bindmount", mount.source + ":" + mount.target});
            break;
        case MountEntry::Kind::symlink:
            append(argv, {"--symlink", mount.source + ":" + mount.target});
            break;
        }
    }
    append(argv, {"--mount", "none:/tmp:tmpfs:size=" + std::to_string(plan.limits.tmp_bytes), "--cwd", "/tmp"});
    for (const auto& entry : sandbox_environment()) {
        append(argv, {"--env", entry});
    }
    append(argv, {"--pass_fd", std::to_string(k_result_fd), "--pass_fd", std::to_string(k_script_fd)});
    if (plan.warm_template) {
        append(argv, {"--keep_caps", "--proc_rw"});
    } else {
        append(argv, {"--seccomp_string", plan.seccomp_kafel});
    }
    append(argv, {"--"});
    for (auto& word : python_command(plan)) {
        argv.push_back(std::move(word));
    }
    return argv;
}

}  // namespace

HostLayout read_host_layout() {
    auto is_link = [](const char* path) {
        struct stat info {};
        return lstat(path, &info) == 0 && S_ISLNK(info.st_mode);
    };
    auto exists = [](const char* path) { return access(path, F_OK) == 0; };
    HostLayout host;
    host.lib_is_link = is_link("/lib");
    host.lib64_exists = exists("/lib64");
    host.lib64_is_link = is_link("/lib64");
    host.bin_is_link = is_link("/bin");
    host.has_alternatives = exists("/etc/alternatives");
    host.has_ld_cache = exists("/etc/ld.so.cache");
    return host;
}

std::vector<MountEntry> default_mounts(const HostLayout& host) {
    using Kind = MountEntry::Kind;
    auto tree = [](bool is_link, const char* link_target, const char* path) {
        return is_link ? MountEntry{Kind::symlink, link_target, path} : MountEntry{Kind::read_only, path, path};
    };
    std::vector<MountEntry> mounts = {{Kind::read_only, "/usr", "/usr"}, tree(host.lib_is_link, "usr/lib", "/lib")};
    if (host.lib64_exists) {
        mounts.push_back(tree(host.lib64_is_link, "usr/lib64", "/lib64"));
    }
    mounts.push_back(tree(host.bin_is_link, "usr/bin", "/bin"));
    if (host.has_alternatives) {
        mounts.push_back({Kind::read_only, "/etc/alternatives", "/etc/alternatives"});
    }
    if (host.has_ld_cache) {
        mounts.push_back({Kind::read_only, "/etc/ld.so.cache", "/etc/ld.so.cache"});
    }
    for (const char* device : {"/dev/null", "/dev/zero", "/dev/urandom"}) {
        mounts.push_back({Kind::device, device, device});
    }
    // POSIX semaphores (multiprocessing) live in /dev/shm: point it at the
    // private /tmp so that /tmp stays the only writable place.
    mounts.push_back({Kind::symlink, "/tmp", "/dev/shm"});
    return mounts;
}

std::vector<std::string> sandbox_environment() {
    return {"PATH=/usr/local/bin:/usr/bin:/bin",
            "HOME=/tmp",
            "TMPDIR=/tmp",
            "LANG=C.UTF-8",
            "LC_ALL=C.UTF-8",
            "OPENBLAS_NUM_THREADS=1",
            "OMP_NUM_THREADS=1",
            "MKL_NUM_THREADS=1",
            // matplotlib: no display, and Debian's matplotlibrc (its copy
            // in /etc is not in the sandbox).
            "MPLBACKEND=Agg",
            "MATPLOTLIBRC=/usr/share/matplotlib/mpl-data/matplotlibrc"};
}

std::vector<std::string> jail_argv(const JailPlan& plan) {
    return plan.kind == JailKind::nsjail ? nsjail_argv(plan) : bwrap_argv(plan);
}

}  // namespace safepy

#include "cgroup.hpp"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <sched.h>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <dirent.h>
#include <fcntl.h>
#include <fstream>
#include <sstream>
#include <sys/stat.h>
#include <thread>
#include <ctime>
#include <unistd.h>

namespace safepy {
namespace {

std::atomic<std::uint64_t> g_run_counter{0};
constexpr std::uint64_t k_cpu_period_us = 100'000;

std::string read_text(const std::string& path) {
    std::ifstream in(path);
    std::stringstream buffer;
    buffer << in.rdbuf();
    return buffer.str();
}

bool write_text(const std::string& path, const std::string& text) {
    const int fd = open(path.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0) {
        return false;
    }
    const bool ok = write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
    const int saved = errno;
    close(fd);
    errno = saved;
    return ok;
}

std::uint64_t read_number(const std::string& path) {
    const std::string text = read_text(path);
    return text.empty() ? 0 : std::strtoull(text.c_str(), nullptr, 10);
}

// A number read from the start of an open file.
std::uint64_t read_number_at(int fd) {
    char text[32];
    const ssize_t got = pread(fd, text, sizeof text - 1, 0);
    if (got <= 0) {
        return 0;
    }
    text[got] = '\0';
    return std::strtoull(text, nullptr, 10);
}

// The value of `key` in a "key value" per-line file (memory.events, cpu.stat...).
std::uint64_t read_keyed(const std::string& path, const std::string& key) {
    std::istringstream in(read_text(path));
    std::string name;
    std::uint64_t value = 0;
    while (in >> name >> value) {
        if (name == key) {
            return value;
        }
    }
    return 0;
}

struct Mount {
    std::string point;
    std::string type;
    std::string super_options;
};

std::vector<Mount> cgroup_mounts() {
    std::vector<Mount> mounts;
    std::istringstream in(read_text("/proc/self/mountinfo"));
    std::string line;
    while (std::getline(in, line)) {
        // id parent major:minor root point options [optional...] - type source super
        std::istringstream fields(line);
        std::string id, parent, device, root, point, options, word;
        fields >> id >> parent >> device >> root >> point >> options;
        while (fields >> word && word != "-") {
        }
        Mount mount;
        mount.point = point;
        std::string source;
        fields >> mount.type >> source >> mount.super_options;
        if (mount.type == "cgroup" || mount.type == "cgroup2") {
            mounts.push_back(mount);
        }
    }
    return mounts;
}

std::string own_cgroup(const std::string& controller) {
    return cgroup_path_for(read_text("/proc/self/cgroup"), controller);
}

// Whether `word` is an item of `list`: items separated by `separator`, or by
// any whitespace when it is ' ' (cgroup.controllers ends with a newline).
bool has_word(const std::string& list, const std::string& word, char separator) {
    std::istringstream in(list);
    std::string item;
    if (separator == ' ') {
        while (in >> item) {
            if (item == word) {
                return true;
            }
        }
        return false;
    }
    while (std::getline(in, item, separator)) {
        if (item == word) {
            return true;
        }
    }
    return false;
}

bool make_dir(const std::string& path) {
    return mkdir(path.c_str(), 0755) == 0 || errno == EEXIST;
}

std::vector<pid_t> member_pids(const std::string& dir) {
    std::vector<pid_t> pids;
    std::istringstream in(read_text(dir + "/cgroup.procs"));
    pid_t pid = 0;
    while (in >> pid) {
        pids.push_back(pid);
    }
    return pids;
}

void kill_members(const std::string& dir, CgroupVersion version) {
    if (version == CgroupVersion::v2 && access((dir + "/cgroup.kill").c_str(), F_OK) == 0) {
        write_text(dir + "/cgroup.kill", "1");
    }
    // Repeat: a process may fork between reading the list and the kill; the
    // pids limit bounds how long that can go on.
    for (int round = 0; round < 200; ++round) {
        const auto pids = member_pids(dir);
        if (pids.empty()) {
            return;
        }
        for (pid_t pid : pids) {
            kill(pid, SIGKILL);
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(round < 10 ? 1 : 10));
    }
}

void remove_dir(const std::string& dir, CgroupVersion version) {
    for (int attempt = 0; attempt < 100; ++attempt) {
        if (rmdir(dir.c_str()) == 0 || errno == ENOENT) {
            return;
        }
        kill_members(dir, version);
        std::this_thread::sleep_for(std::chrono::milliseconds(attempt < 10 ? 1 : 10));
    }
}

// Runs are named run-<supervisor pid>-<counter>. A supervisor that was killed
// leaves its directories behind (its jails die with it: PR_SET_PDEATHSIG).
// Remove those that are empty and older than a minute. Never kill here: the
// owner pid may live in another PID namespace (another container sharing a
// v1 hierarchy), where it only looks dead.
void sweep_stale(const std::string& base) {
    DIR* dir = opendir(base.c_str());
    if (!dir) {
        return;
    }
    std::vector<std::string> stale;
    const time_t now = time(nullptr);
    while (dirent* entry = readdir(dir)) {
        const std::string name = entry->d_name;
        if (name.rfind("run-", 0) != 0) {
            continue;
        }
        const pid_t owner = static_cast<pid_t>(std::strtol(name.c_str() + 4, nullptr, 10));
        struct stat info {};
        const std::string path = base + "/" + name;
        if (owner > 0 && owner != getpid() && kill(owner, 0) != 0 && errno == ESRCH &&
            stat(path.c_str(), &info) == 0 && now - info.st_mtime > 60) {
            stale.push_back(path);
        }
    }
    closedir(dir);
    for (const auto& path : stale) {
        rmdir(path.c_str());  // EBUSY when processes are still in it: left alone
    }
}

std::string join_path(const std::string& mount, const std::string& path) {
    return path == "/" ? mount : mount + path;
}

std::string with_reason(const std::string& what, int error) {
    return what + ": " + std::strerror(error);
}

V2Observation observe_v2(const std::string& mount) {
    V2Observation observed;
    observed.self = getpid();
    const std::string own = own_cgroup("");
    observed.home_dir = join_path(mount, v2_home_path(own));
    // The root cgroup lacks the files that only non-root cgroups have.
    observed.home_is_root = access((observed.home_dir + "/cgroup.type").c_str(), F_OK) != 0;
    const auto own_pids = member_pids(join_path(mount, own));
    observed.self_listed = std::find(own_pids.begin(), own_pids.end(), observed.self) != own_pids.end();
    observed.writable = access((observed.home_dir + "/cgroup.procs").c_str(), W_OK) == 0 &&
                        access((observed.home_dir + "/cgroup.subtree_control").c_str(), W_OK) == 0;
    if (!observed.writable) {
        observed.not_writable_errno = errno;
    }
    observed.controllers = read_text(observed.home_dir + "/cgroup.controllers");
    observed.subtree_control = read_text(observed.home_dir + "/cgroup.subtree_control");
    observed.home_pids = member_pids(observed.home_dir);
    return observed;
}

// Carries out a plan; on failure `error` says which step failed and errno is kept.
bool apply_v2(const V2Plan& plan, std::string& error) {
    auto fail = [&error](const std::string& what) {
        const int saved = errno;
        error = with_reason(what, saved);
        errno = saved;
        return false;
    };
    if (!plan.server_leaf.empty()) {
        if (!make_dir(plan.server_leaf)) {
            return fail("cannot create " + plan.server_leaf);
        }
        // cgroup.procs moves the whole process, every thread.
        if (!write_text(plan.server_leaf + "/cgroup.procs", std::to_string(getpid()))) {
            return fail("cannot move safepy into " + plan.server_leaf);
        }
    }
    if (!plan.other_pids.empty()) {
        if (!make_dir(plan.other_leaf)) {
            return fail("cannot create " + plan.other_leaf);
        }
        for (pid_t pid : plan.other_pids) {
            if (!write_text(plan.other_leaf + "/cgroup.procs", std::to_string(pid)) && errno != ESRCH) {
                return fail("cannot move process " + std::to_string(pid) + " into " + plan.other_leaf);
            }
        }
    }
    if (!plan.enable.empty() && !write_text(plan.home_dir + "/cgroup.subtree_control", plan.enable)) {
        return fail("cannot enable " + plan.enable + " in " + plan.home_dir + "/cgroup.subtree_control");
    }
    if (!plan.optional_enable.empty()) {
        write_text(plan.home_dir + "/cgroup.subtree_control", plan.optional_enable);
    }
    if (!make_dir(plan.runs_dir)) {
        return fail("cannot create " + plan.runs_dir);
    }
    if (!write_text(plan.runs_dir + "/cgroup.subtree_control", plan.runs_enable)) {
        return fail("cannot enable " + plan.runs_enable + " in " + plan.runs_dir + "/cgroup.subtree_control");
    }
    if (!plan.runs_optional_enable.empty()) {
        write_text(plan.runs_dir + "/cgroup.subtree_control", plan.runs_optional_enable);
    }
    return true;
}

std::string describe_v2(const V2Plan& plan) {
    std::string text = "per-run cgroups in " + plan.runs_dir;
    if (plan.server_leaf.empty()) {
        return text + " (below the root cgroup)";
    }
    text += "; safepy moved itself to " + plan.server_leaf;
    if (!plan.other_pids.empty()) {
        std::string pids;
        for (pid_t pid : plan.other_pids) {
            pids += (pids.empty() ? "" : " ") + std::to_string(pid);
        }
        text += " and " + std::to_string(plan.other_pids.size()) + " other process(es) sharing " + plan.home_dir +
                " (pid " + pids + ") to " + plan.other_leaf;
    }
    return text + ", so that " + plan.home_dir +
           " holds no process and may give the memory and pids controllers to its children";
}

// Sets up per-run cgroups on v2; empty `runs_dir` with `reason` when it cannot.
std::string prepare_v2(const std::string& mount, std::string& reason) {
    // A process that shares the home may fork into it between our reading
    // cgroup.procs and enabling the controllers (EBUSY): look again.
    for (int attempt = 0; attempt < 5; ++attempt) {
        const V2Plan plan = plan_v2(observe_v2(mount));
        if (!plan.refusal.empty()) {
            reason = plan.refusal;
            return "";
        }
        std::string error;
        if (apply_v2(plan, error)) {
            reason = describe_v2(plan);
            return plan.runs_dir;
        }
        reason = "cgroup v2 set-up failed: " + error;
        if (errno != EBUSY) {
            break;
        }
    }
    return "";
}

std::string v1_base(const std::vector<Mount>& mounts, const std::string& controller, std::string& note) {
    for (const auto& mount : mounts) {
        if (mount.type != "cgroup" || !has_word(mount.super_options, controller, ',')) {
            continue;
        }
        // Prefer a place below our own cgroup (a container's delegated tree),
        // then the hierarchy's root.
        for (const std::string& parent : {mount.point + own_cgroup(controller), mount.point}) {
            const std::string base = (parent.back() == '/' ? parent : parent + "/") + "safepy";
            if (make_dir(base) && access(base.c_str(), W_OK) == 0) {
                return base;
            }
        }
        note = "cannot create a safepy cgroup for " + controller + " below " + mount.point;
        return "";
    }
    note = "no cgroup v1 " + controller + " hierarchy is mounted";
    return "";
}

// The mount point of the v2 hierarchy or of the v1 hierarchy holding `controller`.
std::string hierarchy_mount(const std::vector<Mount>& mounts, const std::string& controller) {
    for (const auto& mount : mounts) {
        if (controller.empty() ? mount.type == "cgroup2" && mount.point == "/sys/fs/cgroup"
                               : mount.type == "cgroup" && has_word(mount.super_options, controller, ',')) {
            return mount.point;
        }
    }
    return "";
}

// `own` and each of its ancestors below `mount`, innermost first.
std::vector<std::string> cgroup_chain(const std::string& mount, std::string own) {
    std::vector<std::string> chain;
    for (;;) {
        chain.push_back(mount + (own == "/" ? "" : own));
        if (own == "/" || own.empty()) {
            return chain;
        }
        const auto slash = own.rfind('/');
        own = slash == 0 ? "/" : own.substr(0, slash);
    }
}

// A /proc/meminfo value in bytes ("MemAvailable:   21451060 kB").
std::uint64_t meminfo_bytes(const std::string& key) {
    std::istringstream in(read_text("/proc/meminfo"));
    std::string line;
    while (std::getline(in, line)) {
        if (line.rfind(key + ":", 0) == 0) {
            return std::strtoull(line.c_str() + key.size() + 1, nullptr, 10) * 1024;
        }
    }
    return 0;
}

bool host_has_swap() {
    return meminfo_bytes("SwapTotal") > 0;
}

}  // namespace

HostResources read_host_resources() {
    HostResources host;
    cpu_set_t set;
    CPU_ZERO(&set);
    host.cpus = sched_getaffinity(0, sizeof set, &set) == 0 ? static_cast<std::uint32_t>(CPU_COUNT(&set)) : 1;
    host.cpus_source = "sched_getaffinity";
    const std::uint64_t total = meminfo_bytes("MemTotal");
    host.memory_bytes = meminfo_bytes("MemAvailable");
    host.memory_source = "MemAvailable of the host";
    const auto mounts = cgroup_mounts();
    auto take_memory = [&](std::uint64_t limit, const std::string& file) {
        if (limit > 0 && limit < total && limit < host.memory_bytes) {
            host.memory_bytes = limit;
            host.memory_source = "cgroup limit " + file;
        }
    };
    auto take_cpus = [&](long long quota, long long period, const std::string& file) {
        if (quota > 0 && period > 0) {
            const auto cpus = static_cast<std::uint32_t>(std::max<long long>(1, (quota + period - 1) / period));
            if (cpus < host.cpus) {
                host.cpus = cpus;
                host.cpus_source = "cgroup quota " + file;
            }
        }
    };
    if (const std::string v2 = hierarchy_mount(mounts, ""); !v2.empty() && hierarchy_mount(mounts, "memory").empty()) {
        for (const auto& dir : cgroup_chain(v2, own_cgroup(""))) {
            const std::string memory = read_text(dir + "/memory.max");
            if (!memory.empty() && memory.rfind("max", 0) != 0) {
                take_memory(std::strtoull(memory.c_str(), nullptr, 10), dir + "/memory.max");
            }
            long long quota = 0, period = 0;
            if (std::sscanf(read_text(dir + "/cpu.max").c_str(), "%lld %lld", &quota, &period) == 2) {
                take_cpus(quota, period, dir + "/cpu.max");
            }
        }
        return host;
    }
    if (const std::string memory = hierarchy_mount(mounts, "memory"); !memory.empty()) {
        for (const auto& dir : cgroup_chain(memory, own_cgroup("memory"))) {
            take_memory(read_number(dir + "/memory.limit_in_bytes"), dir + "/memory.limit_in_bytes");
        }
    }
    if (const std::string cpu = hierarchy_mount(mounts, "cpu"); !cpu.empty()) {
        for (const auto& dir : cgroup_chain(cpu, own_cgroup("cpu"))) {
            const std::string quota = read_text(dir + "/cpu.cfs_quota_us");
            take_cpus(std::strtoll(quota.c_str(), nullptr, 10),
                      static_cast<long long>(read_number(dir + "/cpu.cfs_period_us")), dir + "/cpu.cfs_quota_us");
        }
    }
    return host;
}

std::string Cgroups::swap_note() const {
    if (m_version == CgroupVersion::none || !host_has_swap()) {
        return "";
    }
    const std::string file = m_version == CgroupVersion::v2 ? "memory.swap.max" : "memory.memsw.limit_in_bytes";
    if (access((m_bases[0] + "/" + file).c_str(), F_OK) == 0) {
        return "";
    }
    return "the host has swap but the kernel does not account it per cgroup (no " + file +
           "): a run's memory limit does not cover swap";
}

std::string cgroup_path_for(std::string_view proc_self_cgroup, std::string_view controller) {
    std::istringstream in{std::string(proc_self_cgroup)};
    std::string line;
    while (std::getline(in, line)) {
        // hierarchy-id:controller-list:path
        const auto first = line.find(':');
        const auto second = line.find(':', first == std::string::npos ? first : first + 1);
        if (first == std::string::npos || second == std::string::npos) {
            continue;
        }
        const std::string controllers = line.substr(first + 1, second - first - 1);
        bool match = controller.empty() && controllers.empty() && line.substr(0, first) == "0";
        std::istringstream names(controllers);
        std::string name;
        while (!match && !controller.empty() && std::getline(names, name, ',')) {
            match = name == controller;
        }
        if (match) {
            const std::string path = line.substr(second + 1);
            return path.empty() || path[0] != '/' ? "/" : path;
        }
    }
    return "/";
}

std::string v2_home_path(const std::string& own_path) {
    const auto slash = own_path.rfind('/');
    if (slash == std::string::npos) {
        return own_path;
    }
    const std::string name = own_path.substr(slash + 1);
    if (name == k_v2_server_leaf || name == k_v2_other_leaf) {
        return slash == 0 ? "/" : own_path.substr(0, slash);
    }
    return own_path;
}

V2Plan plan_v2(const V2Observation& observed) {
    V2Plan plan;
    const std::string& home = observed.home_dir;
    plan.home_dir = home;
    if (!observed.self_listed) {
        plan.refusal = "cgroup v2 at /sys/fs/cgroup does not list this process in its own cgroup (" + home +
                       "): the mount is not this process's cgroup namespace's view";
        return plan;
    }
    for (const char* controller : {"memory", "pids"}) {
        if (!has_word(observed.controllers, controller, ' ')) {
            plan.refusal = "cgroup v2 at " + home + " has no " + controller +
                           " controller: its parent does not delegate it (systemd: Delegate=yes; a container "
                           "runtime: a private cgroup namespace with the controllers enabled above it)";
            return plan;
        }
    }
    if (!observed.writable) {
        plan.refusal = "cgroup v2 at " + home + " is not writable by safepy (" +
                       std::strerror(observed.not_writable_errno) +
                       (observed.not_writable_errno == EROFS ? ": /sys/fs/cgroup is mounted read-only" : "") +
                       "): per-run cgroups need a cgroup delegated to safepy";
        return plan;
    }
    const bool cpu = has_word(observed.controllers, "cpu", ' ');
    for (const char* controller : {"memory", "pids"}) {
        if (!has_word(observed.subtree_control, controller, ' ')) {
            plan.enable += std::string(plan.enable.empty() ? "" : " ") + "+" + controller;
        }
    }
    if (cpu && !has_word(observed.subtree_control, "cpu", ' ')) {
        plan.optional_enable = "+cpu";
    }
    plan.runs_dir = home + "/" + std::string(k_v2_runs);
    plan.runs_enable = "+memory +pids";
    plan.runs_optional_enable = cpu ? "+cpu" : "";
    if (observed.home_is_root) {
        return plan;  // the root cgroup may hold processes and still give controllers away
    }
    plan.server_leaf = home + "/" + std::string(k_v2_server_leaf);
    for (pid_t pid : observed.home_pids) {
        if (pid == observed.self) {
            continue;
        }
        if (pid == 0) {
            // Listed as 0: a process outside our PID namespace, which we can neither name nor move.
            plan = V2Plan{};
            plan.home_dir = home;
            plan.refusal = "cgroup v2 at " + home +
                           " also holds processes outside safepy's PID namespace, which it cannot move out of the "
                           "way: start safepy in a cgroup of its own";
            return plan;
        }
        plan.other_pids.push_back(pid);
    }
    if (!plan.other_pids.empty()) {
        plan.other_leaf = home + "/" + std::string(k_v2_other_leaf);
    }
    return plan;
}

RunCgroup::~RunCgroup() {
    for (int fd : m_join_fds) {
        close(fd);
    }
    if (m_peak_fd >= 0) {
        close(m_peak_fd);
    }
    for (const auto& dir : m_dirs) {
        kill_members(dir, m_version);
        remove_dir(dir, m_version);
    }
}

std::uint64_t RunCgroup::cpu_microseconds() const {
    if (m_version == CgroupVersion::v2) {
        const std::uint64_t used = read_keyed(m_dirs[0] + "/cpu.stat", "usage_usec");
        return used > m_cpu_base_us ? used - m_cpu_base_us : 0;
    }
    if (m_version == CgroupVersion::v1 && m_cpuacct >= 0) {
        return read_number(m_dirs[static_cast<std::size_t>(m_cpuacct)] + "/cpuacct.usage") / 1000;
    }
    return 0;
}

bool RunCgroup::set_limits(const Limits& limits, std::string& error) const {
    if (m_version == CgroupVersion::none) {
        return true;
    }
    const std::string memory = std::to_string(limits.memory_bytes);
    const std::string pids = std::to_string(limits.processes);
    bool ok = true;
    // Where the kernel accounts swap, a run may not use it: a swap write that
    // fails fails the run rather than leave the memory limit weaker than asked.
    if (m_version == CgroupVersion::v2) {
        const auto& dir = m_dirs[0];
        const std::string swap = dir + "/memory.swap.max";
        ok = write_text(dir + "/memory.max", memory) && write_text(dir + "/pids.max", pids) &&
             (access(swap.c_str(), F_OK) != 0 || write_text(swap, "0"));
    } else {
        const auto& memory_dir = m_dirs[0];
        const std::string memsw = memory_dir + "/memory.memsw.limit_in_bytes";
        const bool has_memsw = access(memsw.c_str(), F_OK) == 0;
        // memsw must stay >= the memory limit: raise it first when growing
        // (this first write fails when shrinking; the last one must not).
        if (has_memsw) {
            write_text(memsw, memory);
        }
        ok = write_text(memory_dir + "/memory.limit_in_bytes", memory) &&
             write_text(m_dirs[1] + "/pids.max", pids) && (!has_memsw || write_text(memsw, memory));
    }
    if (!ok) {
        error = "cannot set the limits of cgroup " + m_dirs[0] + ": " + std::strerror(errno);
        return false;
    }
    // Every run's cgroup has the same weight, so a run with many processes
    // gets no more CPU than one with a single process; the quota caps it at
    // cpu_cores CPUs.
    if (m_cpu >= 0) {
        const auto& dir = m_dirs[static_cast<std::size_t>(m_cpu)];
        const std::string quota = std::to_string(static_cast<std::uint64_t>(limits.cpu_cores) * k_cpu_period_us);
        ok = m_version == CgroupVersion::v2
                 ? write_text(dir + "/cpu.weight", "100") &&
                       write_text(dir + "/cpu.max", quota + " " + std::to_string(k_cpu_period_us))
                 : write_text(dir + "/cpu.shares", "1024") &&
                       write_text(dir + "/cpu.cfs_period_us", std::to_string(k_cpu_period_us)) &&
                       write_text(dir + "/cpu.cfs_quota_us", quota);
        if (!ok) {
            error = "cannot set the CPU share and quota of cgroup " + dir + ": " + std::strerror(errno);
        }
    }
    return ok;
}

bool RunCgroup::join(pid_t pid) const {
    const std::string text = std::to_string(pid);
    for (int fd : m_join_fds) {
        if (write(fd, text.data(), text.size()) != static_cast<ssize_t>(text.size())) {
            return false;
        }
    }
    return true;
}

CgroupUsage RunCgroup::usage() const {
    CgroupUsage usage;
    std::uint64_t oom_kills = 0;
    if (m_version == CgroupVersion::v2) {
        oom_kills = read_keyed(m_dirs[0] + "/memory.events", "oom_kill");
        usage.peak_memory_bytes = m_peak_fd >= 0 ? read_number_at(m_peak_fd) : read_number(m_dirs[0] + "/memory.peak");
        usage.has_cpu = true;
    } else if (m_version == CgroupVersion::v1) {
        oom_kills = read_keyed(m_dirs[0] + "/memory.oom_control", "oom_kill");
        usage.peak_memory_bytes = read_number(m_dirs[0] + "/memory.max_usage_in_bytes");
        usage.has_cpu = m_cpuacct >= 0;
    }
    usage.oom_kills = oom_kills > m_oom_kills_base ? oom_kills - m_oom_kills_base : 0;
    usage.cpu_microseconds = cpu_microseconds();
    return usage;
}

bool RunCgroup::recycle(std::string& why) {
    if (m_version == CgroupVersion::none) {
        return true;
    }
    for (const auto& dir : m_dirs) {
        if (!member_pids(dir).empty()) {
            why = dir + " still holds processes";
            return false;
        }
    }
    const std::string& memory_dir = m_dirs[0];
    const std::string& pids_dir = m_version == CgroupVersion::v2 ? m_dirs[0] : m_dirs[1];
    if (read_number(pids_dir + "/pids.current") != 0) {
        why = pids_dir + " still counts processes";
        return false;
    }
    const std::string current = memory_dir + (m_version == CgroupVersion::v2 ? "/memory.current" : "/memory.usage_in_bytes");
    if (const std::uint64_t held = read_number(current); held > k_recycle_memory_bytes) {
        why = memory_dir + " still holds " + std::to_string(held) + " bytes";
        return false;
    }
    if (m_version == CgroupVersion::v1) {
        // Writing 0 resets the peak to the usage now, and the CPU time to 0.
        if (!write_text(memory_dir + "/memory.max_usage_in_bytes", "0") ||
            (m_cpuacct >= 0 && !write_text(m_dirs[static_cast<std::size_t>(m_cpuacct)] + "/cpuacct.usage", "0"))) {
            why = "cannot reset the counters of " + memory_dir + ": " + std::strerror(errno);
            return false;
        }
        m_oom_kills_base = read_keyed(memory_dir + "/memory.oom_control", "oom_kill");
        return true;
    }
    // v2 (Linux 6.12 and later): a write to memory.peak resets it for reads
    // through the same descriptor. Without that, a new cgroup is the only
    // way to a peak of this run alone.
    if (m_peak_fd < 0) {
        m_peak_fd = open((memory_dir + "/memory.peak").c_str(), O_RDWR | O_CLOEXEC);
    }
    if (m_peak_fd < 0 || write(m_peak_fd, "reset\n", 6) != 6) {
        why = "this kernel cannot reset " + memory_dir + "/memory.peak";
        return false;
    }
    m_oom_kills_base = read_keyed(memory_dir + "/memory.events", "oom_kill");
    m_cpu_base_us = read_keyed(memory_dir + "/cpu.stat", "usage_usec");
    return true;
}

void RunCgroup::kill_all() const {
    for (const auto& dir : m_dirs) {
        kill_members(dir, m_version);
    }
}

Cgroups Cgroups::detect() {
    Cgroups cgroups;
    const auto mounts = cgroup_mounts();
    std::string v2_reason;
    bool has_v1 = false;
    for (const auto& mount : mounts) {
        has_v1 = has_v1 || mount.type == "cgroup";
        if (mount.type == "cgroup2" && mount.point == "/sys/fs/cgroup" && v2_reason.empty()) {
            const std::string runs = prepare_v2(mount.point, v2_reason);
            if (!runs.empty()) {
                cgroups.m_version = CgroupVersion::v2;
                cgroups.m_bases = {runs};
                cgroups.m_reason = v2_reason;
                if (has_word(read_text(runs + "/cgroup.subtree_control"), "cpu", ' ')) {
                    cgroups.m_cpu = 0;
                }
                sweep_stale(runs);
                cgroups.weigh_base();
                // memory.peak takes writes (a reset) from Linux 6.12 on.
                const int peak = open((runs + "/memory.peak").c_str(), O_RDWR | O_CLOEXEC);
                cgroups.m_recyclable = peak >= 0;
                if (peak >= 0) {
                    close(peak);
                }
                return cgroups;
            }
        }
    }
    if (!has_v1) {
        cgroups.m_reason = v2_reason.empty() ? "no cgroup hierarchy is mounted at /sys/fs/cgroup" : v2_reason;
        return cgroups;
    }
    std::string memory_note, pids_note, cpu_note;
    const std::string memory = v1_base(mounts, "memory", memory_note);
    const std::string pids = v1_base(mounts, "pids", pids_note);
    if (memory.empty() || pids.empty()) {
        cgroups.m_reason = (v2_reason.empty() ? "" : v2_reason + "; ") + (memory.empty() ? memory_note : pids_note);
        return cgroups;
    }
    cgroups.m_version = CgroupVersion::v1;
    cgroups.m_bases = {memory, pids};
    if (const std::string cpuacct = v1_base(mounts, "cpuacct", cpu_note); !cpuacct.empty()) {
        cgroups.m_cpuacct = static_cast<int>(cgroups.m_bases.size());
        cgroups.m_bases.push_back(cpuacct);
    }
    if (const std::string cpu = v1_base(mounts, "cpu", cpu_note); !cpu.empty()) {
        // Often one hierarchy holds both (cpu,cpuacct): one directory then.
        const auto same = std::find(cgroups.m_bases.begin(), cgroups.m_bases.end(), cpu);
        cgroups.m_cpu = static_cast<int>(same - cgroups.m_bases.begin());
        if (same == cgroups.m_bases.end()) {
            cgroups.m_bases.push_back(cpu);
        }
    }
    cgroups.m_reason = "per-run cgroups in";
    for (const auto& base : cgroups.m_bases) {
        cgroups.m_reason += (&base == &cgroups.m_bases.front() ? " " : ", ") + base;
        sweep_stale(base);
    }
    cgroups.weigh_base();
    cgroups.m_recyclable = true;
    return cgroups;
}

Cgroups Cgroups::rlimits_only(std::string reason) {
    Cgroups cgroups;
    cgroups.m_reason = std::move(reason);
    return cgroups;
}

std::string Cgroups::name() const {
    switch (m_version) {
    case CgroupVersion::v2:
        return "cgroup-v2";
    case CgroupVersion::v1:
        return "cgroup-v1";
    case CgroupVersion::none:
        break;
    }
    return "rlimits-only";
}

void Cgroups::weigh_base() const {
    if (m_cpu < 0) {
        return;
    }
    // Against the host's other processes, the runs together weigh as much as
    // one busy process per CPU (a lone cgroup weighs as one process).
    cpu_set_t set;
    CPU_ZERO(&set);
    const int cpus = sched_getaffinity(0, sizeof set, &set) == 0 ? std::max(CPU_COUNT(&set), 1) : 1;
    const std::string& base = m_bases[static_cast<std::size_t>(m_cpu)];
    if (m_version == CgroupVersion::v2) {
        write_text(base + "/cpu.weight", std::to_string(std::min(100 * cpus, 10000)));
    } else {
        write_text(base + "/cpu.shares", std::to_string(1024 * cpus));
    }
}

std::string Cgroups::cpu_mode() const {
    if (m_cpu < 0) {
        return m_version == CgroupVersion::none ? "no CPU share or quota (no cgroup): CPU time is limited per process"
                                                : "no CPU share or quota: the cpu controller is not available";
    }
    return m_version == CgroupVersion::v2 ? "per-run cgroup: equal cpu.weight 100, quota cpu.max = cpu_cores CPUs"
                                          : "per-run cgroup: equal cpu.shares 1024, quota cpu.cfs_quota_us = cpu_cores CPUs";
}

std::string Cgroups::path() const {
    return m_bases.empty() ? "" : m_bases.front();
}

std::unique_ptr<RunCgroup> Cgroups::create(const Limits& limits, std::string& error) const {
    std::unique_ptr<RunCgroup> run(new RunCgroup());
    run->m_version = m_version;
    run->m_cpuacct = m_cpuacct;
    run->m_cpu = m_cpu;
    if (m_version == CgroupVersion::none) {
        return run;
    }
    const std::string name = "run-" + std::to_string(getpid()) + "-" + std::to_string(++g_run_counter);
    for (const auto& base : m_bases) {
        const std::string dir = base + "/" + name;
        if (mkdir(dir.c_str(), 0755) != 0) {
            error = "cannot create cgroup " + dir + ": " + std::strerror(errno);
            return nullptr;  // the destructor removes the ones already made
        }
        run->m_dirs.push_back(dir);
    }
    if (!run->set_limits(limits, error)) {
        return nullptr;
    }
    for (const auto& dir : run->m_dirs) {
        const int fd = open((dir + "/cgroup.procs").c_str(), O_WRONLY | O_CLOEXEC);
        if (fd < 0) {
            error = "cannot open " + dir + "/cgroup.procs: " + std::strerror(errno);
            return nullptr;
        }
        run->m_join_fds.push_back(fd);
    }
    return run;
}

}  // namespace safepy

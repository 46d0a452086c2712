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
    close(fd);
    return ok;
}

std::uint64_t read_number(const std::string& path) {
    const std::string text = read_text(path);
    return text.empty() ? 0 : std::strtoull(text.c_str(), nullptr, 10);
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

// This process's cgroup path for a v1 controller, or for v2 with "".
std::string own_cgroup(const std::string& controller) {
    std::istringstream in(read_text("/proc/self/cgroup"));
    std::string line;
    while (std::getline(in, line)) {
        const auto first = line.find(':');
        const auto second = line.find(':', first + 1);
        if (first == std::string::npos || second == std::string::npos) {
            continue;
        }
        const std::string controllers = line.substr(first + 1, second - first - 1);
        std::istringstream names(controllers);
        std::string name;
        bool match = controller.empty() && controllers.empty();
        while (!match && std::getline(names, name, ',')) {
            match = name == controller;
        }
        if (match) {
            return line.substr(second + 1);
        }
    }
    return "/";
}

bool has_word(const std::string& list, const std::string& word, char separator) {
    std::istringstream in(list);
    std::string item;
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

// v2: the memory and pids controllers must be enabled for our children. A
// cgroup with processes cannot delegate controllers, so if ours has any we
// first move this process into a leaf of its own.
bool prepare_v2(const std::string& mount, std::string& base, std::string& note) {
    const std::string own = mount + own_cgroup("");
    const std::string available = read_text(own + "/cgroup.controllers");
    if (!has_word(available, "memory", ' ') && available.find("memory") == std::string::npos) {
        note = "cgroup v2 at " + own + " has no memory controller";
        return false;
    }
    if (available.find("pids") == std::string::npos) {
        note = "cgroup v2 at " + own + " has no pids controller";
        return false;
    }
    const std::string enable = has_word(available, "cpu", ' ') ? "+memory +pids +cpu" : "+memory +pids";
    base = own + "/safepy";
    if (!make_dir(base)) {
        note = "cannot create " + base + ": " + std::strerror(errno);
        return false;
    }
    if (!write_text(own + "/cgroup.subtree_control", enable)) {
        const std::string leaf = own + "/safepy-supervisor";
        if (!make_dir(leaf) || !write_text(leaf + "/cgroup.procs", std::to_string(getpid())) ||
            !write_text(own + "/cgroup.subtree_control", enable)) {
            note = "cannot enable memory and pids controllers in " + own;
            return false;
        }
    }
    if (!write_text(base + "/cgroup.subtree_control", enable)) {
        note = "cannot enable memory and pids controllers in " + base;
        return false;
    }
    return true;
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

RunCgroup::~RunCgroup() {
    for (int fd : m_join_fds) {
        close(fd);
    }
    for (const auto& dir : m_dirs) {
        kill_members(dir, m_version);
        remove_dir(dir, m_version);
    }
}

std::uint64_t RunCgroup::cpu_microseconds() const {
    if (m_version == CgroupVersion::v2) {
        return read_keyed(m_dirs[0] + "/cpu.stat", "usage_usec");
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
    if (m_version == CgroupVersion::v2) {
        usage.oom_kills = read_keyed(m_dirs[0] + "/memory.events", "oom_kill");
        usage.peak_memory_bytes = read_number(m_dirs[0] + "/memory.peak");
        usage.has_cpu = true;
    } else if (m_version == CgroupVersion::v1) {
        usage.oom_kills = read_keyed(m_dirs[0] + "/memory.oom_control", "oom_kill");
        usage.peak_memory_bytes = read_number(m_dirs[0] + "/memory.max_usage_in_bytes");
        usage.has_cpu = m_cpuacct >= 0;
    }
    usage.cpu_microseconds = cpu_microseconds();
    return usage;
}

void RunCgroup::kill_all() const {
    for (const auto& dir : m_dirs) {
        kill_members(dir, m_version);
    }
}

Cgroups Cgroups::detect(std::string& note) {
    Cgroups cgroups;
    const auto mounts = cgroup_mounts();
    for (const auto& mount : mounts) {
        std::string base;
        if (mount.type == "cgroup2" && mount.point == "/sys/fs/cgroup" && prepare_v2(mount.point, base, note)) {
            cgroups.m_version = CgroupVersion::v2;
            cgroups.m_bases = {base};
            if (has_word(read_text(base + "/cgroup.subtree_control"), "cpu", ' ')) {
                cgroups.m_cpu = 0;
            }
            sweep_stale(base);
            cgroups.weigh_base();
            return cgroups;
        }
    }
    std::string memory_note, pids_note, cpu_note;
    const std::string memory = v1_base(mounts, "memory", memory_note);
    const std::string pids = v1_base(mounts, "pids", pids_note);
    if (memory.empty() || pids.empty()) {
        note = (note.empty() ? "" : note + "; ") + (memory.empty() ? memory_note : pids_note) +
               ": memory and processes are limited with rlimits only";
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
    for (const auto& base : cgroups.m_bases) {
        sweep_stale(base);
    }
    cgroups.weigh_base();
    note.clear();
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

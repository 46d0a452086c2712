#include "cgroup.hpp"

#include <atomic>
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
    base = own + "/safepy";
    if (!make_dir(base)) {
        note = "cannot create " + base + ": " + std::strerror(errno);
        return false;
    }
    if (!write_text(own + "/cgroup.subtree_control", "+memory +pids")) {
        const std::string leaf = own + "/safepy-supervisor";
        if (!make_dir(leaf) || !write_text(leaf + "/cgroup.procs", std::to_string(getpid())) ||
            !write_text(own + "/cgroup.subtree_control", "+memory +pids")) {
            note = "cannot enable memory and pids controllers in " + own;
            return false;
        }
    }
    if (!write_text(base + "/cgroup.subtree_control", "+memory +pids")) {
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

bool host_has_swap() {
    return read_keyed("/proc/meminfo", "SwapTotal:") > 0;
}

}  // namespace

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
    if (m_version == CgroupVersion::v1 && m_dirs.size() > 2) {
        return read_number(m_dirs[2] + "/cpuacct.usage") / 1000;
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
        usage.has_cpu = m_dirs.size() > 2;
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
            sweep_stale(base);
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
    if (const std::string cpu = v1_base(mounts, "cpuacct", cpu_note); !cpu.empty()) {
        cgroups.m_bases.push_back(cpu);
    }
    for (const auto& base : cgroups.m_bases) {
        sweep_stale(base);
    }
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

std::string Cgroups::path() const {
    return m_bases.empty() ? "" : m_bases.front();
}

std::unique_ptr<RunCgroup> Cgroups::create(const Limits& limits, std::string& error) const {
    std::unique_ptr<RunCgroup> run(new RunCgroup());
    run->m_version = m_version;
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

#include "safepy/safepy.hpp"

#include "cgroup.hpp"
#include "classify.hpp"
#include "embedded.hpp"
#include "envelope.hpp"
#include "jail_command.hpp"
#include "job.hpp"
#include "seccomp_policy.hpp"
#include "spawn.hpp"
#include "uid_pool.hpp"
#include "warm_pool.hpp"

#include <atomic>
#include <cctype>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <sys/stat.h>
#include <unistd.h>

namespace safepy {

struct Sandbox::Impl {
    Config config;
    JailKind jail = JailKind::bwrap;
    std::string jail_path;
    std::vector<MountEntry> mounts;
    Cgroups cgroups;
    std::string policy;  // bwrap: seccomp BPF; nsjail: config text
    std::string kafel;
    std::string bpf;  // the seccomp allow-list as BPF: bwrap's --seccomp, and warm children install it themselves
    std::vector<std::string> notes;
    HostResources host;
    std::unique_ptr<UidPool> uids;  // when started as root
    std::unique_ptr<WarmPool> pool;
    mutable CancelBoard cancels;  // the runs in progress

    ~Impl() { pool.reset(); }  // before the cgroups it uses
};

namespace {

bool is_executable(const std::string& path) {
    struct stat info {};
    return !path.empty() && stat(path.c_str(), &info) == 0 && S_ISREG(info.st_mode) && access(path.c_str(), X_OK) == 0;
}

std::string find_program(const std::string& name, std::initializer_list<const char*> extra) {
    const char* path = std::getenv("PATH");
    std::istringstream dirs(path ? path : "/usr/local/bin:/usr/bin:/bin");
    std::string dir;
    while (std::getline(dirs, dir, ':')) {
        if (!dir.empty() && dir[0] == '/' && is_executable(dir + "/" + name)) {
            return dir + "/" + name;
        }
    }
    for (const char* candidate : extra) {
        if (is_executable(candidate)) {
            return candidate;
        }
    }
    return "";
}

std::optional<std::string> read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        return std::nullopt;
    }
    std::stringstream buffer;
    buffer << in.rdbuf();
    return buffer.str();
}

bool has_kill_capability() {
    std::ifstream status("/proc/self/status");
    std::string line;
    while (std::getline(status, line)) {
        if (line.rfind("CapEff:", 0) == 0) {
            const unsigned long long effective = std::strtoull(line.c_str() + 7, nullptr, 16);
            return (effective >> 5) & 1;  // CAP_KILL
        }
    }
    return false;
}

// A dotted Python name of ASCII identifiers ("matplotlib.pyplot").
bool is_module_name(const std::string& name) {
    bool start = true;
    for (const char c : name) {
        const bool letter = std::isalpha(static_cast<unsigned char>(c)) || c == '_';
        if (c == '.' ? start : !(letter || (!start && std::isdigit(static_cast<unsigned char>(c))))) {
            return false;
        }
        start = c == '.';
    }
    return !start && name.size() <= 200;
}

// Checks that need no process: the request is rejected before anything runs.
std::optional<std::string> check_request(const Request& request, const Config& config) {
    if (request.script.size() > config.max_script_bytes) {
        return "Script is " + std::to_string(request.script.size()) + " bytes; the limit is " +
               std::to_string(config.max_script_bytes);
    }
    if (request.script.find('\0') != std::string::npos) {
        return "Script contains a NUL byte";
    }
    if (auto error = check_limits(request.limits, config.maxima)) {
        return "Invalid limits: " + *error;
    }
    return check_inputs(request, config.max_script_bytes);
}

Outcome rejected(Status status, std::string error, std::string detail = "") {
    Outcome outcome;
    outcome.status = status;
    outcome.error = std::move(error);
    outcome.detail = std::move(detail);
    return outcome;
}

JailPlan base_plan(const Sandbox::Impl& impl) {
    JailPlan plan;
    plan.kind = impl.jail;
    plan.jail_path = impl.jail_path;
    plan.python_path = impl.config.python_path;
    // Not root: every run is this user (no other uid can be had). As root each
    // run gets its own uid from the pool (see run() and the warm templates).
    plan.uid = geteuid();
    plan.gid = getegid();
    plan.mounts = impl.mounts;
    plan.seccomp_kafel = impl.kafel;
    plan.runner_source = std::string(embedded_runner());
    return plan;
}

SpawnSpec base_spawn(const Sandbox::Impl& impl, const JailPlan& plan) {
    SpawnSpec spec;
    spec.argv = jail_argv(plan);
    spec.environment = {"PATH=/usr/bin:/bin"};
    spec.policy = impl.policy;
    spec.jail_log = impl.jail == JailKind::nsjail;
    spec.limits = plan.limits;
    spec.rlimit_memory = impl.cgroups.version() == CgroupVersion::none;
    spec.drop_privileges = geteuid() == 0;
    spec.uid = plan.uid;
    spec.gid = plan.gid;
    return spec;
}

WarmSettings warm_settings(const Sandbox::Impl& impl) {
    WarmSettings settings;
    JailPlan plan = base_plan(impl);
    plan.warm_template = true;
    plan.preload = impl.config.warm_preload;
    plan.runner_source = "_SAFEPY_TEMPLATE = True\n" + plan.runner_source + "\n" + std::string(embedded_template());
    // The template's hard limits bound every child's: the operator's maxima.
    plan.limits = impl.config.maxima;
    plan.limits.tmp_bytes = impl.config.defaults.tmp_bytes;
    settings.template_spawn = base_spawn(impl, plan);
    // The containment library and the children's filter, on the template's script descriptor.
    settings.template_spawn.script = template_payload(embedded_contain_library(), impl.bpf);
    settings.template_spawn.rlimit_memory = false;
    settings.template_spawn.unlimited_cpu = true;
    settings.template_argv = [plan](std::uint32_t uid) {
        JailPlan own = plan;
        own.uid = own.gid = uid;
        return jail_argv(own);
    };
    settings.uids = impl.uids.get();
    settings.templates = impl.config.concurrency;
    settings.cgroups = impl.cgroups.version() == CgroupVersion::none ? nullptr : &impl.cgroups;
    settings.pool_size = impl.config.warm_pool_size;
    settings.defaults = impl.config.defaults;
    return settings;
}

// Turns what a run left behind into its outcome.
Outcome conclude(const Sandbox::Impl& impl, const Request& request, const SpawnResult& spawned,
                 const CgroupUsage& usage) {
    Evidence evidence;
    evidence.spawn_error = spawned.spawn_error;
    // Only the first cause the supervisor saw: what followed it (a killed
    // flood's overflow, a timeout's exit) is its consequence.
    evidence.cancelled = spawned.cause == Cause::cancelled;
    evidence.stdout_over = spawned.cause == Cause::stdout_limit;
    evidence.stderr_over = spawned.cause == Cause::stderr_limit;
    evidence.result_over = spawned.cause == Cause::result_limit;
    evidence.wall_timeout = spawned.cause == Cause::wall_timeout;
    evidence.cpu_timeout = spawned.cause == Cause::cpu_timeout;
    if (spawned.cause == Cause::lost && evidence.spawn_error.empty()) {
        evidence.spawn_error = "the supervisor lost track of the run";
    }
    evidence.oom_kills = usage.oom_kills;
    evidence.wait_status = spawned.wait_status;
    evidence.cpu = usage.has_cpu ? std::chrono::milliseconds(usage.cpu_microseconds / 1000) : spawned.cpu;
    evidence.report = parse_runner_report(spawned.result_bytes, request.mode);
    // The caps on /tmp/out, counted on what arrived, whatever the runner said.
    evidence.files_over = evidence.report.files.size() + evidence.report.skipped_files.size() > request.limits.output_files ||
                          evidence.report.file_bytes > request.limits.output_files_bytes;
    if (evidence.report.kind && *evidence.report.kind == "ok") {
        if (evidence.report.body.size() > request.limits.result_bytes) {
            evidence.result_over = true;
        } else {
            evidence.result_error = validate_result_json(evidence.report.body);
        }
    }
    evidence.limits = request.limits;
    evidence.jail = std::string(jail_name(impl.jail));
    // Before the script starts, stderr holds only the jail's own messages.
    evidence.jail_log = spawned.jail_log + (evidence.report.started ? "" : spawned.stderr_bytes);
    const Verdict verdict = classify(evidence);

    Outcome outcome;
    outcome.status = verdict.status;
    outcome.error = verdict.error;
    outcome.detail = verdict.detail;
    if (verdict.status == Status::ok) {
        outcome.result_json = evidence.report.body;
        outcome.files = std::move(evidence.report.files);
        outcome.skipped_files = std::move(evidence.report.skipped_files);
    }
    outcome.script_started = evidence.report.started;
    outcome.cancelled = evidence.spawn_error.empty() && evidence.cancelled;
    outcome.stdout_bytes = spawned.stdout_bytes;
    outcome.stderr_bytes = spawned.stderr_bytes;
    outcome.stdout_truncated = spawned.stdout_over;
    outcome.stderr_truncated = spawned.stderr_over;
    outcome.usage.wall = spawned.wall;
    outcome.usage.cpu = evidence.cpu;
    outcome.usage.peak_memory_bytes = usage.peak_memory_bytes ? usage.peak_memory_bytes : spawned.max_rss_bytes;
    outcome.jail = evidence.jail;
    outcome.resource_control = impl.cgroups.name();
    return outcome;
}

}  // namespace

Sandbox::Sandbox(std::unique_ptr<Impl> impl) : m_impl(std::move(impl)) {}
Sandbox::~Sandbox() = default;

const Config& Sandbox::config() const {
    return m_impl->config;
}

std::unique_ptr<Sandbox> Sandbox::create(const Config& config, std::string& error) {
    auto impl = std::make_unique<Impl>();
    impl->config = config;
    if (!is_executable(config.python_path)) {
        error = "Python interpreter not found or not executable: " + config.python_path;
        return nullptr;
    }
    if (auto problem = check_limits(config.defaults, config.maxima)) {
        error = "The default limits exceed the configured maxima: " + *problem;
        return nullptr;
    }
    if (config.concurrency == 0) {
        error = "The concurrency must be at least 1";
        return nullptr;
    }
    impl->host = read_host_resources();
    if (auto problem = check_fits(config.maxima, impl->host, config.concurrency, config.warm)) {
        error = "The maxima do not fit this host: " + *problem;
        return nullptr;
    }
    const std::string nsjail = config.nsjail_path.empty() ? find_program("nsjail", {"/usr/local/bin/nsjail", "/usr/bin/nsjail"})
                                                          : config.nsjail_path;
    const std::string bwrap = config.bwrap_path.empty() ? find_program("bwrap", {"/usr/bin/bwrap"}) : config.bwrap_path;
    const bool use_nsjail = config.jail == JailKind::nsjail || (config.jail == JailKind::automatic && is_executable(nsjail));
    impl->jail = use_nsjail ? JailKind::nsjail : JailKind::bwrap;
    impl->jail_path = use_nsjail ? nsjail : bwrap;
    if (!is_executable(impl->jail_path)) {
        const std::string where = impl->jail_path.empty() ? " on PATH" : ": " + impl->jail_path;
        error = config.jail == JailKind::automatic
                    ? "No jail found: install bubblewrap (apt-get install bubblewrap) or put nsjail on PATH"
                : use_nsjail ? "nsjail not found" + where + " (give its path with --nsjail, or choose --jail bwrap)"
                             : "bubblewrap not found" + where + " (apt-get install bubblewrap)";
        return nullptr;
    }
    impl->mounts = default_mounts(read_host_layout());
    impl->kafel = seccomp_kafel_policy();
    SeccompProgram program = compile_seccomp_bpf();
    if (!program.error.empty()) {
        error = "Cannot build the seccomp filter: " + program.error;
        return nullptr;
    }
    impl->bpf.assign(program.bpf.begin(), program.bpf.end());
    if (impl->jail == JailKind::nsjail) {
        if (config.nsjail_config_path.empty()) {
            impl->policy = std::string(embedded_nsjail_config());
        } else if (auto text = read_file(config.nsjail_config_path)) {
            impl->policy = *text;
        } else {
            error = "Cannot read the nsjail config " + config.nsjail_config_path;
            return nullptr;
        }
    } else {
        impl->policy = impl->bpf;
    }
    if (config.resource_control == ResourceControl::rlimits) {
        impl->cgroups = Cgroups::rlimits_only(
            "chosen by the operator (--resource-control rlimits): memory is limited per process (RLIMIT_AS), "
            "processes per uid (RLIMIT_NPROC), no per-run cgroup");
    } else {
        impl->cgroups = Cgroups::detect();
        if (impl->cgroups.version() == CgroupVersion::none) {
            // Never a silent downgrade: without a cgroup a run's memory and
            // processes are only limited per process.
            error = "Per-run cgroups are required (--resource-control cgroup, the default) but none can be made: " +
                    impl->cgroups.reason() +
                    ". Give safepy a delegated cgroup (a systemd unit with Delegate=yes; from a shell: systemd-run "
                    "--scope -p Delegate=yes safepy ...; a container: a writable /sys/fs/cgroup in its own cgroup "
                    "namespace, e.g. --privileged), or accept rlimits only with --resource-control rlimits";
            return nullptr;
        }
    }
    if (const std::string swap = impl->cgroups.swap_note(); !swap.empty()) {
        impl->notes.push_back(swap);
    }
    if (!pidfd_supported()) {
        error = std::string("pidfd_open is not available (Linux 5.3 or later is required to watch runs): ") +
                std::strerror(errno);
        return nullptr;
    }
    if (geteuid() == 0) {
        if (config.sandbox_uid_base == 0 || config.sandbox_uid_count == 0 ||
            config.sandbox_uid_count > 1'000'000 || config.sandbox_uid_base > 0xFFFFFFFEu - config.sandbox_uid_count) {
            error = "The sandbox uid range must be non-empty, start above 0 and end below 4294967295";
            return nullptr;
        }
        if (config.sandbox_uid_count < config.concurrency) {
            error = "The sandbox uid range (" + std::to_string(config.sandbox_uid_count) +
                    " uids) is smaller than the concurrency (" + std::to_string(config.concurrency) + ")";
            return nullptr;
        }
        impl->uids = std::make_unique<UidPool>(config.sandbox_uid_base, config.sandbox_uid_count, "/run/safepy/uids");
    }
    if (geteuid() == 0 && !has_kill_capability()) {
        // Runs are started as the sandbox uid: without CAP_KILL a timed-out
        // run could not be stopped.
        error = "Started as root without CAP_KILL: runs under another uid could not be stopped on time "
                "(add the KILL capability, e.g. docker run --cap-add KILL)";
        return nullptr;
    }
    if (geteuid() != 0) {
        impl->notes.push_back("not started as root: scripts run as this user's uid " + std::to_string(geteuid()));
    }
    if (config.warm) {
        for (const auto& module : config.warm_preload) {
            if (!is_module_name(module)) {
                error = "Not a Python module name to preload: " + json_string(repair_utf8(module.substr(0, 100)));
                return nullptr;
            }
        }
        if (config.warm_pool_size == 0) {
            error = "The warm pool needs at least one prepared child";
            return nullptr;
        }
        impl->pool = std::make_unique<WarmPool>(warm_settings(*impl));
    }
    return std::unique_ptr<Sandbox>(new Sandbox(std::move(impl)));
}

bool Sandbox::wait_ready(std::chrono::milliseconds timeout) const {
    return !m_impl->pool || m_impl->pool->wait_ready(timeout);
}

std::optional<std::string> Sandbox::check(const Request& request) const {
    return check_request(request, m_impl->config);
}

void Sandbox::cancel_all() const {
    m_impl->cancels.fire_all();
}

Outcome Sandbox::run(const Request& request) const noexcept {
    try {
        const Impl& impl = *m_impl;
        if (auto error = check_request(request, impl.config)) {
            return rejected(Status::invalid_request, *error);
        }
        const CancelSignal cancel;
        if (!cancel.valid()) {
            return rejected(Status::sandbox_error, "Sandbox failure (not caused by the script): cannot create an eventfd",
                            std::strerror(errno));
        }
        const CancelBoard::Entry cancellable(impl.cancels, cancel);
        if (impl.pool) {
            const WarmRun warm = impl.pool->run(request, cancel.fd());
            return conclude(impl, request, warm.spawned, warm.usage);
        }
        std::string cgroup_error;
        auto cgroup = impl.cgroups.create(request.limits, cgroup_error);
        if (!cgroup) {
            return rejected(Status::sandbox_error, "Sandbox failure (not caused by the script): cannot create the run's cgroup",
                            cgroup_error);
        }
        std::optional<UidLease> uid;
        JailPlan plan = base_plan(impl);
        if (impl.uids) {
            std::string uid_error;
            uid = impl.uids->acquire(uid_error);
            if (!uid) {
                return rejected(Status::sandbox_error,
                                "Sandbox failure (not caused by the script): no free sandbox uid", uid_error);
            }
            plan.uid = plan.gid = uid->uid();
        }
        plan.mode = request.mode;
        plan.limits = request.limits;
        SpawnSpec spec = base_spawn(impl, plan);
        spec.script = encode_job(request);
        spec.cgroup_join_fds = cgroup->join_fds();
        const RunCgroup* run_cgroup = impl.cgroups.version() != CgroupVersion::none ? cgroup.get() : nullptr;
        const SpawnResult spawned = spawn_and_supervise(spec, run_cgroup, cancel.fd());
        const CgroupUsage usage = cgroup->usage();
        cgroup.reset();  // nothing of the run survives this line
        uid.reset();     // so its uid may go to the next run
        return conclude(impl, request, spawned, usage);
    } catch (const std::exception& error) {
        return rejected(Status::sandbox_error, "Sandbox failure (not caused by the script): internal error", error.what());
    } catch (...) {
        return rejected(Status::sandbox_error, "Sandbox failure (not caused by the script): internal error", "unknown exception");
    }
}

Diagnostics Sandbox::diagnostics(bool probe) const {
    Diagnostics diagnostics;
    diagnostics.mode = m_impl->pool ? "warm" : "cold";
    diagnostics.jail = std::string(jail_name(m_impl->jail));
    diagnostics.jail_path = m_impl->jail_path;
    diagnostics.resource_control = m_impl->cgroups.name();
    diagnostics.resource_control_reason = m_impl->cgroups.reason();
    diagnostics.cgroup_path = m_impl->cgroups.path();
    diagnostics.python_path = m_impl->config.python_path;
    diagnostics.notes = m_impl->notes;
    diagnostics.cpu_mode = m_impl->cgroups.cpu_mode();
    const Config& config = m_impl->config;
    if (m_impl->uids) {
        diagnostics.uid_range = std::to_string(config.sandbox_uid_base) + "-" +
                                std::to_string(config.sandbox_uid_base + config.sandbox_uid_count - 1) +
                                ", one per concurrent run (" + m_impl->uids->lock_note() + ")";
    } else {
        diagnostics.uid_range = "every run is this user's uid " + std::to_string(geteuid()) + " (not root)";
    }
    const HostResources& host = m_impl->host;
    const Limits derived = host_maxima(default_maxima(), host, config.concurrency, config.warm);
    diagnostics.maxima_source =
        std::to_string(host.memory_bytes) + " bytes of memory (" + host.memory_source + ") less " +
        std::to_string(memory_reserve_bytes(config.concurrency, config.warm)) + " for safepy, shared by " +
        std::to_string(config.concurrency) + " concurrent run(s): memory_bytes and tmp_bytes up to " +
        std::to_string(derived.memory_bytes) + "; " + std::to_string(host.cpus) + " CPUs (" + host.cpus_source +
        "): cpu_cores up to " + std::to_string(derived.cpu_cores) + "; the rest are fixed ceilings";
    if (m_impl->pool) {
        diagnostics.notes.push_back("warm pool: " + m_impl->pool->state());
    }
    if (!probe) {
        return diagnostics;
    }
    Request request;
    request.limits = m_impl->config.defaults;
    request.script =
        "import sys, numpy, pandas\n"
        "def main():\n"
        "    return [sys.version.split()[0], numpy.__version__, pandas.__version__]\n";
    const Outcome outcome = run(request);
    diagnostics.probe_status = outcome.status;
    diagnostics.probe_wall = outcome.usage.wall;
    if (outcome.status != Status::ok) {
        diagnostics.probe_error = outcome.error + (outcome.detail.empty() ? "" : " [" + outcome.detail + "]") +
                                  (outcome.stderr_bytes.empty() ? "" : "\n" + outcome.stderr_bytes);
        return diagnostics;
    }
    const auto versions = parse_string_list(outcome.result_json);
    if (versions.size() == 3) {
        diagnostics.python_version = versions[0];
        diagnostics.numpy_version = versions[1];
        diagnostics.pandas_version = versions[2];
    }
    return diagnostics;
}

}  // namespace safepy

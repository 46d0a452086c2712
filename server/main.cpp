// safepy-server: the HTTP service. Reads its settings from flags and the
// environment, serves until SIGTERM or SIGINT, then stops gracefully.
#include "server.hpp"

#include "safepy/http.hpp"
#include "safepy/check.hpp"
#include "safepy/options.hpp"
#include "safepy/safepy.hpp"

#include <CLI/CLI.hpp>

#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <limits>
#include <map>

namespace {

constexpr int k_usage_error = 2;
constexpr int k_start_failed = 3;

int g_signal_pipe[2] = {-1, -1};

extern "C" void on_stop_signal(int number) {
    const char byte = static_cast<char>(number);
    [[maybe_unused]] const auto written = write(g_signal_pipe[1], &byte, 1);
}

struct Options {
    safepy::Config config;
    safepy::server::ServerSettings settings;
    std::string jail = "auto";
    std::string mode = "warm";
    std::string resource_control = "cgroup";
    std::string max_body = "2M";
    std::string max_script = "1M";
    std::int64_t queue_timeout_ms = 30'000;
    std::int64_t read_timeout_ms = 10'000;
    std::int64_t write_timeout_ms = 10'000;
    std::int64_t idle_timeout_ms = 5'000;
    std::int64_t ready_cache_ms = 5'000;
    std::int64_t grace_ms = 8'000;
    std::size_t connection_threads = 0;  // retired: a budget of twice this many connections
    std::map<std::string, std::string> defaults;  // by limit name, as typed
    std::map<std::string, std::string> maxima;
};

void log_event(const std::string& event, const std::string& fields) {
    const std::string line = "{\"time\":" + safepy::json_quote(safepy::log_timestamp(std::chrono::system_clock::now())) +
                             ",\"event\":" + safepy::json_quote(event) + (fields.empty() ? "" : "," + fields) + "}\n";
    std::fwrite(line.data(), 1, line.size(), stderr);
    std::fflush(stderr);
}

std::string field(const std::string& name, const std::string& text) {
    return safepy::json_quote(name) + ":" + safepy::json_quote(text);
}

std::string field(const std::string& name, std::uint64_t value) {
    return safepy::json_quote(name) + ":" + std::to_string(value);
}

std::string env_name(std::string_view prefix, std::string_view limit) {
    std::string name(prefix);
    for (const char c : limit) {
        name += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    }
    return name;
}

CLI::Option* with_env(CLI::Option* option, const char* env) {
    return option->envname(env)->capture_default_str();
}

void add_options(CLI::App& app, Options& options) {
    auto& s = options.settings;
    with_env(app.add_option("--address", s.address, "listen address"), "SAFEPY_ADDRESS");
    with_env(app.add_option("--port", s.port, "listen port; 0 picks a free one")->check(CLI::Range(0, 65535)), "PORT");
    with_env(app.add_option("--concurrency", s.concurrency, "runs at once (default: CPUs)")
                              ->check(CLI::Range(std::size_t(1), std::size_t(4096))),
                          "SAFEPY_CONCURRENCY");
    with_env(app.add_option("--queue", s.queue_length, "requests that may wait for a run slot; more get 429"),
                          "SAFEPY_QUEUE");
    with_env(app.add_option("--queue-timeout-ms", options.queue_timeout_ms,
                                          "longest wait for a run slot, then 503")->check(CLI::NonNegativeNumber),
                           "SAFEPY_QUEUE_TIMEOUT_MS");
    with_env(app.add_option("--max-body-bytes", options.max_body, "largest request body (K, M, G); more gets 413"),
                          "SAFEPY_MAX_BODY_BYTES");
    with_env(app.add_option("--max-script-bytes", options.max_script, "largest script (K, M, G); more gets 400"),
                          "SAFEPY_MAX_SCRIPT_BYTES");
    with_env(app.add_option("--read-timeout-ms", options.read_timeout_ms,
                                          "a request's headers and body must arrive within this")
                               ->check(CLI::PositiveNumber),
                           "SAFEPY_READ_TIMEOUT_MS");
    with_env(app.add_option("--write-timeout-ms", options.write_timeout_ms,
                                          "a response must be taken by the client within this")
                               ->check(CLI::PositiveNumber),
                           "SAFEPY_WRITE_TIMEOUT_MS");
    with_env(app.add_option("--idle-timeout-ms", options.idle_timeout_ms,
                                          "keep-alive: how long an idle connection stays open")
                               ->check(CLI::PositiveNumber),
                           "SAFEPY_IDLE_TIMEOUT_MS");
    with_env(app.add_option("--keep-alive-requests", s.keep_alive_max_requests, "requests per connection")
                              ->check(CLI::PositiveNumber),
                          "SAFEPY_KEEP_ALIVE_REQUESTS");
    with_env(app.add_option("--max-connections", s.max_connections,
                            "open connections (idle ones included); more get an immediate 503")
                 ->check(CLI::PositiveNumber),
             "SAFEPY_MAX_CONNECTIONS");
    with_env(app.add_option("--connection-threads", options.connection_threads,
                            "retired (connections no longer take a thread): sets --max-connections to twice this"),
             "SAFEPY_CONNECTION_THREADS");
    with_env(app.add_option("--ready-cache-ms", options.ready_cache_ms, "how long a /readyz probe run is reused")
                               ->check(CLI::NonNegativeNumber),
                           "SAFEPY_READY_CACHE_MS");
    with_env(app.add_option("--shutdown-grace-ms", options.grace_ms,
                                          "on SIGTERM, how long runs in progress may take before they are killed")
                               ->check(CLI::NonNegativeNumber),
                           "SAFEPY_SHUTDOWN_GRACE_MS");

    const safepy::Limits defaults;
    const safepy::Limits maxima = safepy::service_maxima();
    for (const auto& limit : safepy::limit_fields()) {
        const std::string name(limit.name);
        app.add_option_function<std::string>(
               "--" + safepy::limit_flag(name), [&options, name](const std::string& value) { options.defaults[name] = value; },
               "default " + std::string(limit.summary) + " (" + std::to_string(*safepy::get_limit(defaults, name)) + ")")
            ->envname(env_name("SAFEPY_", name));
        app.add_option_function<std::string>(
               "--max-" + safepy::limit_flag(name), [&options, name](const std::string& value) { options.maxima[name] = value; },
               "largest " + name + " a request may ask for (" + std::to_string(*safepy::get_limit(maxima, name)) + ")")
            ->envname(env_name("SAFEPY_MAX_", name));
    }

    with_env(app.add_option("--jail", options.jail, "auto, nsjail or bwrap (auto prefers nsjail when found)")
                              ->check(CLI::IsMember({"auto", "nsjail", "bwrap"})),
                          "SAFEPY_JAIL");
    with_env(app.add_option("--nsjail", options.config.nsjail_path, "path of the nsjail binary"), "SAFEPY_NSJAIL");
    with_env(app.add_option("--bwrap", options.config.bwrap_path, "path of the bwrap binary"), "SAFEPY_BWRAP");
    with_env(app.add_option("--python", options.config.python_path, "Python inside the sandbox"), "SAFEPY_PYTHON");
    with_env(app.add_option("--nsjail-config", options.config.nsjail_config_path,
                                         "nsjail policy file (default: the built-in nsjail/safepy.cfg)"),
                          "SAFEPY_NSJAIL_CONFIG");
    with_env(app.add_option("--uid-base", options.config.sandbox_uid_base,
                            "first host uid (and gid) for runs; each concurrent run gets its own")
                 ->check(CLI::Range(1u, 0xFFFFFFF0u)),
             "SAFEPY_UID_BASE");
    with_env(app.add_option("--uid-count", options.config.sandbox_uid_count,
                            "how many host uids from --uid-base runs may use (at least the concurrency)")
                 ->check(CLI::Range(1u, 1'000'000u)),
             "SAFEPY_UID_COUNT");
    with_env(app.add_option("--resource-control", options.resource_control,
                            "cgroup: per-run cgroups, refuse to start without them; rlimits: accept rlimits only")
                 ->check(CLI::IsMember({"cgroup", "rlimits"})),
             "SAFEPY_RESOURCE_CONTROL");
    with_env(app.add_option("--mode", options.mode,
                            "warm: a template with numpy and pandas loaded forks each run's sandbox; "
                            "cold: a fresh jail per run")
                 ->check(CLI::IsMember({"warm", "cold"})),
             "SAFEPY_MODE");
    with_env(app.add_option("--warm-preload", options.config.warm_preload,
                            "modules the warm template imports once for every run, comma-separated "
                            "(add matplotlib.pyplot for plotting: about 0.5 s less per run that uses it)")
                 ->delimiter(','),
             "SAFEPY_WARM_PRELOAD");
    with_env(app.add_option("--warm-pool", options.config.warm_pool_size,
                            "warm mode: sandboxes kept prepared ahead of demand")
                 ->check(CLI::Range(1, 256)),
             "SAFEPY_WARM_POOL");
}

// Turns the typed options into the library's Config and the server's settings.
std::optional<std::string> build(Options& options) {
    auto& s = options.settings;
    options.config.jail = *safepy::parse_jail(options.jail);
    options.config.resource_control = *safepy::parse_resource_control(options.resource_control);
    const auto body = safepy::parse_quantity(options.max_body);
    const auto script = safepy::parse_quantity(options.max_script);
    if (!body || *body == 0) {
        return "--max-body-bytes: not a positive number: " + options.max_body;
    }
    if (!script || *script == 0) {
        return "--max-script-bytes: not a positive number: " + options.max_script;
    }
    s.policy.max_body_bytes = static_cast<std::size_t>(*body);
    options.config.max_script_bytes = static_cast<std::size_t>(*script);

    // Maxima are bounded only by their types.
    safepy::Limits unbounded;
    unbounded.wall = unbounded.cpu = std::chrono::milliseconds::max();
    unbounded.memory_bytes = unbounded.tmp_bytes = unbounded.file_bytes = std::numeric_limits<std::uint64_t>::max();
    unbounded.stdout_bytes = unbounded.stderr_bytes = unbounded.result_bytes = std::numeric_limits<std::uint64_t>::max();
    unbounded.processes = unbounded.open_files = unbounded.cpu_cores = std::numeric_limits<std::uint32_t>::max();

    options.config.warm = options.mode == "warm";
    options.config.concurrency = s.concurrency;
    safepy::Limits maxima = safepy::service_maxima(s.concurrency, options.config.warm);
    if (auto error = safepy::apply_typed_limits(options.maxima, "--max-", maxima, unbounded)) {
        return error;
    }
    safepy::Limits defaults = safepy::fit_defaults(safepy::Limits{}, maxima);
    if (auto error = safepy::apply_typed_limits(options.defaults, "--", defaults, maxima)) {
        return error;
    }
    if (auto error = safepy::check_limits(defaults, maxima)) {
        return "the default limits exceed the maxima: " + *error + " (lower the default or raise --max-...)";
    }
    options.config.maxima = maxima;
    options.config.defaults = defaults;
    s.policy.defaults = defaults;
    s.policy.maxima = maxima;
    s.queue_timeout = std::chrono::milliseconds(options.queue_timeout_ms);
    s.read_timeout = std::chrono::milliseconds(options.read_timeout_ms);
    s.write_timeout = std::chrono::milliseconds(options.write_timeout_ms);
    s.idle_timeout = std::chrono::milliseconds(options.idle_timeout_ms);
    s.ready_cache = std::chrono::milliseconds(options.ready_cache_ms);
    if (options.connection_threads > 0) {
        s.max_connections = 2 * options.connection_threads;
    }
    return std::nullopt;
}

bool install_signal_handlers() {
    if (pipe2(g_signal_pipe, O_CLOEXEC) != 0) {
        return false;
    }
    struct sigaction action {};
    action.sa_handler = on_stop_signal;
    sigemptyset(&action.sa_mask);
    action.sa_flags = SA_RESTART;
    return sigaction(SIGTERM, &action, nullptr) == 0 && sigaction(SIGINT, &action, nullptr) == 0;
}

int wait_for_stop_signal() {
    char byte = 0;
    while (read(g_signal_pipe[0], &byte, 1) < 0 && errno == EINTR) {
    }
    return byte;
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"safepy-server: run untrusted Python over HTTP (POST /execute).\n"
                 "Every option can also be set by the environment variable shown."};
    app.set_version_flag("--version", "safepy-server " + std::string(safepy::version()));
    Options options;
    add_options(app, options);
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& error) {
        const int code = app.exit(error);
        return code == 0 ? 0 : k_usage_error;
    }
    if (auto error = build(options)) {
        std::fprintf(stderr, "safepy-server: %s\n", error->c_str());
        return k_usage_error;
    }
    if (!install_signal_handlers()) {
        std::fprintf(stderr, "safepy-server: cannot install the signal handlers\n");
        return k_start_failed;
    }

    std::string error;
    auto sandbox = safepy::Sandbox::create(options.config, error);
    if (!sandbox) {
        log_event("start_failed", field("error", error));
        return k_start_failed;
    }
    const safepy::Diagnostics diagnostics = sandbox->diagnostics(false);
    for (const auto& note : diagnostics.notes) {
        log_event("note", field("note", note));
    }
    const auto& settings = options.settings;
    safepy::server::Server server(options.settings, std::move(sandbox));
    if (auto problem = server.start()) {
        log_event("start_failed", field("error", *problem));
        return k_start_failed;
    }
    log_event("listening", field("address", settings.address) + "," + field("port", server.port()) + "," +
                               field("jail", diagnostics.jail) + "," + field("mode", diagnostics.mode) + "," +
                               field("resource_control", diagnostics.resource_control) + "," +
                               field("resource_control_reason", diagnostics.resource_control_reason) + "," +
                               field("concurrency", settings.concurrency) + "," + field("queue", settings.queue_length) +
                               "," + field("max_connections", settings.max_connections));
    // start() raised the soft limit to the hard one; past it, accepting pauses instead of refusing with 503.
    if (rlimit files{}; getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur != RLIM_INFINITY &&
                        files.rlim_cur < settings.max_connections + 64) {
        log_event("note", field("note", "the open-file limit (" + std::to_string(files.rlim_cur) +
                                            ") is below --max-connections (" + std::to_string(settings.max_connections) +
                                            ") plus the server's own descriptors; raise it (ulimit -n, "
                                            "LimitNOFILE=) or lower --max-connections"));
    }

    const int signal_number = wait_for_stop_signal();
    log_event("stopping", field("signal", signal_number == SIGINT ? "SIGINT" : "SIGTERM") + "," +
                              field("grace_ms", static_cast<std::uint64_t>(options.grace_ms)));
    server.stop(std::chrono::milliseconds(options.grace_ms));
    log_event("stopped", field("killed_runs", server.killed_runs()));
    return 0;
}

// safepy: run a Python script's main() in a sandbox and print the envelope.
#include "safepy/check.hpp"
#include "safepy/options.hpp"
#include "safepy/safepy.hpp"

#include <CLI/CLI.hpp>

#include <atomic>
#include <thread>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <sys/stat.h>
#include <unistd.h>

namespace {

constexpr int k_usage_error = 2;
constexpr int k_sandbox_failed = 3;

struct Options {
    safepy::Config config;
    std::string jail = "auto";
    std::string resource_control = "cgroup";
    std::map<std::string, std::string> limits;  // by limit name, as typed
    bool details = false;
    std::string mode = "cold";
};

// What `safepy run` hands to the script and does with what comes back.
struct RunInputs {
    std::string args;       // JSON text, as typed
    std::string args_file;
    std::vector<std::string> files;  // PATH or NAME=PATH
    std::string stdin_file;          // read instead of stdin
    bool no_stdin = false;
    std::string output_dir;
    bool force = false;
    bool result_only = false;
};

// Reads at most `cap` + 1 bytes, so that an oversized input is reported by
// the library rather than read whole.
bool read_script(const std::string& path, std::uint64_t cap, std::string& script, std::string& error) {
    std::ifstream file;
    std::istream* in = &std::cin;
    if (path != "-") {
        file.open(path, std::ios::binary);
        if (!file) {
            error = "cannot read " + path;
            return false;
        }
        in = &file;
    }
    script.resize(static_cast<std::size_t>(cap) + 1);
    in->read(script.data(), static_cast<std::streamsize>(script.size()));
    script.resize(static_cast<std::size_t>(in->gcount()));
    if (in->bad()) {
        error = "cannot read " + path;
        return false;
    }
    return true;
}

void add_sandbox_options(CLI::App& command, Options& options) {
    command.add_option("--jail", options.jail, "auto, nsjail or bwrap (auto prefers nsjail when found)")
        ->check(CLI::IsMember({"auto", "nsjail", "bwrap"}));
    command.add_option("--nsjail", options.config.nsjail_path, "path of the nsjail binary");
    command.add_option("--bwrap", options.config.bwrap_path, "path of the bwrap binary");
    command.add_option("--python", options.config.python_path, "Python inside the sandbox")->capture_default_str();
    command.add_option("--nsjail-config", options.config.nsjail_config_path,
                       "nsjail policy file (default: the built-in nsjail/safepy.cfg)");
    command.add_option("--uid-base", options.config.sandbox_uid_base, "first host uid (and gid) for runs, as root")
        ->check(CLI::Range(1u, 0xFFFFFFF0u))
        ->capture_default_str();
    command.add_option("--uid-count", options.config.sandbox_uid_count, "how many host uids runs may use")
        ->check(CLI::Range(1u, 1'000'000u))
        ->capture_default_str();
    command.add_option("--resource-control", options.resource_control,
                       "cgroup: per-run cgroups or refuse to run; rlimits: accept rlimits only (no cgroup)")
        ->check(CLI::IsMember({"cgroup", "rlimits"}))
        ->capture_default_str();
}

void add_limit_options(CLI::App& command, Options& options) {
    const safepy::Limits defaults;
    for (const auto& field : safepy::limit_fields()) {
        std::string flag = "--" + std::string(field.name);
        for (auto& c : flag) {
            c = c == '_' ? '-' : c;
        }
        const std::string name(field.name);
        command.add_option_function<std::string>(
            flag, [&options, name](const std::string& value) { options.limits[name] = value; },
            std::string(field.summary) + " (default " + std::to_string(*safepy::get_limit(defaults, name)) + ")");
    }
}

// Turns the typed limits into Limits; an error message on bad input.
std::optional<std::string> build_limits(const Options& options, safepy::Limits& limits) {
    return safepy::apply_typed_limits(options.limits, "--", limits, options.config.maxima);
}

std::unique_ptr<safepy::Sandbox> make_sandbox(Options& options) {
    options.config.jail = *safepy::parse_jail(options.jail);
    options.config.resource_control = *safepy::parse_resource_control(options.resource_control);
    std::string error;
    options.config.warm = options.mode == "warm";
    options.config.warm_pool_size = 1;
    options.config.defaults = safepy::fit_defaults(options.config.defaults, options.config.maxima);
    auto sandbox = safepy::Sandbox::create(options.config, error);
    if (!sandbox) {
        std::cerr << "safepy: " << error << "\n";
    } else if (!sandbox->wait_ready(std::chrono::seconds(30))) {
        std::cerr << "safepy: the warm template did not start: " << sandbox->diagnostics(false).notes.back() << "\n";
        return nullptr;
    }
    return sandbox;
}

bool is_regular_file(const std::string& path) {
    struct stat info {};
    return stat(path.c_str(), &info) == 0 && S_ISREG(info.st_mode);
}

// The script's stdin: --stdin-file, else this process's stdin when it is a
// pipe or a file (not a terminal, and not already the script).
bool read_stdin(const RunInputs& inputs, const std::string& script_path, std::uint64_t cap, std::string& bytes,
                std::string& error) {
    if (!inputs.stdin_file.empty()) {
        return read_script(inputs.stdin_file, cap, bytes, error);
    }
    struct stat info {};
    if (inputs.no_stdin || script_path == "-" || fstat(0, &info) != 0 || isatty(0) ||
        !(S_ISFIFO(info.st_mode) || S_ISREG(info.st_mode) || S_ISSOCK(info.st_mode))) {
        return true;
    }
    return read_script("-", cap, bytes, error);
}

// Turns the run's flags into the request's args, stdin and files.
bool read_inputs(const RunInputs& inputs, const std::string& script_path, safepy::Request& request,
                 std::string& error) {
    if (!inputs.args.empty() && !inputs.args_file.empty()) {
        error = "give --args or --args-file, not both";
        return false;
    }
    if (!inputs.args.empty()) {
        request.args_json = inputs.args;
    } else if (!inputs.args_file.empty()) {
        std::string text;
        if (!read_script(inputs.args_file, 1u << 20, text, error)) {
            return false;
        }
        request.args_json = std::move(text);
    }
    if (!read_stdin(inputs, script_path, request.limits.stdin_bytes, request.stdin_bytes, error)) {
        return false;
    }
    // One budget for all files, so that many files over the cap are never read whole.
    std::uint64_t room = request.limits.input_files_bytes;
    for (const auto& spec : inputs.files) {
        const auto equals = spec.find('=');
        const std::string host_path = equals == std::string::npos ? spec : spec.substr(equals + 1);
        std::string name = equals == std::string::npos ? host_path.substr(host_path.rfind('/') + 1) : spec.substr(0, equals);
        if (!is_regular_file(host_path)) {
            error = "--file " + spec + ": " + host_path + " is not a readable regular file";
            return false;
        }
        safepy::File file{std::move(name), {}};
        if (!read_script(host_path, room, file.content, error)) {
            return false;
        }
        room -= std::min<std::uint64_t>(room, file.content.size());
        request.files.push_back(std::move(file));
    }
    return true;
}

int run_command(Options& options, const std::string& path, const RunInputs& inputs) {
    safepy::Request request;
    request.limits = safepy::fit_defaults(options.config.defaults, options.config.maxima);
    if (auto error = build_limits(options, request.limits)) {
        std::cerr << "safepy: " << *error << "\n";
        return k_usage_error;
    }
    std::string error;
    if (!read_script(path, options.config.max_script_bytes, request.script, error) ||
        !read_inputs(inputs, path, request, error)) {
        std::cerr << "safepy: " << error << "\n";
        return k_usage_error;
    }
    auto sandbox = make_sandbox(options);
    if (!sandbox) {
        return k_sandbox_failed;
    }
    const safepy::Outcome outcome = sandbox->run(request);
    int code = safepy::exit_code(outcome.status);
    if (!inputs.output_dir.empty() && outcome.status == safepy::Status::ok) {
        if (auto problem = safepy::write_output_files(inputs.output_dir, outcome.files, inputs.force)) {
            std::cerr << "safepy: cannot write the run's files: " << *problem << "\n";
            code = k_usage_error;
        }
    }
    const bool contents = inputs.output_dir.empty();
    if (inputs.result_only && outcome.status == safepy::Status::ok) {
        std::cout << outcome.result_json << "\n";
        if (contents && !outcome.files.empty()) {
            std::cerr << "safepy: the run returned " << outcome.files.size()
                      << " file(s) from /tmp/out; --output-dir DIR writes them\n";
        }
    } else {
        (inputs.result_only ? std::cerr : std::cout) << safepy::envelope_json(outcome, options.details, contents) << "\n";
    }
    if (!outcome.detail.empty()) {
        std::cerr << "safepy: " << outcome.detail << "\n";
    }
    return code;
}

struct CheckOptions {
    std::string format = "text";
    std::size_t jobs = 1;
    bool run = false;  // also run each script and require status ok
};

// One file's verdict: the check, then with --run the run.
safepy::CheckedFile check_file(const safepy::Sandbox& sandbox, const Options& options, const CheckOptions& check,
                               const safepy::Limits& limits, const std::string& path) {
    safepy::CheckedFile file{path, safepy::Status::ok, ""};
    safepy::Request request;
    request.mode = safepy::Mode::check;
    std::string error;
    if (!read_script(path, options.config.max_script_bytes, request.script, error)) {
        return {path, safepy::Status::invalid_request, error};
    }
    for (const safepy::Mode mode : {safepy::Mode::check, safepy::Mode::run}) {
        if (mode == safepy::Mode::run && !check.run) {
            break;
        }
        request.mode = mode;
        request.limits = limits;
        const safepy::Outcome outcome = sandbox.run(request);
        if (outcome.status != safepy::Status::ok) {
            file.status = outcome.status;
            file.error = outcome.error;
            if (!outcome.detail.empty()) {
                std::cerr << "safepy: " << path << ": " << outcome.detail << "\n";
            }
            break;
        }
    }
    return file;
}

int check_command(Options& options, const std::vector<std::string>& inputs, const CheckOptions& check) {
    const auto format = safepy::parse_check_format(check.format);
    const safepy::ScriptList scripts = safepy::find_scripts(inputs);
    if (!scripts.error.empty()) {
        std::cerr << "safepy: " << scripts.error << "\n";
        return k_usage_error;
    }
    // A glob may match only directories: still one run slot.
    options.config.concurrency = std::max<std::size_t>(1, std::min(check.jobs, scripts.paths.size()));
    options.config.maxima = safepy::host_maxima(safepy::default_maxima(), safepy::read_host_resources(),
                                                options.config.concurrency, options.mode == "warm");
    safepy::Limits limits = safepy::fit_defaults(options.config.defaults, options.config.maxima);
    if (auto error = build_limits(options, limits)) {
        std::cerr << "safepy: " << *error << "\n";
        return k_usage_error;
    }
    auto sandbox = make_sandbox(options);
    if (!sandbox) {
        return k_sandbox_failed;
    }
    std::vector<safepy::CheckedFile> files(scripts.paths.size());
    std::atomic<std::size_t> next{0};
    auto worker = [&] {
        for (std::size_t i = next++; i < files.size(); i = next++) {
            files[i] = check_file(*sandbox, options, check, limits, scripts.paths[i]);
        }
    };
    std::vector<std::thread> workers;
    for (std::size_t i = 1; i < options.config.concurrency; ++i) {
        workers.emplace_back(worker);
    }
    worker();
    for (auto& thread : workers) {
        thread.join();
    }
    std::cout << safepy::check_report(files, *format);
    return safepy::check_exit_code(files);
}

int doctor_command(Options& options) {
    if (auto error = build_limits(options, options.config.defaults)) {
        std::cerr << "safepy: " << *error << "\n";
        return k_usage_error;
    }
    auto sandbox = make_sandbox(options);
    if (!sandbox) {
        return k_sandbox_failed;
    }
    const safepy::Diagnostics d = sandbox->diagnostics(true);
    std::cout << "jail:             " << d.jail << " (" << d.jail_path << ")\n"
              << "resource control: " << d.resource_control
              << (d.cgroup_path.empty() ? "" : " (" + d.cgroup_path + ")") << "\n"
              << "cpu:              " << d.cpu_mode << "\n"
              << "sandbox uids:     " << d.uid_range << "\n"
              << "resource reason:  " << d.resource_control_reason << "\n"
              << "python:           " << d.python_path << "\n";
    for (const auto& note : d.notes) {
        std::cout << "note:             " << note << "\n";
    }
    const auto& defaults = sandbox->config().defaults;
    const auto& maxima = sandbox->config().maxima;
    std::cout << "maxima from:      " << d.maxima_source << "\n";
    std::cout << "limits (default / maximum):\n";
    for (const auto& field : safepy::limit_fields()) {
        std::cout << "  " << field.name << ": " << *safepy::get_limit(defaults, field.name) << " / "
                  << *safepy::get_limit(maxima, field.name) << "\n";
    }
    if (d.probe_status != safepy::Status::ok) {
        std::cout << "probe run:        FAILED (" << safepy::status_name(d.probe_status) << "): " << d.probe_error
                  << "\n";
        return safepy::exit_code(d.probe_status) == 0 ? k_sandbox_failed : safepy::exit_code(d.probe_status);
    }
    std::cout << "probe run:        ok in " << d.probe_wall.count() << " ms\n"
              << "python version:   " << d.python_version << "\n"
              << "numpy version:    " << d.numpy_version << "\n"
              << "pandas version:   " << d.pandas_version << "\n";
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"safepy: run untrusted Python in a sandbox.\n"
                 "Exit codes: 0 success, 1 the script failed, 2 usage error or invalid request, "
                 "3 the sandbox failed."};
    app.set_version_flag("--version", "safepy " + std::string(safepy::version()));
    app.require_subcommand(1);
    Options options;

    std::string path;
    RunInputs inputs;
    auto* run = app.add_subcommand("run", "run FILE (or - for stdin) and print the JSON envelope");
    run->add_option("file", path, "the script, or - to read it from stdin")->required();
    run->add_flag("--details", options.details, "add \"status\" and \"usage\" (time, memory) to the envelope");
    run->add_option("--args", inputs.args, "a JSON object: main is called as main(**ARGS)");
    run->add_option("--args-file", inputs.args_file, "read --args from FILE");
    run->add_option("--file", inputs.files,
                    "hand a file to the run, read-only in its working directory: PATH (as its base name) or NAME=PATH")
        ->allow_extra_args(false);
    run->add_option("--stdin-file", inputs.stdin_file, "the script's stdin, from FILE");
    run->add_flag("--no-stdin", inputs.no_stdin,
                  "give the script an empty stdin (default: safepy's own stdin when it is a pipe or a file)");
    run->add_option("--output-dir", inputs.output_dir,
                    "write the files the run left under /tmp/out into DIR (the envelope then lists them without content)");
    run->add_flag("--force", inputs.force, "with --output-dir: replace files that exist");
    run->add_flag("--result-only", inputs.result_only,
                  "print only main()'s result as JSON (for jq); on failure the envelope goes to stderr");
    run->add_option("--mode", options.mode,
                    "cold: a fresh jail; warm: through a warm template, as the server runs it (slower for one run)")
        ->check(CLI::IsMember({"cold", "warm"}))
        ->capture_default_str();
    add_limit_options(*run, options);
    add_sandbox_options(*run, options);

    std::vector<std::string> paths;
    CheckOptions check_options;
    auto* check = app.add_subcommand("check", "check scripts (syntax, a top-level main) without running them");
    check->add_option("files", paths, "scripts, directories (every *.py below) or quoted globs; - for stdin")->required();
    check->add_option("--format", check_options.format, "text, json, github (workflow annotations) or junit (XML)")
        ->check(CLI::IsMember({"text", "json", "github", "junit"}))
        ->capture_default_str();
    check->add_option("-j,--jobs", check_options.jobs, "files checked at once")
        ->check(CLI::Range(std::size_t(1), std::size_t(64)))
        ->capture_default_str();
    check->add_flag("--run", check_options.run,
                    "also run each script (main() without arguments, with the limits given) and require status ok");
    add_limit_options(*check, options);
    add_sandbox_options(*check, options);

    auto* doctor = app.add_subcommand("doctor", "report the jail, cgroups, limits and Python versions in effect");
    add_sandbox_options(*doctor, options);
    add_limit_options(*doctor, options);  // the probe run's limits

    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& error) {
        const int code = app.exit(error);
        return code == 0 ? 0 : k_usage_error;
    }
    if (*run) {
        return run_command(options, path, inputs);
    }
    if (*check) {
        return check_command(options, paths, check_options);
    }
    return doctor_command(options);
}

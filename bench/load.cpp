// safepy-load: end-to-end load generator for safepy-server, with a bare-Python
// baseline mode so that every figure can be quoted as a ratio to the cold floor.
#include <CLI/CLI.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/json.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cerrno>
#include <cmath>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <latch>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <sstream>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <spawn.h>
#include <string>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <vector>

extern char** environ;

namespace json = boost::json;
namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;

namespace {

using Clock = std::chrono::steady_clock;

constexpr int k_exit_errors = 1;
constexpr int k_exit_usage = 2;
constexpr std::size_t k_max_json_depth = 256;
constexpr std::size_t k_max_baseline_output_bytes = 64u << 20;
constexpr auto k_rss_sample_interval = std::chrono::milliseconds(10);
// Walking /proc for the process tree costs about a millisecond: sample it less often.
constexpr int k_tree_sample_every = 10;

// Imports the script as a module (so that an `if __name__ == "__main__"` block
// does not run), calls main() and prints the result as the last line.
constexpr const char* k_baseline_driver = R"(import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("script", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
print(json.dumps(module.main()))
)";

struct Options {
    std::string url;
    bool baseline = false;
    std::string python = "/usr/bin/python3";
    std::string script_path;
    unsigned concurrency = 1;
    double duration_s = 0;
    std::int64_t requests = 0;
    unsigned warmup = 0;
    std::optional<std::string> expect;
    std::string json_path;
    int server_pid = 0;
    double timeout_s = 60;
    std::string label;
    unsigned idle_connections = 0;
};

// What one request ended as: empty when verified, else an error kind and a message.
struct Failure {
    std::string kind;  // transport, http_status, bad_body, error_field, no_result, mismatch, spawn, timeout, exit_status
    std::string message;
};
using Check = std::optional<Failure>;

std::optional<json::value> parse_json(std::string_view text) {
    json::parse_options options;
    options.max_depth = k_max_json_depth;
    boost::system::error_code error;
    json::value value = json::parse(text, error, {}, options);
    if (error) {
        return std::nullopt;
    }
    return value;
}

Check check_result(const json::value& result, const std::optional<json::value>& expected) {
    if (expected && result != *expected) {
        return Failure{"mismatch", "result " + json::serialize(result) + " != expected " + json::serialize(*expected)};
    }
    return std::nullopt;
}

std::string excerpt(std::string_view text) {
    constexpr std::size_t k_bytes = 300;
    return std::string(text.substr(0, k_bytes)) + (text.size() > k_bytes ? "..." : "");
}

// Sends the script to the server; one keep-alive connection per instance,
// reopened when the server closes it. Beast over a private io_context, so
// that every step has the request timeout.
class HttpTarget {
public:
    HttpTarget(const std::string& host, const std::string& port, std::string path, std::string body, const Options& options)
        : m_host(host), m_port(port), m_path(std::move(path)), m_body(std::move(body)),
          m_timeout(std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::duration<double>(options.timeout_s))) {}

    Check execute(const std::optional<json::value>& expected) {
        boost::system::error_code ec;
        if (!m_open) {
            ec = connect();
            if (ec) {
                return Failure{"transport", "connect: " + ec.message()};
            }
        }
        http::request<http::string_body> request{http::verb::post, m_path, 11};
        request.set(http::field::host, m_host);
        request.set(http::field::content_type, "application/json");
        request.body() = m_body;
        request.prepare_payload();
        http::response_parser<http::string_body> parser;
        parser.body_limit(boost::none);
        m_stream.expires_after(m_timeout);
        http::async_write(m_stream, request, [&](boost::system::error_code e, std::size_t) {
            ec = e;
            if (!ec) {
                http::async_read(m_stream, m_buffer, parser, [&](boost::system::error_code e2, std::size_t) { ec = e2; });
            }
        });
        run();
        if (ec) {
            m_open = false;
            m_stream.close();
            return Failure{ec == beast::error::timeout ? "timeout" : "transport", ec.message()};
        }
        const auto& response = parser.get();
        if (!response.keep_alive()) {
            m_open = false;
            m_stream.close();
        }
        if (response.result_int() != 200) {
            return Failure{"http_status", "HTTP " + std::to_string(response.result_int()) + ": " + excerpt(response.body())};
        }
        auto body = parse_json(response.body());
        if (!body || !body->is_object()) {
            return Failure{"bad_body", "not a JSON object: " + excerpt(response.body())};
        }
        const json::object& envelope = body->as_object();
        if (envelope.contains("error")) {
            return Failure{"error_field", excerpt(response.body())};
        }
        const json::value* result = envelope.if_contains("result");
        if (!result) {
            return Failure{"no_result", excerpt(response.body())};
        }
        return check_result(*result, expected);
    }

private:
    boost::system::error_code connect() {
        boost::system::error_code ec;
        tcp::resolver resolver(m_io);
        const auto endpoints = resolver.resolve(m_host, m_port, ec);
        if (ec) {
            return ec;
        }
        m_buffer.clear();
        m_stream.expires_after(m_timeout);
        m_stream.async_connect(endpoints, [&](boost::system::error_code e, const tcp::endpoint&) { ec = e; });
        run();
        if (!ec) {
            // Headers and body may go out in separate writes: Nagle would add ~40 ms.
            m_stream.socket().set_option(tcp::no_delay(true), ec);
            m_open = true;
        }
        return ec;
    }

    void run() {
        m_io.restart();
        m_io.run();
    }

    std::string m_host;
    std::string m_port;
    std::string m_path;
    std::string m_body;
    std::chrono::milliseconds m_timeout;
    net::io_context m_io;
    beast::tcp_stream m_stream{m_io};
    beast::flat_buffer m_buffer;
    bool m_open = false;
};

// Connections that send nothing, held open for the whole run (and reopened
// when the server closes one, e.g. at its idle timeout), to show what idle
// clients cost everyone else.
class IdleConnections {
public:
    IdleConnections(const std::string& host, int port, unsigned count) {
        m_address.sin_family = AF_INET;
        m_address.sin_port = htons(static_cast<std::uint16_t>(port));
        boost::system::error_code ec;
        const auto address = net::ip::make_address_v4(host, ec);
        m_address.sin_addr.s_addr = htonl(ec ? INADDR_LOOPBACK : address.to_uint());
        for (unsigned i = 0; i < count; ++i) {
            m_fds.push_back(pollfd{open_one(), POLLIN, 0});
        }
        m_thread = std::thread([this] { hold(); });
    }

    ~IdleConnections() { stop(); }

    // Closes them all; the number of connections the server closed and that were reopened.
    std::int64_t stop() {
        if (m_thread.joinable()) {
            m_stop = true;
            m_thread.join();
            for (const auto& fd : m_fds) {
                if (fd.fd >= 0) {
                    close(fd.fd);
                }
            }
        }
        return m_reopened;
    }

    std::size_t open_now() const {
        return static_cast<std::size_t>(std::count_if(m_fds.begin(), m_fds.end(), [](const pollfd& fd) { return fd.fd >= 0; }));
    }

private:
    int open_one() const {
        const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd >= 0 && connect(fd, reinterpret_cast<const sockaddr*>(&m_address), sizeof m_address) != 0) {
            close(fd);
            return -1;
        }
        return fd;
    }

    void hold() {
        char discard[4096];
        while (!m_stop) {
            if (poll(m_fds.data(), m_fds.size(), 100) <= 0) {
                continue;
            }
            for (auto& fd : m_fds) {
                if (fd.fd >= 0 && fd.revents) {
                    if (recv(fd.fd, discard, sizeof discard, MSG_DONTWAIT) > 0) {
                        continue;  // a 503 from a server over its budget: read it, the close follows
                    }
                    close(fd.fd);
                    fd.fd = open_one();
                    ++m_reopened;
                }
            }
        }
    }

    sockaddr_in m_address{};
    std::vector<pollfd> m_fds;
    std::atomic<bool> m_stop{false};
    std::int64_t m_reopened = 0;
    std::thread m_thread;
};

// A pipe whose ends are closed on exec; posix_spawn's dup2 clears the flag on the child's copy.
struct Pipe {
    int read_fd = -1;
    int write_fd = -1;
    Pipe() {
        int fds[2];
        if (pipe2(fds, O_CLOEXEC) == 0) {
            read_fd = fds[0];
            write_fd = fds[1];
        }
    }
    ~Pipe() {
        close_read();
        close_write();
    }
    Pipe(const Pipe&) = delete;
    Pipe& operator=(const Pipe&) = delete;
    bool ok() const { return read_fd >= 0; }
    void close_read() {
        if (read_fd >= 0) {
            close(read_fd);
            read_fd = -1;
        }
    }
    void close_write() {
        if (write_fd >= 0) {
            close(write_fd);
            write_fd = -1;
        }
    }
};

// Runs the script as a bare `python3 -I` process per request: no sandbox, no server.
class BaselineTarget {
public:
    explicit BaselineTarget(const Options& options)
        : m_python(options.python), m_script_path(options.script_path),
          m_timeout(std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(options.timeout_s))) {}

    Check execute(const std::optional<json::value>& expected) {
        Pipe out;
        Pipe err;
        if (!out.ok() || !err.ok()) {
            return Failure{"spawn", "pipe2 failed"};
        }
        posix_spawn_file_actions_t actions;
        posix_spawn_file_actions_init(&actions);
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
        posix_spawn_file_actions_adddup2(&actions, out.write_fd, 1);
        posix_spawn_file_actions_adddup2(&actions, err.write_fd, 2);
        std::vector<std::string> args = {m_python, "-I", "-c", k_baseline_driver, m_script_path};
        std::vector<char*> argv;
        for (auto& arg : args) {
            argv.push_back(arg.data());
        }
        argv.push_back(nullptr);
        pid_t pid = 0;
        const int spawn_error = posix_spawn(&pid, m_python.c_str(), &actions, nullptr, argv.data(), environ);
        posix_spawn_file_actions_destroy(&actions);
        if (spawn_error != 0) {
            return Failure{"spawn", "posix_spawn " + m_python + ": " + std::strerror(spawn_error)};
        }
        out.close_write();
        err.close_write();

        std::string stdout_text;
        std::string stderr_text;
        const bool finished = drain(out.read_fd, stdout_text, err.read_fd, stderr_text);
        if (!finished) {
            kill(pid, SIGKILL);
        }
        int wait_status = 0;
        while (waitpid(pid, &wait_status, 0) < 0 && errno == EINTR) {
        }
        if (!finished) {
            return Failure{"timeout", "no exit within the timeout"};
        }
        if (!WIFEXITED(wait_status) || WEXITSTATUS(wait_status) != 0) {
            return Failure{"exit_status", "status " + std::to_string(wait_status) + ": " + excerpt(stderr_text)};
        }
        while (!stdout_text.empty() && stdout_text.back() == '\n') {
            stdout_text.pop_back();
        }
        const auto last_line = stdout_text.substr(stdout_text.rfind('\n') + 1);
        auto result = parse_json(last_line);
        if (!result) {
            return Failure{"bad_body", "last line is not JSON: " + excerpt(last_line)};
        }
        return check_result(*result, expected);
    }

private:
    // Reads both pipes together (one after the other could deadlock) until both
    // close; false when the timeout passes or the output grows past its cap.
    bool drain(int out_fd, std::string& out_text, int err_fd, std::string& err_text) const {
        const auto deadline = Clock::now() + m_timeout;
        pollfd fds[2] = {{out_fd, POLLIN, 0}, {err_fd, POLLIN, 0}};
        std::string* texts[2] = {&out_text, &err_text};
        int open_fds = 2;
        char buffer[65536];
        while (open_fds > 0) {
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
            if (left.count() <= 0) {
                return false;
            }
            const int ready = poll(fds, 2, static_cast<int>(left.count()));
            if (ready < 0 && errno != EINTR) {
                return false;
            }
            for (int i = 0; i < 2 && ready > 0; ++i) {
                if (fds[i].fd < 0 || fds[i].revents == 0) {
                    continue;
                }
                const ssize_t n = read(fds[i].fd, buffer, sizeof buffer);
                if (n > 0) {
                    texts[i]->append(buffer, static_cast<std::size_t>(n));
                    if (texts[i]->size() > k_max_baseline_output_bytes) {
                        return false;
                    }
                } else if (n == 0 || errno != EINTR) {
                    fds[i].fd = -1;
                    --open_fds;
                }
            }
        }
        return true;
    }

    std::string m_python;
    std::string m_script_path;
    Clock::duration m_timeout;
};

struct WorkerStats {
    std::vector<double> latencies_ms;  // verified requests only
    std::map<std::string, std::int64_t> errors;
    std::int64_t warmup_errors = 0;
    std::optional<Failure> first_error;
};

struct RssSample {
    std::uint64_t start_vmrss_bytes = 0;
    std::uint64_t peak_vmrss_bytes = 0;
    std::uint64_t vmhwm_bytes = 0;
    std::uint64_t peak_tree_pss_bytes = 0;  // the process and all its descendants (jails, scripts)
    std::size_t peak_tree_processes = 0;
    bool lost = false;  // the process went away during the run
};

// A field of /proc/PID/status or /proc/PID/smaps_rollup in bytes ("VmRSS:  1234 kB");
// empty when unreadable.
std::optional<std::uint64_t> read_proc_kb(int pid, const char* file, const std::string& field) {
    std::ifstream status("/proc/" + std::to_string(pid) + "/" + file);
    std::string line;
    while (std::getline(status, line)) {
        if (line.rfind(field + ":", 0) == 0) {
            return std::stoull(line.substr(field.size() + 1)) * 1024;
        }
    }
    return std::nullopt;
}

std::optional<std::uint64_t> read_status_kb(int pid, const std::string& field) {
    return read_proc_kb(pid, "status", field);
}

// The fields of /proc/PID/stat after the command, so that [0] is the state
// (field 3) and [1] the parent (field 4); empty when the process is gone.
std::vector<std::string> stat_fields(int pid) {
    std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
    std::string text;
    std::getline(stat, text);
    // The command name may hold spaces and parentheses: fields resume after the last ')'.
    const auto close = text.rfind(')');
    if (close == std::string::npos) {
        return {};
    }
    std::istringstream fields(text.substr(close + 1));
    return {std::istream_iterator<std::string>(fields), std::istream_iterator<std::string>()};
}

// `root` and every descendant, from the parent ids in /proc/*/stat.
std::vector<int> process_tree(int root) {
    std::multimap<int, int> children;
    std::error_code error;
    for (const auto& entry : std::filesystem::directory_iterator("/proc", error)) {
        const std::string name = entry.path().filename();
        if (name.empty() || !std::all_of(name.begin(), name.end(), [](char c) { return c >= '0' && c <= '9'; })) {
            continue;
        }
        const std::vector<std::string> fields = stat_fields(std::stoi(name));
        if (fields.size() > 1) {
            children.emplace(std::stoi(fields[1]), std::stoi(name));
        }
    }
    std::vector<int> tree = {root};
    for (std::size_t i = 0; i < tree.size(); ++i) {
        const auto [begin, end] = children.equal_range(tree[i]);
        for (auto it = begin; it != end; ++it) {
            tree.push_back(it->second);
        }
    }
    return tree;
}

// CPU time in clock ticks of one process and the children it has reaped
// (utime, stime, cutime, cstime of /proc/PID/stat); empty when it is gone.
std::optional<std::uint64_t> process_cpu_ticks(int pid) {
    const std::vector<std::string> values = stat_fields(pid);
    // values[0] is field 3: utime is field 14 .. cstime 17.
    if (values.size() < 15) {
        return std::nullopt;
    }
    std::uint64_t ticks = 0;
    for (std::size_t field = 14; field <= 17; ++field) {
        ticks += std::stoull(values[field - 3]);
    }
    return ticks;
}

// All CPU a process tree has used so far: every live process's own time plus
// what it has reaped, so runs that ended count through their reaper.
std::uint64_t tree_cpu_ticks(int root) {
    std::uint64_t ticks = 0;
    for (const int pid : process_tree(root)) {
        ticks += process_cpu_ticks(pid).value_or(0);
    }
    return ticks;
}

// Busy CPU time of the whole machine in clock ticks (/proc/stat: all but
// idle and iowait), which also counts the kernel's deferred work (namespace
// and cgroup teardown) that no process is charged for.
std::uint64_t host_busy_ticks() {
    std::ifstream stat("/proc/stat");
    std::string cpu;
    std::uint64_t user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0;
    stat >> cpu >> user >> nice >> system >> idle >> iowait >> irq >> softirq >> steal;
    return user + nice + system + irq + softirq;
}

// CPU used between construction and stop(): the server's process tree (when
// a pid is given), the whole host less this load generator, and this load
// generator with the processes it spawned (the bare-Python target).
class CpuMeter {
public:
    struct Spent {
        std::optional<double> tree_ms;
        double host_ms = 0;        // host busy time less this process's own
        double self_ms = 0;        // this process's threads only
        double children_ms = 0;    // processes this one spawned and reaped
    };

    explicit CpuMeter(int server_pid) : m_server_pid(server_pid) {
        m_tree_start = m_server_pid > 0 ? tree_cpu_ticks(m_server_pid) : 0;
        m_host_start = host_busy_ticks();
        m_self_start = usage_ms(RUSAGE_SELF);
        m_children_start = usage_ms(RUSAGE_CHILDREN);
    }

    Spent stop() const {
        const double tick_ms = 1e3 / static_cast<double>(sysconf(_SC_CLK_TCK));
        Spent spent;
        if (m_server_pid > 0) {
            // Less than at the start: a process left the tree unreaped by it
            // (or was replaced), and its time with it: no figure then.
            const std::uint64_t end = tree_cpu_ticks(m_server_pid);
            if (end >= m_tree_start) {
                spent.tree_ms = static_cast<double>(end - m_tree_start) * tick_ms;
            }
        }
        spent.self_ms = usage_ms(RUSAGE_SELF) - m_self_start;
        spent.children_ms = usage_ms(RUSAGE_CHILDREN) - m_children_start;
        spent.host_ms = static_cast<double>(host_busy_ticks() - m_host_start) * tick_ms - spent.self_ms;
        return spent;
    }

private:
    static double usage_ms(int who) {
        rusage usage{};
        getrusage(who, &usage);
        return static_cast<double>(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) * 1e3 +
               static_cast<double>(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e3;
    }

    int m_server_pid;
    std::uint64_t m_tree_start = 0;
    std::uint64_t m_host_start = 0;
    double m_self_start = 0;
    double m_children_start = 0;
};

// Samples a process's VmRSS, and its tree's PSS, until stopped; VmHWM is read at the end.
class RssSampler {
public:
    explicit RssSampler(int pid) : m_pid(pid) {
        m_sample.start_vmrss_bytes = read_status_kb(pid, "VmRSS").value_or(0);
        m_sample.peak_vmrss_bytes = m_sample.start_vmrss_bytes;
        m_thread = std::thread([this] { loop(); });
    }

    RssSample stop() {
        {
            std::lock_guard lock(m_mutex);
            m_stopped = true;
        }
        m_wake.notify_all();
        m_thread.join();
        if (auto hwm = read_status_kb(m_pid, "VmHWM")) {
            m_sample.vmhwm_bytes = *hwm;
        } else {
            m_sample.lost = true;
        }
        return m_sample;
    }

private:
    void loop() {
        std::unique_lock lock(m_mutex);
        for (int tick = 0; !m_wake.wait_for(lock, k_rss_sample_interval, [this] { return m_stopped; }); ++tick) {
            if (auto rss = read_status_kb(m_pid, "VmRSS")) {
                m_sample.peak_vmrss_bytes = std::max(m_sample.peak_vmrss_bytes, *rss);
            } else {
                m_sample.lost = true;
            }
            if (tick % k_tree_sample_every == 0) {
                sample_tree();
            }
        }
    }

    // PSS rather than RSS, so that pages shared between the processes count once.
    void sample_tree() {
        const std::vector<int> tree = process_tree(m_pid);
        std::uint64_t pss = 0;
        for (const int pid : tree) {
            pss += read_proc_kb(pid, "smaps_rollup", "Pss").value_or(0);
        }
        m_sample.peak_tree_pss_bytes = std::max(m_sample.peak_tree_pss_bytes, pss);
        m_sample.peak_tree_processes = std::max(m_sample.peak_tree_processes, tree.size());
    }

    int m_pid;
    RssSample m_sample;
    std::mutex m_mutex;
    std::condition_variable m_wake;
    bool m_stopped = false;
    std::thread m_thread;
};

struct Report {
    std::int64_t ok = 0;
    std::int64_t errors = 0;
    std::int64_t warmup_errors = 0;
    std::map<std::string, std::int64_t> error_kinds;
    std::optional<Failure> first_error;
    double elapsed_s = 0;
    double requests_per_s = 0;
    double p50_ms = 0, p90_ms = 0, p99_ms = 0, max_ms = 0, mean_ms = 0;
    std::optional<RssSample> rss;
    CpuMeter::Spent cpu;              // over the measured requests, warmup excluded
    std::size_t idle_open = 0;        // idle connections still open at the end
    std::int64_t idle_reopened = 0;   // idle connections the server closed during the run
};

// Nearest-rank percentile of sorted values.
double percentile(const std::vector<double>& sorted, double p) {
    if (sorted.empty()) {
        return 0;
    }
    const auto rank = static_cast<std::size_t>(std::ceil(p / 100.0 * static_cast<double>(sorted.size())));
    return sorted[std::clamp<std::size_t>(rank, 1, sorted.size()) - 1];
}

template <typename Target>
void work(Target& target, const std::optional<json::value>& expected, unsigned warmup, std::latch& warmed,
          std::latch& go, std::atomic<std::int64_t>& remaining, const Clock::time_point& deadline,
          WorkerStats& stats) {
    for (unsigned i = 0; i < warmup; ++i) {
        if (auto failure = target.execute(expected)) {
            ++stats.warmup_errors;
            if (!stats.first_error) {
                stats.first_error = failure;
            }
        }
    }
    warmed.count_down();
    go.wait();
    while (remaining.fetch_sub(1) > 0 && Clock::now() < deadline) {
        const auto start = Clock::now();
        auto failure = target.execute(expected);
        const std::chrono::duration<double, std::milli> latency = Clock::now() - start;
        if (failure) {
            ++stats.errors[failure->kind];
            if (!stats.first_error) {
                stats.first_error = std::move(failure);
            }
        } else {
            stats.latencies_ms.push_back(latency.count());
        }
    }
}

template <typename MakeTarget>
Report run_load(const Options& options, const std::optional<json::value>& expected, MakeTarget make_target) {
    const unsigned workers = options.concurrency;
    std::vector<WorkerStats> stats(workers);
    std::latch warmed(workers);
    std::latch go(1);
    std::atomic<std::int64_t> remaining(options.requests > 0 ? options.requests
                                                             : std::numeric_limits<std::int64_t>::max());
    Clock::time_point deadline = Clock::time_point::max();

    std::optional<RssSampler> sampler;
    if (options.server_pid > 0) {
        sampler.emplace(options.server_pid);
    }
    std::vector<std::thread> threads;
    for (unsigned i = 0; i < workers; ++i) {
        const unsigned warmup = options.warmup / workers + (i < options.warmup % workers ? 1 : 0);
        threads.emplace_back([&, i, warmup] {
            auto target = make_target();
            work(target, expected, warmup, warmed, go, remaining, deadline, stats[i]);
        });
    }
    warmed.wait();
    const CpuMeter cpu(options.server_pid);
    const auto start = Clock::now();
    if (options.duration_s > 0) {
        deadline = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(options.duration_s));
    }
    go.count_down();
    for (auto& thread : threads) {
        thread.join();
    }
    const std::chrono::duration<double> elapsed = Clock::now() - start;

    Report report;
    report.cpu = cpu.stop();
    std::vector<double> latencies;
    for (auto& worker : stats) {
        latencies.insert(latencies.end(), worker.latencies_ms.begin(), worker.latencies_ms.end());
        for (const auto& [kind, count] : worker.errors) {
            report.error_kinds[kind] += count;
            report.errors += count;
        }
        report.warmup_errors += worker.warmup_errors;
        if (!report.first_error && worker.first_error) {
            report.first_error = worker.first_error;
        }
    }
    std::sort(latencies.begin(), latencies.end());
    report.ok = static_cast<std::int64_t>(latencies.size());
    report.elapsed_s = elapsed.count();
    report.requests_per_s = report.elapsed_s > 0 ? static_cast<double>(report.ok) / report.elapsed_s : 0;
    report.p50_ms = percentile(latencies, 50);
    report.p90_ms = percentile(latencies, 90);
    report.p99_ms = percentile(latencies, 99);
    report.max_ms = latencies.empty() ? 0 : latencies.back();
    double sum = 0;
    for (double latency : latencies) {
        sum += latency;
    }
    report.mean_ms = latencies.empty() ? 0 : sum / static_cast<double>(latencies.size());
    if (sampler) {
        report.rss = sampler->stop();
    }
    return report;
}

double mib(std::uint64_t bytes) {
    return static_cast<double>(bytes) / (1u << 20);
}

void print_report(const Options& options, const std::string& target, const Report& report) {
    std::printf("safepy-load: %s via %s, concurrency %u\n", options.script_path.c_str(), target.c_str(),
                options.concurrency);
    std::printf("  requests    %lld verified, %lld errors in %.2f s (warmup %u, %lld warmup errors)\n",
                static_cast<long long>(report.ok), static_cast<long long>(report.errors), report.elapsed_s,
                options.warmup, static_cast<long long>(report.warmup_errors));
    std::printf("  latency ms  p50 %.1f  p90 %.1f  p99 %.1f  max %.1f  mean %.1f\n", report.p50_ms, report.p90_ms,
                report.p99_ms, report.max_ms, report.mean_ms);
    std::printf("  throughput  %.2f req/s\n", report.requests_per_s);
    if (options.idle_connections > 0) {
        std::printf("  idle        %zu of %u still open at the end, %lld closed by the server and reopened\n",
                    report.idle_open, options.idle_connections, static_cast<long long>(report.idle_reopened));
    }
    if (report.rss) {
        std::printf("  server RSS  start %.1f MiB, peak VmRSS %.1f MiB, VmHWM %.1f MiB%s\n",
                    mib(report.rss->start_vmrss_bytes), mib(report.rss->peak_vmrss_bytes),
                    mib(report.rss->vmhwm_bytes), report.rss->lost ? " (process went away during the run)" : "");
        std::printf("  server tree peak PSS %.1f MiB, at most %zu processes (server, jails, scripts)\n",
                    mib(report.rss->peak_tree_pss_bytes), report.rss->peak_tree_processes);
    }
    const double per = report.ok > 0 ? 1.0 / static_cast<double>(report.ok) : 0;
    std::printf("  CPU ms/req  host %.2f (all CPUs busy, less this generator)", report.cpu.host_ms * per);
    if (report.cpu.tree_ms) {
        std::printf("  server tree %.2f", *report.cpu.tree_ms * per);
    } else if (options.server_pid > 0) {
        std::printf("  server tree lost (a process left the tree)");
    }
    if (report.cpu.children_ms > 0) {
        std::printf("  spawned processes %.2f", report.cpu.children_ms * per);
    }
    std::printf("  generator %.2f\n", report.cpu.self_ms * per);
    for (const auto& [kind, count] : report.error_kinds) {
        std::printf("  error       %s: %lld\n", kind.c_str(), static_cast<long long>(count));
    }
    if (report.first_error) {
        std::printf("  first error %s: %s\n", report.first_error->kind.c_str(), report.first_error->message.c_str());
    }
}

json::object report_json(const Options& options, const std::string& target, const Report& report) {
    json::object errors;
    for (const auto& [kind, count] : report.error_kinds) {
        errors[kind] = count;
    }
    json::object out{
        {"label", options.label},
        {"idle_connections", options.idle_connections},
        {"idle_open_at_end", report.idle_open},
        {"idle_reopened", report.idle_reopened},
        {"mode", options.baseline ? "baseline" : "server"},
        {"target", target},
        {"script", options.script_path},
        {"concurrency", options.concurrency},
        {"warmup", options.warmup},
        {"warmup_errors", report.warmup_errors},
        {"requests_ok", report.ok},
        {"errors", report.errors},
        {"error_kinds", std::move(errors)},
        {"elapsed_s", report.elapsed_s},
        {"requests_per_s", report.requests_per_s},
        {"latency_ms",
         {{"p50", report.p50_ms}, {"p90", report.p90_ms}, {"p99", report.p99_ms}, {"max", report.max_ms},
          {"mean", report.mean_ms}}},
    };
    out["cpu_ms"] = {{"host", report.cpu.host_ms},
                     {"server_tree", report.cpu.tree_ms ? json::value(*report.cpu.tree_ms) : json::value(nullptr)},
                     {"spawned", report.cpu.children_ms},
                     {"generator", report.cpu.self_ms}};
    out["first_error"] = report.first_error ? json::value(report.first_error->kind + ": " + report.first_error->message)
                                            : json::value(nullptr);
    if (report.rss) {
        out["server_pid"] = options.server_pid;
        out["server_rss_bytes"] = {{"start_vmrss", report.rss->start_vmrss_bytes},
                                   {"peak_vmrss", report.rss->peak_vmrss_bytes},
                                   {"vmhwm", report.rss->vmhwm_bytes},
                                   {"peak_tree_pss", report.rss->peak_tree_pss_bytes},
                                   {"peak_tree_processes", report.rss->peak_tree_processes},
                                   {"lost", report.rss->lost}};
    } else {
        out["server_rss_bytes"] = nullptr;
    }
    return out;
}

struct Url {
    std::string host;
    std::string port = "80";
    std::string path = "/execute";
};

// Splits "http://host:port/path" (the path defaults to /execute); empty when not http://.
std::optional<Url> split_url(const std::string& url) {
    constexpr std::string_view k_scheme = "http://";
    if (url.rfind(k_scheme, 0) != 0) {
        return std::nullopt;
    }
    Url parts;
    const auto path_start = url.find('/', k_scheme.size());
    std::string authority = url.substr(k_scheme.size(), path_start == std::string::npos ? std::string::npos
                                                                                          : path_start - k_scheme.size());
    if (path_start != std::string::npos) {
        parts.path = url.substr(path_start);
    }
    if (const auto colon = authority.rfind(':'); colon != std::string::npos) {
        parts.port = authority.substr(colon + 1);
        authority.resize(colon);
    }
    parts.host = authority;
    return parts.host.empty() ? std::nullopt : std::optional<Url>(parts);
}

// Idle connections and many workers need descriptors: take what the hard limit allows.
void raise_open_file_limit() {
    rlimit files{};
    if (getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur < files.rlim_max) {
        files.rlim_cur = files.rlim_max;
        setrlimit(RLIMIT_NOFILE, &files);
    }
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"safepy-load: drive safepy-server (or bare python3 with --baseline) with one script and "
                 "report latency percentiles, throughput and errors. Each response is verified: HTTP 200, "
                 "a JSON body without \"error\", and \"result\" equal to --expect. Latencies and throughput "
                 "count verified requests only."};
    Options options;
    auto* url = app.add_option("--url", options.url, "server endpoint, e.g. http://127.0.0.1:8080/execute");
    auto* baseline = app.add_flag("--baseline", options.baseline,
                                  "run the script as a bare `python3 -I` process per request instead");
    url->excludes(baseline);
    app.add_option("--python", options.python, "Python for --baseline")->capture_default_str();
    app.add_option("--script", options.script_path, "the Python script whose main() is run")
        ->required()
        ->check(CLI::ExistingFile);
    app.add_option("--concurrency,-c", options.concurrency, "worker threads, one connection each")
        ->check(CLI::Range(1u, 256u))
        ->capture_default_str();
    auto* duration = app.add_option("--duration", options.duration_s, "seconds to measure for")
        ->check(CLI::PositiveNumber);
    auto* requests = app.add_option("--requests,-n", options.requests, "requests to measure")
        ->check(CLI::PositiveNumber);
    app.add_option("--warmup", options.warmup, "requests before measuring, spread over the workers")
        ->capture_default_str();
    app.add_option("--expect", options.expect, "the JSON value every result must equal");
    app.add_option("--json", options.json_path, "also write the report as JSON to this file");
    app.add_option("--server-pid", options.server_pid, "sample this process's RSS, its process tree's PSS, and the tree's CPU time, from /proc during the run")
        ->check(CLI::PositiveNumber);
    app.add_option("--timeout", options.timeout_s, "seconds before one request counts as failed")
        ->check(CLI::PositiveNumber)
        ->capture_default_str();
    app.add_option("--label", options.label, "a name for this run in the JSON report");
    app.add_option("--idle-connections", options.idle_connections,
                   "hold this many connections open, sending nothing, while the load runs (reopened when closed)")
        ->capture_default_str();
    try {
        app.parse(argc, argv);
        if (!options.baseline && options.url.empty()) {
            throw CLI::ValidationError("--url or --baseline is required");
        }
        if (duration->count() == 0 && requests->count() == 0) {
            throw CLI::ValidationError("--duration or --requests is required");
        }
    } catch (const CLI::ParseError& error) {
        const int code = app.exit(error);
        return code == 0 ? 0 : k_exit_usage;
    }

    std::optional<json::value> expected;
    if (options.expect) {
        expected = parse_json(*options.expect);
        if (!expected) {
            std::cerr << "safepy-load: --expect is not JSON\n";
            return k_exit_usage;
        }
    }
    std::ifstream script_file(options.script_path, std::ios::binary);
    const std::string script{std::istreambuf_iterator<char>(script_file), std::istreambuf_iterator<char>()};
    if (!script_file) {
        std::cerr << "safepy-load: cannot read " << options.script_path << "\n";
        return k_exit_usage;
    }

    Report report;
    std::string target;
    if (options.baseline) {
        target = options.python + " -I";
        report = run_load(options, expected, [&] { return BaselineTarget(options); });
    } else {
        const auto url = split_url(options.url);
        if (!url) {
            std::cerr << "safepy-load: --url must be http://HOST:PORT/PATH\n";
            return k_exit_usage;
        }
        target = options.url;
        raise_open_file_limit();
        std::optional<IdleConnections> idle;
        if (options.idle_connections > 0) {
            idle.emplace(url->host, std::stoi(url->port), options.idle_connections);
            std::printf("  idle        %zu of %u connections open before the load\n", idle->open_now(),
                        options.idle_connections);
        }
        const std::string body = json::serialize(json::object{{"script", script}});
        report = run_load(options, expected, [&] { return HttpTarget(url->host, url->port, url->path, body, options); });
        if (idle) {
            report.idle_open = idle->open_now();
            report.idle_reopened = idle->stop();
        }
    }

    print_report(options, target, report);
    if (!options.json_path.empty()) {
        std::ofstream out(options.json_path, std::ios::binary | std::ios::trunc);
        out << json::serialize(report_json(options, target, report)) << "\n";
        if (!out) {
            std::cerr << "safepy-load: cannot write " << options.json_path << "\n";
            return k_exit_usage;
        }
    }
    return report.errors + report.warmup_errors > 0 ? k_exit_errors : 0;
}

// What the server tests share: the README's requests, a plain TCP client, a
// small keep-alive HTTP client over it, and a fixture that starts the real
// server on a free port of 127.0.0.1 with its runs under bubblewrap.
#pragma once

#include "server.hpp"

#include "safepy/check.hpp"
#include "safepy/http.hpp"
#include "safepy/safepy.hpp"

#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <future>
#include <mutex>
#include <regex>
#include <set>
#include <sstream>
#include <thread>
#include <vector>

namespace safepy::server::test_support {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// The README's three examples: the exact bytes curl sends, and the exact answers.
// GET /healthz: this build's version, as CMake's project() gives it.
const std::string k_health_body = "{\"status\": \"ok\", \"version\": \"" + std::string(version()) + "\"}";
const std::string k_hello_body = R"({"script": "def main(): return {\"result\": \"Hello, World!\"}"})";
const std::string k_hello_envelope = R"({"result": {"result": "Hello, World!"}, "stdout": ""})";
const std::string k_numbers_body =
    R"({"script": "def main():\n    print(\"computing\")\n    return {\"sum\": sum(range(10)), \"pi\": 3.14}"})";
const std::string k_numbers_envelope = R"({"result": {"sum": 45, "pi": 3.14}, "stdout": "computing\n"})";
const std::string k_no_main_body = R"({"script": "def helper(): return 1"})";
const std::string k_no_main_envelope =
    R"({"error": "Script must contain a main() function", "status": "invalid_script", "stdout": "", "stderr": ""})";

inline std::string execute_body(std::string_view script, std::string_view limits = "") {
    std::string body = "{\"script\": " + json_quote(script);
    if (!limits.empty()) {
        body += ", \"limits\": " + std::string(limits);
    }
    return body + "}";
}

inline std::string sleeper(double seconds) {
    return "import time\ndef main():\n    time.sleep(" + std::to_string(seconds) + ")\n    return {\"slept\": True}\n";
}

inline std::string error_json(std::string_view message, std::string_view status = "invalid_request") {
    return "{\"error\": " + json_quote(message) + ", \"status\": " + json_quote(status) + "}";
}

inline std::vector<pid_t> children_of_this_process() {
    std::vector<pid_t> children;
    DIR* proc = opendir("/proc");
    while (proc) {
        const dirent* entry = readdir(proc);
        if (!entry) {
            break;
        }
        if (std::string_view(entry->d_name).find_first_not_of("0123456789") != std::string_view::npos) {
            continue;
        }
        std::ifstream stat(std::string("/proc/") + entry->d_name + "/stat");
        std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
        const auto close = text.rfind(')');
        if (close == std::string::npos) {
            continue;
        }
        std::istringstream fields(text.substr(close + 1));
        std::string state;
        pid_t parent = 0;
        if (fields >> state >> parent && parent == getpid() && state != "Z") {
            children.push_back(std::stoi(entry->d_name));
        }
    }
    if (proc) {
        closedir(proc);
    }
    return children;
}

inline std::uint64_t resident_bytes() {
    std::ifstream status("/proc/self/status");
    std::string line;
    while (std::getline(status, line)) {
        if (line.rfind("VmRSS:", 0) == 0) {
            return std::stoull(line.substr(6)) * 1024;
        }
    }
    return 0;
}

// A plain TCP connection, for requests no HTTP client library would send.
class Raw {
public:
    explicit Raw(int port) : m_fd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) {
        sockaddr_in address{};
        address.sin_family = AF_INET;
        address.sin_port = htons(static_cast<std::uint16_t>(port));
        address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        m_connected = connect(m_fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0;
    }
    ~Raw() { close(m_fd); }
    Raw(const Raw&) = delete;
    Raw& operator=(const Raw&) = delete;

    bool connected() const { return m_connected; }

    bool send_all(std::string_view data) {
        while (!data.empty()) {
            const ssize_t n = send(m_fd, data.data(), data.size(), MSG_NOSIGNAL);
            if (n <= 0) {
                return false;
            }
            data.remove_prefix(static_cast<std::size_t>(n));
        }
        return true;
    }

    // Everything until the server closes or `timeout` passes; `closed` says which.
    std::string read_until_close(std::chrono::milliseconds timeout, bool* closed = nullptr) {
        std::string out = std::move(m_pending);
        m_pending.clear();
        const auto deadline = Clock::now() + timeout;
        bool eof = false;
        while (!eof && Clock::now() < deadline) {
            eof = !read_some(out, deadline);
        }
        if (closed) {
            *closed = eof;
        }
        return out;
    }

    // One response: headers and a Content-Length body.
    std::string read_response(std::chrono::milliseconds timeout = 10s) {
        const auto deadline = Clock::now() + timeout;
        std::string out = std::move(m_pending);
        m_pending.clear();
        for (;;) {
            const auto end = out.find("\r\n\r\n");
            if (end != std::string::npos) {
                const std::size_t total = end + 4 + content_length(out.substr(0, end));
                if (out.size() >= total) {
                    m_pending = out.substr(total);
                    out.resize(total);
                    return out;
                }
            }
            if (Clock::now() >= deadline || !read_some(out, deadline)) {
                return out;
            }
        }
    }

private:
    static std::size_t content_length(const std::string& headers) {
        static const std::regex pattern("\r\ncontent-length: *([0-9]+)", std::regex::icase);
        std::smatch match;
        return std::regex_search(headers, match, pattern) ? std::stoul(match[1]) : 0;
    }

    // False on end of stream or error.
    bool read_some(std::string& out, Clock::time_point deadline) {
        pollfd fd{m_fd, POLLIN, 0};
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
        if (poll(&fd, 1, static_cast<int>(std::max<std::int64_t>(left.count(), 0))) <= 0) {
            return true;
        }
        char buffer[65536];
        const ssize_t n = recv(m_fd, buffer, sizeof buffer, 0);
        if (n <= 0) {
            return false;
        }
        out.append(buffer, static_cast<std::size_t>(n));
        return true;
    }

    int m_fd;
    bool m_connected = false;
    std::string m_pending;
};

// One response as the tests read it.
struct Reply {
    int status = 0;
    std::string head;  // status line and header lines
    std::string body;

    // The first value of header `name` (any case), or "".
    std::string get_header_value(const std::string& name) const {
        const std::regex pattern("\r\n" + name + ": *([^\r]*)\r\n", std::regex::icase);
        std::smatch match;
        return std::regex_search(head, match, pattern) ? std::string(match[1]) : std::string();
    }
};

// A request's reply, or why there is none.
class Result {
public:
    Result(std::optional<Reply> reply, std::string error) : m_reply(std::move(reply)), m_error(std::move(error)) {}
    explicit operator bool() const { return m_reply.has_value(); }
    const Reply* operator->() const { return &*m_reply; }
    const std::string& error() const { return m_error; }

private:
    std::optional<Reply> m_reply;
    std::string m_error;
};

// A keep-alive HTTP/1.1 client: one connection, reopened when the server closed it.
class Client {
public:
    explicit Client(int port, std::chrono::milliseconds timeout = 60s) : m_port(port), m_timeout(timeout) {}

    Result Get(const std::string& path) { return send("GET", path, "", ""); }
    Result Post(const std::string& path, const std::string& body, const std::string& content_type) {
        return send("POST", path, body, content_type);
    }
    Result Put(const std::string& path, const std::string& body, const std::string& content_type) {
        return send("PUT", path, body, content_type);
    }

    Result send(const std::string& method, const std::string& path, const std::string& body,
                const std::string& content_type) {
        std::string request = method + " " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\n";
        if (!content_type.empty()) {
            request += "Content-Type: " + content_type + "\r\n";
        }
        if (!body.empty() || method == "POST" || method == "PUT") {
            request += "Content-Length: " + std::to_string(body.size()) + "\r\n";
        }
        request += "\r\n" + body;
        // A kept connection the server closed while idle is reopened once.
        for (int attempt = 0; attempt < 2; ++attempt) {
            const bool reused = m_raw != nullptr;
            if (!m_raw) {
                m_raw = std::make_unique<Raw>(m_port);
                if (!m_raw->connected()) {
                    m_raw.reset();
                    return Result(std::nullopt, "connect failed");
                }
            }
            const bool sent = m_raw->send_all(request);
            const std::string response = sent ? m_raw->read_response(m_timeout) : std::string();
            if (response.empty() && reused) {
                m_raw.reset();
                continue;
            }
            auto reply = parse(response);
            if (!reply || reply->get_header_value("Connection") == "close") {
                m_raw.reset();
            }
            if (!reply) {
                return Result(std::nullopt, response.empty() ? "no response" : "incomplete response: " + response.substr(0, 200));
            }
            return Result(std::move(reply), "");
        }
        return Result(std::nullopt, "no response");
    }

private:
    static std::optional<Reply> parse(const std::string& response) {
        const auto end = response.find("\r\n\r\n");
        if (end == std::string::npos || response.rfind("HTTP/1.1 ", 0) != 0 || response.size() < 12) {
            return std::nullopt;
        }
        Reply reply;
        reply.status = std::stoi(response.substr(9, 3));
        reply.head = response.substr(0, end + 2);
        reply.body = response.substr(end + 4);
        const std::string length = reply.get_header_value("Content-Length");
        if (length.empty() || reply.body.size() != std::stoul(length)) {
            return std::nullopt;
        }
        return reply;
    }

    int m_port;
    std::chrono::milliseconds m_timeout;
    std::unique_ptr<Raw> m_raw;
};

inline int status_of(const std::string& response) {
    return response.size() > 12 && response.rfind("HTTP/1.1 ", 0) == 0 ? std::stoi(response.substr(9, 3)) : 0;
}

inline std::string body_of(const std::string& response) {
    const auto end = response.find("\r\n\r\n");
    return end == std::string::npos ? "" : response.substr(end + 4);
}

inline bool has_header(const std::string& response, const std::string& line) {
    return response.find("\r\n" + line + "\r\n") != std::string::npos;
}

class ServerFixture : public ::testing::Test {
protected:
    void TearDown() override {
        if (m_server) {
            m_server->stop(0ms);
        }
        if (HasFailure()) {
            for (const auto& line : log_lines()) {
                std::cerr << "server log: " << line << "\n";
            }
        }
    }

    // Starts a server on a free port of 127.0.0.1 with its runs under bubblewrap.
    void start(ServerSettings settings = {}, const std::string& bwrap_path = "", bool warm = false) {
        Config config;
        config.jail = JailKind::bwrap;
        config.bwrap_path = bwrap_path;
        config.maxima = settings.policy.maxima;
        config.warm = warm;
        std::string error;
        auto sandbox = Sandbox::create(config, error);
        ASSERT_NE(sandbox, nullptr) << "bubblewrap must work for the server tests: " << error;
        ASSERT_TRUE(sandbox->wait_ready(30s)) << "the warm pool did not start";
        settings.address = "127.0.0.1";
        settings.port = 0;
        settings.log = [this](std::string_view line) {
            std::lock_guard lock(m_log_mutex);
            m_log.emplace_back(line);
        };
        m_server = std::make_unique<Server>(std::move(settings), std::move(sandbox));
        const auto problem = m_server->start();
        ASSERT_EQ(problem, std::nullopt) << *problem;
        ASSERT_GT(m_server->port(), 0);
    }

    int port() const { return m_server->port(); }

    std::unique_ptr<Client> client() const { return std::make_unique<Client>(port()); }

    Result execute(const std::string& body, const std::string& content_type = "application/json") const {
        return client()->Post("/execute", body, content_type);
    }

    void expect_hello_world() const {
        const auto res = execute(k_hello_body);
        ASSERT_TRUE(res) << res.error();
        EXPECT_EQ(res->status, 200);
        EXPECT_EQ(res->body, k_hello_envelope);
    }

    void expect_error(const std::string& body, int status, const std::string& envelope,
                      const std::string& content_type = "application/json") const {
        const auto res = execute(body, content_type);
        ASSERT_TRUE(res) << res.error();
        EXPECT_EQ(res->status, status) << body.substr(0, 200);
        EXPECT_EQ(res->body, envelope) << body.substr(0, 200);
        EXPECT_EQ(res->get_header_value("Content-Type"), "application/json");
    }

    // The message of a 400 answer, checking that the body is an invalid_request error.
    std::string bad_request_message(const std::string& body) const {
        const auto res = execute(body);
        if (!res) {
            ADD_FAILURE() << res.error();
            return {};
        }
        EXPECT_EQ(res->status, 400) << body.substr(0, 200);
        static const std::regex pattern(R"re(^\{"error": "(.*)", "status": "invalid_request"\}$)re");
        std::smatch match;
        if (!std::regex_match(res->body, match, pattern)) {
            ADD_FAILURE() << "not an invalid_request body: " << res->body;
            return {};
        }
        return match[1];
    }

    std::string metrics() const {
        const auto res = client()->Get("/metrics");
        return res && res->status == 200 ? res->body : "";
    }

    bool wait_for_metric(const std::string& line, std::chrono::milliseconds timeout = 10s) const {
        const auto deadline = Clock::now() + timeout;
        while (Clock::now() < deadline) {
            if (metrics().find("\n" + line + "\n") != std::string::npos) {
                return true;
            }
            std::this_thread::sleep_for(20ms);
        }
        return false;
    }

    std::vector<std::string> log_lines() {
        std::lock_guard lock(m_log_mutex);
        return m_log;
    }

    std::unique_ptr<Server> m_server;
    std::mutex m_log_mutex;
    std::vector<std::string> m_log;
};

}  // namespace safepy::server::test_support

// HTTP as an attacker sends it, over real sockets to the real server: the
// ways cpp-httplib 0.11.4 failed (issue 9) must each fail safe on Beast.
#include "server_fixture.hpp"

#include <sys/resource.h>

namespace safepy::server {
namespace {

using namespace test_support;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

using HostileHttpTest = ServerFixture;

// A script whose stdout is exactly 1 MiB (the default cap), and its request.
const std::string k_megabyte_body =
    execute_body("import sys\ndef main():\n    sys.stdout.write('x' * (1 << 20))\n    return {}\n");

// A POST /execute that must never run: its script would print this marker.
const std::string k_hidden_script_body = execute_body("def main():\n    print('SMUGGLED')\n    return {}\n");
const std::string k_hidden_request = "POST /execute HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                     "Content-Length: " + std::to_string(k_hidden_script_body.size()) + "\r\n\r\n" +
                                     k_hidden_script_body;

std::string hex(std::size_t value) {
    std::ostringstream text;
    text << std::hex << value;
    return text.str();
}

std::chrono::microseconds process_cpu() {
    rusage usage{};
    getrusage(RUSAGE_SELF, &usage);
    return std::chrono::seconds(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) +
           std::chrono::microseconds(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec);
}

std::string post_execute(const std::string& body, const std::string& extra_headers = "") {
    return "POST /execute HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + extra_headers +
           "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
}

// The number after `name ` in the metrics text, or -1.
long metric(const std::string& text, const std::string& name) {
    const auto at = text.find("\n" + name + " ");
    return at == std::string::npos ? -1 : std::stol(text.substr(at + name.size() + 2));
}

TEST_F(HostileHttpTest, ARangeHeaderIsIgnored) {
    ASSERT_NO_FATAL_FAILURE(start());
    std::string ranges = "Range: bytes=0-";
    for (int i = 1; i < 2000; ++i) {
        ranges += ",0-";
    }
    const std::uint64_t resident_before = resident_bytes();
    for (int i = 0; i < 3; ++i) {
        Raw raw(port());
        ASSERT_TRUE(raw.send_all(post_execute(k_megabyte_body, ranges + "\r\n")));
        const std::string response = raw.read_response(30s);
        ASSERT_EQ(status_of(response), 200) << response.substr(0, 300);
        EXPECT_EQ(response.find("Content-Range"), std::string::npos);
        EXPECT_EQ(response.find("multipart/byteranges"), std::string::npos);
        const std::string body = body_of(response);
        EXPECT_EQ(body, "{\"result\": {}, \"stdout\": \"" + std::string(1 << 20, 'x') + "\"}");
    }
    // 2,000 copies of a 1 MiB reply would be 2 GB.
    EXPECT_LT(resident_bytes(), resident_before + (48u << 20));
    expect_hello_world();
}

TEST_F(HostileHttpTest, SmuggledRequestsNeverRun) {
    ASSERT_NO_FATAL_FAILURE(start());
    const std::string n = std::to_string(k_hidden_request.size());
    const std::vector<std::pair<const char*, std::string>> attempts = {
        {"GET with Content-Length", "GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: " + n + "\r\n\r\n"},
        {"HEAD with Content-Length", "HEAD /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: " + n + "\r\n\r\n"},
        {"GET chunked", "GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" +
                            hex(k_hidden_request.size()) + "\r\n"},
        {"space before the colon", "POST /execute HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                   "Transfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"},
        {"bare LF", "GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: 1\nContent-Length: " + n + "\r\n\r\n"},
        {"percent-encoded length", "POST /execute HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                   "Content-Length: %345\r\n\r\n"},
        {"Content-Length and chunked", "POST /execute HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                       "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"},
        {"two Content-Lengths", "POST /execute HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                "Content-Length: 2\r\nContent-Length: 0\r\n\r\n{}"},
        {"404 with a body", "DELETE /nope HTTP/1.1\r\nHost: x\r\nContent-Length: " + n + "\r\n\r\n"},
    };
    for (const auto& [name, prefix] : attempts) {
        SCOPED_TRACE(name);
        Raw raw(port());
        ASSERT_TRUE(raw.send_all(prefix + k_hidden_request));
        bool closed = false;
        const std::string response = raw.read_until_close(5s, &closed);
        EXPECT_TRUE(closed) << "the connection must close after a refused request";
        const int status = status_of(response);
        EXPECT_TRUE(status == 400 || status == 404 || status == 411) << response.substr(0, 300);
        // Exactly one response: nothing after it was taken as a request.
        EXPECT_EQ(response.find("HTTP/1.1", 1), std::string::npos) << response;
    }
    std::this_thread::sleep_for(300ms);
    const std::string text = metrics();
    EXPECT_NE(text.find("\nsafepy_executions_total{status=\"ok\"} 0\n"), std::string::npos) << text;
    EXPECT_EQ(text.find("safepy_http_requests_total{code=\"200\"}"), std::string::npos) << text;
    for (const auto& line : log_lines()) {
        EXPECT_EQ(line.find("\"path\":\"/execute\",\"status\":200"), std::string::npos) << line;
        EXPECT_EQ(line.find("\"outcome\":\"ok\""), std::string::npos) << line;
    }
}

TEST_F(HostileHttpTest, RepliesAreNeverCompressed) {
    ASSERT_NO_FATAL_FAILURE(start());
    const auto cpu_of = [&](const std::string& headers) {
        const auto before = process_cpu();
        Raw raw(port());
        EXPECT_TRUE(raw.send_all(post_execute(k_megabyte_body, headers)));
        const std::string response = raw.read_response(30s);
        EXPECT_EQ(status_of(response), 200) << response.substr(0, 300);
        EXPECT_EQ(response.find("Content-Encoding"), std::string::npos) << response.substr(0, 300);
        EXPECT_EQ(body_of(response).size(), std::string("{\"result\": {}, \"stdout\": \"\"}").size() + (1u << 20));
        return process_cpu() - before;
    };
    const auto plain = cpu_of("");
    const auto brotli = cpu_of("Accept-Encoding: br\r\n");
    const auto any = cpu_of("Accept-Encoding: br;q=1, gzip, deflate, *\r\n");
    // Brotli at its slowest setting took 3.5 s of CPU for this reply.
    EXPECT_LT(brotli, plain + 300ms) << "plain " << plain.count() << " us, br " << brotli.count() << " us";
    EXPECT_LT(any, plain + 300ms);
}

TEST_F(HostileHttpTest, TwoThousandIdleConnectionsLockNobodyOut) {
    ServerSettings settings;
    settings.idle_timeout = 60s;
    settings.read_timeout = 60s;
    // Warm runs take milliseconds: the second allowed per answer is for the HTTP layer, not the jail.
    ASSERT_NO_FATAL_FAILURE(start(settings, "", true));
    rlimit files{};
    ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &files), 0);
    if (files.rlim_max < 4200) {
        GTEST_SKIP() << "the hard open-file limit is " << files.rlim_max
                     << "; 2,000 connections need 4,000 descriptors in this process (both ends)";
    }
    ASSERT_EQ(files.rlim_cur, files.rlim_max) << "the server raises the soft limit to the hard limit";
    std::vector<std::unique_ptr<Raw>> idle;
    for (int i = 0; i < 2000; ++i) {
        idle.push_back(std::make_unique<Raw>(port()));
        ASSERT_TRUE(idle.back()->connected()) << i;
    }
    // A byte every so often would not help them either: each request has one deadline.
    for (int i = 0; i < 50; ++i) {
        idle[static_cast<std::size_t>(i)]->send_all("G");
    }
    const auto deadline = Clock::now() + 10s;
    while (metric(metrics(), "safepy_connections_open") < 2001 && Clock::now() < deadline) {
        std::this_thread::sleep_for(20ms);
    }
    ASSERT_GE(metric(metrics(), "safepy_connections_open"), 2001) << metrics();
    auto c = client();
    int answered = 0;
    for (int i = 0; i < 20; ++i) {
        const auto started = Clock::now();
        const auto res = c->Post("/execute", k_hello_body, "application/json");
        const auto elapsed = Clock::now() - started;
        ASSERT_TRUE(res) << res.error();
        EXPECT_EQ(res->body, k_hello_envelope);
        EXPECT_LT(elapsed, 1s) << "request " << i << " took "
                               << std::chrono::duration_cast<std::chrono::milliseconds>(elapsed).count() << " ms";
        answered += res->status == 200 && elapsed < 1s;
    }
    EXPECT_EQ(answered, 20);
}

TEST_F(HostileHttpTest, ASlowReaderFreesItsSlotWithinTheWriteTimeout) {
    ServerSettings settings;
    settings.concurrency = 1;
    settings.write_timeout = 1000ms;
    ASSERT_NO_FATAL_FAILURE(start(settings));
    // 8 MiB of output that the client never reads, through a tiny receive window.
    const std::string big = execute_body("import sys\ndef main():\n    sys.stdout.write('x' * (8 << 20))\n    return {}\n",
                                         R"({"stdout_bytes": 16777216})");
    const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    const int small = 4096;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(static_cast<std::uint16_t>(port()));
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address), 0);
    const std::string request = post_execute(big);
    ASSERT_EQ(send(fd, request.data(), request.size(), MSG_NOSIGNAL), static_cast<ssize_t>(request.size()));
    ASSERT_TRUE(wait_for_metric("safepy_executions_in_flight 1"));
    // Queued behind the slow reader's slot: answered once the write timeout frees it.
    const auto started = Clock::now();
    expect_hello_world();
    EXPECT_LT(Clock::now() - started, 6s);
    EXPECT_TRUE(wait_for_metric("safepy_executions_in_flight 0", 2s));
    close(fd);
    bool logged = false;
    for (const auto& line : log_lines()) {
        logged = logged || (line.find("\"path\":\"/execute\",\"status\":200,\"outcome\":\"ok\"") != std::string::npos &&
                            line.find("\"bytes_out\":8388") != std::string::npos);
    }
    EXPECT_TRUE(logged);
}

TEST_F(HostileHttpTest, LaxHeadsAre400AndClose) {
    ASSERT_NO_FATAL_FAILURE(start());
    std::string many = "GET /healthz HTTP/1.1\r\nHost: x\r\n";
    for (int i = 0; i < 10'000; ++i) {
        many += "A: 1\r\n";
    }
    const std::vector<std::pair<const char*, std::string>> heads = {
        {"obs-fold", "GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n 2\r\n\r\n"},
        {"no colon", "GET /healthz HTTP/1.1\r\nHost: x\r\nX-A 1\r\n\r\n"},
        {"NUL in a value", std::string("GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: 1\0 2\r\n\r\n", 44)},
        {"bare CR", "GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: 1\r2\r\n\r\n"},
        {"bare LF", "GET /healthz HTTP/1.1\r\nHost: x\nX-A: 1\r\n\r\n"},
        {"LF only", "GET /healthz HTTP/1.1\nHost: x\n\n"},
        {"no Host", "GET /healthz HTTP/1.1\r\n\r\n"},
        {"two Hosts", "GET /healthz HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n"},
        {"space before the colon", "GET /healthz HTTP/1.1\r\nHost: x\r\nX-A : 1\r\n\r\n"},
        {"name not a token", "GET /healthz HTTP/1.1\r\nHost: x\r\nX(A): 1\r\n\r\n"},
        {"10,000 headers", many + "\r\n"},
        {"HTTP/2.0", "GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n"},
        {"no version", "GET /healthz\r\nHost: x\r\n\r\n"},
        {"target not a path", "GET healthz HTTP/1.1\r\nHost: x\r\n\r\n"},
        {"control in target", "GET /heal\x01thz HTTP/1.1\r\nHost: x\r\n\r\n"},
    };
    for (const auto& [name, head] : heads) {
        SCOPED_TRACE(name);
        Raw raw(port());
        raw.send_all(head);
        bool closed = false;
        const std::string response = raw.read_until_close(5s, &closed);
        EXPECT_TRUE(closed);
        EXPECT_EQ(status_of(response), 400) << response.substr(0, 300);
        EXPECT_EQ(body_of(response), error_json("Malformed HTTP request"));
    }
    // HTTP/1.0 needs no Host; an absolute-form target is served by its path.
    for (const std::string head : {"GET /healthz HTTP/1.0\r\n\r\n", "GET http://any.host/healthz HTTP/1.1\r\nHost: x\r\n\r\n"}) {
        Raw raw(port());
        raw.send_all(head);
        const std::string response = raw.read_response(5s);
        EXPECT_EQ(status_of(response), 200) << head << response;
        EXPECT_EQ(body_of(response), k_health_body);
    }
    expect_hello_world();
}

TEST_F(HostileHttpTest, AHugeRequestLineIs414WithALogLine) {
    ASSERT_NO_FATAL_FAILURE(start());
    Raw raw(port());
    raw.send_all("GET /" + std::string(1 << 20, 'a') + " HTTP/1.1\r\nHost: x\r\n\r\n");
    bool closed = false;
    const std::string response = raw.read_until_close(5s, &closed);
    EXPECT_TRUE(closed);
    EXPECT_EQ(status_of(response), 414) << response.substr(0, 300);
    EXPECT_EQ(body_of(response), error_json("The request line is too long"));
    const auto lines = log_lines();
    ASSERT_EQ(lines.size(), 1u);
    EXPECT_NE(lines[0].find(R"("status":414,"outcome":"uri_too_long")"), std::string::npos) << lines[0];
    EXPECT_NE(lines[0].find(R"("remote":"127.0.0.1")"), std::string::npos) << lines[0];
    expect_hello_world();
}

TEST_F(HostileHttpTest, PipelinedRequestsAreAnsweredInOrder) {
    ASSERT_NO_FATAL_FAILURE(start());
    Raw raw(port());
    ASSERT_TRUE(raw.send_all("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" + post_execute(k_hello_body) +
                             post_execute(k_no_main_body) + "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n" +
                             "HEAD /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"));
    const std::string health = raw.read_response();
    EXPECT_EQ(status_of(health), 200);
    EXPECT_EQ(body_of(health), k_health_body);
    const std::string hello = raw.read_response();
    EXPECT_EQ(status_of(hello), 200);
    EXPECT_EQ(body_of(hello), k_hello_envelope);
    const std::string no_main = raw.read_response();
    EXPECT_EQ(status_of(no_main), 422) << no_main;
    EXPECT_EQ(body_of(no_main), k_no_main_envelope);
    const std::string missing = raw.read_response();
    EXPECT_EQ(status_of(missing), 404) << missing;
    // HEAD: the headers GET would send, and no body.
    const std::string head = raw.read_until_close(2s);
    EXPECT_EQ(status_of(head), 200) << head;
    EXPECT_TRUE(has_header(head, "Content-Length: " + std::to_string(k_health_body.size()))) << head;
    EXPECT_EQ(body_of(head), "");
}

TEST_F(HostileHttpTest, RefusalsAreLoggedOncePerSecondWithCounts) {
    ServerSettings settings;
    settings.max_connections = 1;
    ASSERT_NO_FATAL_FAILURE(start(settings));
    auto holder = std::make_unique<Raw>(port());
    ASSERT_TRUE(holder->connected());
    std::this_thread::sleep_for(200ms);
    constexpr int k_flood = 200;
    for (int i = 0; i < k_flood; ++i) {
        Raw refused(port());
        refused.read_until_close(2s);
    }
    std::this_thread::sleep_for(1500ms);
    int full = 0;
    std::uint64_t suppressed = 0;
    static const std::regex summary(R"re("event":"refusals_suppressed","count":([0-9]+))re");
    for (const auto& line : log_lines()) {
        std::smatch match;
        if (std::regex_search(line, match, summary)) {
            suppressed += std::stoull(match[1]);
        } else if (line.find("\"outcome\":\"connection_refused\"") != std::string::npos) {
            ++full;
            EXPECT_NE(line.find(R"("remote":"127.0.0.1")"), std::string::npos) << line;
        }
    }
    EXPECT_GE(full, 1);
    EXPECT_LE(full, 10) << "one full line per second of flood";
    EXPECT_EQ(full + suppressed, static_cast<std::uint64_t>(k_flood));
    holder.reset();
    std::this_thread::sleep_for(200ms);
    EXPECT_GE(metric(metrics(), "safepy_connections_refused_total"), k_flood);
}

TEST_F(HostileHttpTest, ClientSocketsAreCloseOnExec) {
    ASSERT_NO_FATAL_FAILURE(start());
    std::vector<std::unique_ptr<Raw>> open;
    for (int i = 0; i < 5; ++i) {
        open.push_back(std::make_unique<Raw>(port()));
    }
    ASSERT_TRUE(wait_for_metric("safepy_connections_open 6"));
    int sockets = 0;
    DIR* fds = opendir("/proc/self/fd");
    ASSERT_NE(fds, nullptr);
    while (const dirent* entry = readdir(fds)) {
        const std::string name = entry->d_name;
        char target[256] = {};
        if (readlink(("/proc/self/fd/" + name).c_str(), target, sizeof target - 1) <= 0 ||
            std::string_view(target).rfind("socket:", 0) != 0) {
            continue;
        }
        const int fd = std::stoi(name);
        ++sockets;
        EXPECT_TRUE(fcntl(fd, F_GETFD) & FD_CLOEXEC) << "socket descriptor " << fd;
    }
    closedir(fds);
    EXPECT_GE(sockets, 11);  // the listener, 5 client ends, 5 server ends
}

}  // namespace
}  // namespace safepy::server

// Real HTTP against the real server on a free port, every run under bubblewrap.
// These tests fail, never skip, when bubblewrap does not work.
#include "server_fixture.hpp"

#include <thread>

namespace safepy::server {
namespace {

using namespace test_support;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

class ServerTest : public ServerFixture {
protected:
    void check_bombs_stay_in_their_slot(bool warm);
};

TEST_F(ServerTest, ReadmeHelloWorld) {
    ASSERT_NO_FATAL_FAILURE(start());
    const auto res = execute(k_hello_body);
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 200);
    EXPECT_EQ(res->body, k_hello_envelope);
    EXPECT_EQ(res->get_header_value("Content-Type"), "application/json");
}

TEST_F(ServerTest, ReadmePrintAndNumbers) {
    ASSERT_NO_FATAL_FAILURE(start());
    const auto res = execute(k_numbers_body);
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 200);
    EXPECT_EQ(res->body, k_numbers_envelope);
}

TEST_F(ServerTest, ReadmeNoMain) {
    ASSERT_NO_FATAL_FAILURE(start());
    expect_error(k_no_main_body, 422, k_no_main_envelope);
}

TEST_F(ServerTest, DetailsAddStatusAndUsage) {
    ASSERT_NO_FATAL_FAILURE(start());
    const auto res = client()->Post("/execute?details=1", k_hello_body, "application/json");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 200);
    EXPECT_EQ(res->body.rfind(R"({"result": {"result": "Hello, World!"}, "stdout": "", "status": "ok", "usage": {"wall_ms":)", 0),
              0u)
        << res->body;
    EXPECT_NE(res->body.find(R"("jail": "bwrap")"), std::string::npos) << res->body;
}

TEST_F(ServerTest, ScriptFailuresAre422WithTheirStatus) {
    ASSERT_NO_FATAL_FAILURE(start());
    const auto check = [&](const std::string& body, const std::string& status) {
        const auto res = execute(body);
        ASSERT_TRUE(res);
        EXPECT_EQ(res->status, 422) << res->body;
        EXPECT_NE(res->body.find("\"status\": \"" + status + "\""), std::string::npos) << res->body;
    };
    check(execute_body("def main():\n    raise ValueError('boom')\n"), "script_error");
    check(execute_body("def main():\n    return 42\n"), "invalid_result");
    check(execute_body("def main(:\n"), "invalid_script");
    check(execute_body("def main():\n    while True:\n        pass\n", R"({"wall_ms": 500})"), "timeout");
}

TEST_F(ServerTest, RequestErrorsAre400) {
    ASSERT_NO_FATAL_FAILURE(start());
    EXPECT_EQ(bad_request_message(R"({"script": 42})"), R"(\"script\" must be a string)");
    EXPECT_EQ(bad_request_message(R"({"script": null})"), R"(\"script\" must be a string)");
    EXPECT_EQ(bad_request_message(R"({"code": "x"})"),
              R"(Unknown field \"code\"; the request accepts \"script\", \"limits\", \"args\", \"stdin\", \"stdin_base64\" and \"files\")");
    EXPECT_EQ(bad_request_message(R"({"limits": {}})"), R"(Missing field \"script\")");
    EXPECT_EQ(bad_request_message("{}"), R"(Missing field \"script\")");
    EXPECT_EQ(bad_request_message(execute_body("def main(): return {}", R"({"wall_ms": 300001})")),
              "Invalid limits: wall_ms must be between 1 and 300000, got 300001");
    // Output caps are bounded by the service maxima, so one response stays small.
    EXPECT_EQ(bad_request_message(execute_body("def main(): return {}", R"({"stdout_bytes": 104857600})")),
              "Invalid limits: stdout_bytes must be between 1 and 16777216, got 104857600");
    EXPECT_EQ(bad_request_message(execute_body("def main(): return {}", R"({"wall_ms": -5})")),
              "limits.wall_ms must be a non-negative integer");
    expect_hello_world();
}

TEST_F(ServerTest, WrongContentTypeIs415) {
    ASSERT_NO_FATAL_FAILURE(start());
    const std::string envelope = error_json("Content-Type must be application/json");
    expect_error(k_hello_body, 415, envelope, "text/plain");
    expect_error(k_hello_body, 415, envelope, "application/x-www-form-urlencoded");
    Raw raw(port());
    ASSERT_TRUE(raw.send_all("POST /execute HTTP/1.1\r\nHost: x\r\nContent-Length: " + std::to_string(k_hello_body.size()) +
                             "\r\n\r\n" + k_hello_body));
    const std::string response = raw.read_response();
    EXPECT_EQ(status_of(response), 415) << response;
    EXPECT_EQ(body_of(response), envelope);
    // With a charset parameter it is still JSON.
    const auto res = execute(k_hello_body, "application/json; charset=utf-8");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 200);
}

TEST_F(ServerTest, BodyOverTheLimitIs413WithoutReadingIt) {
    ServerSettings settings;
    settings.policy.max_body_bytes = 64 * 1024;
    ASSERT_NO_FATAL_FAILURE(start(settings));
    const std::string big = execute_body("# " + std::string(100'000, 'x') + "\ndef main(): return {}");
    expect_error(big, 413, error_json("The request body is " + std::to_string(big.size()) + " bytes; the limit is 65536"));

    // A client announcing 10 GB is answered at once, before it sends any of it.
    Raw raw(port());
    ASSERT_TRUE(raw.send_all("POST /execute HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             "Content-Length: 10000000000\r\n\r\n{\"script\": \""));
    const auto started = Clock::now();
    const std::string response = raw.read_response(5s);
    EXPECT_EQ(status_of(response), 413) << response;
    EXPECT_TRUE(has_header(response, "Connection: close")) << response;
    EXPECT_EQ(body_of(response), error_json("The request body is 10000000000 bytes; the limit is 65536"));
    EXPECT_LT(Clock::now() - started, 2s);
    expect_hello_world();
}

TEST_F(ServerTest, ChunkedAndLengthlessBodiesAre411) {
    ASSERT_NO_FATAL_FAILURE(start());
    // A complete chunked body, as clients send a body of unknown length.
    Raw whole(port());
    std::ostringstream size;
    size << std::hex << k_hello_body.size();
    ASSERT_TRUE(whole.send_all("POST /execute HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                               "Transfer-Encoding: chunked\r\n\r\n" + size.str() + "\r\n" + k_hello_body + "\r\n0\r\n\r\n"));
    const std::string refused = whole.read_response(5s);
    EXPECT_EQ(status_of(refused), 411) << refused;
    EXPECT_EQ(body_of(refused),
              error_json("Transfer-Encoding (chunked) request bodies are not accepted; send Content-Length"));

    // An endless chunked stream is refused from its headers alone.
    Raw raw(port());
    ASSERT_TRUE(raw.send_all("POST /execute HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             "Transfer-Encoding: chunked\r\n\r\n100000\r\n" + std::string(50'000, ' ')));
    const std::string chunked = raw.read_response(5s);
    EXPECT_EQ(status_of(chunked), 411) << chunked;
    EXPECT_TRUE(has_header(chunked, "Connection: close")) << chunked;

    Raw lengthless(port());
    ASSERT_TRUE(lengthless.send_all("POST /execute HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\r\n" +
                                    k_hello_body));
    const std::string response = lengthless.read_response(5s);
    EXPECT_EQ(status_of(response), 411) << response;
    EXPECT_EQ(body_of(response), error_json("Content-Length is required"));

    Raw gzip(port());
    ASSERT_TRUE(gzip.send_all("POST /execute HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                              "Content-Encoding: gzip\r\nContent-Length: 4\r\n\r\nabcd"));
    const std::string compressed = gzip.read_response(5s);
    EXPECT_EQ(status_of(compressed), 415) << compressed;
    EXPECT_EQ(body_of(compressed), error_json("Content-Encoding is not accepted; send the body uncompressed"));
    expect_hello_world();
}

TEST_F(ServerTest, UnknownPathsAndWrongMethodsAreJson) {
    ASSERT_NO_FATAL_FAILURE(start());
    auto c = client();
    auto res = c->Get("/nope");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 404);
    EXPECT_EQ(res->body, error_json("No such endpoint: /nope (try POST /execute)"));
    EXPECT_EQ(res->get_header_value("Content-Type"), "application/json");

    res = c->Get("/execute");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 405);
    EXPECT_EQ(res->get_header_value("Allow"), "POST");
    EXPECT_EQ(res->body, error_json("Method GET is not allowed on /execute; use POST"));

    res = c->Put("/execute", k_hello_body, "application/json");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 405);

    res = c->Post("/healthz", "{}", "application/json");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 405);
    EXPECT_EQ(res->get_header_value("Allow"), "GET, HEAD");
    EXPECT_EQ(res->body, error_json("Method POST is not allowed on /healthz; use GET"));

    Raw trace(port());
    ASSERT_TRUE(trace.send_all("TRACE /execute HTTP/1.1\r\nHost: x\r\n\r\n"));
    const std::string response = trace.read_response();
    EXPECT_EQ(status_of(response), 405) << response;
    EXPECT_EQ(body_of(response), error_json("Method TRACE is not allowed on /execute; use POST"));

    for (const char* request : {"BREW /execute HTTP/1.1\r\nHost: x\r\n\r\n", "this is not http\r\n\r\n"}) {
        Raw garbage(port());
        ASSERT_TRUE(garbage.send_all(request));
        bool closed = false;
        const std::string malformed = garbage.read_until_close(5s, &closed);
        EXPECT_TRUE(closed);
        EXPECT_EQ(status_of(malformed), 400) << malformed;
        EXPECT_EQ(body_of(malformed), error_json("Malformed HTTP request"));
    }
}

TEST_F(ServerTest, HostileBodiesGetClearErrors) {
    ASSERT_NO_FATAL_FAILURE(start());
    EXPECT_EQ(bad_request_message(std::string(1'000'000, '[') + std::string(1'000'000, ']')),
              "The request body must be a JSON object");
    EXPECT_EQ(bad_request_message("{\"script\": " + std::string(900'000, '[')), R"(\"script\" must be a string)");
    EXPECT_EQ(bad_request_message("{\"script\": " + std::string(900'000, '{')), R"(\"script\" must be a string)");
    for (const std::string& body : {
             std::string("{\"script\": \"def main(): return {}\xff\"}"),  // invalid UTF-8
             std::string("{\"script\": \"\xed\xa0\x80\"}"),              // an encoded surrogate
             std::string("{\"script\": \"def main(): return {}") + '\0' + "\"}",  // a raw NUL byte
             std::string("\0\0\0\0", 4),
             std::string("{\"script\": \"def main(): return {}\""),  // truncated
             std::string("{\"script\": \"x\"} {\"script\": \"y\"}"),
             std::string("{'script': 'x'}"),
             std::string("{\"script\": \"x\",}"),
             std::string("not json at all"),
         }) {
        const std::string message = bad_request_message(body);
        EXPECT_EQ(message.rfind("The request body is not valid JSON", 0), 0u) << message;
    }
    EXPECT_EQ(bad_request_message(""), R"(The request body is empty; send a JSON object with a \"script\" string)");
    EXPECT_EQ(bad_request_message(R"({"script": "a", "script": "b"})"), R"(Duplicate field \"script\")");
    // Valid JSON, refused by the library before anything runs.
    EXPECT_EQ(bad_request_message(R"({"script": "def main(): return {}\u0000"})"), "Script contains a NUL byte");
    const std::string huge(1536 * 1024, '#');
    EXPECT_EQ(bad_request_message(execute_body(huge)), "Script is 1572864 bytes; the limit is 1048576");
    expect_hello_world();
}

TEST_F(ServerTest, OversizedHeadersAreRefused) {
    ASSERT_NO_FATAL_FAILURE(start());
    Raw raw(port());
    std::string request = "GET /healthz HTTP/1.1\r\nHost: x\r\n";
    for (int i = 0; i < 40; ++i) {
        request += "X-Filler-" + std::to_string(i) + ": " + std::string(4000, 'a') + "\r\n";
    }
    raw.send_all(request + "\r\n");
    bool closed = false;
    const std::string response = raw.read_until_close(5s, &closed);
    EXPECT_TRUE(closed);
    EXPECT_EQ(status_of(response), 400) << response.substr(0, 200);
    EXPECT_EQ(body_of(response), error_json("Malformed HTTP request"));
    expect_hello_world();
}

TEST_F(ServerTest, SlowClientsTimeOutWhileOthersAreServed) {
    ServerSettings settings;
    settings.read_timeout = 1000ms;
    ASSERT_NO_FATAL_FAILURE(start(settings));

    // Many idle connections hold nothing that others need.
    std::vector<std::unique_ptr<Raw>> idle;
    for (int i = 0; i < 40; ++i) {
        idle.push_back(std::make_unique<Raw>(port()));
        ASSERT_TRUE(idle.back()->connected());
    }
    // Headers one byte at a time: the deadline covers the whole request, not each byte.
    auto drip = std::async(std::launch::async, [this] {
        Raw raw(port());
        raw.send_all("POST /execute HTTP/1.1\r\nHost: x\r\n");
        const auto started = Clock::now();
        while (Clock::now() - started < 5s && raw.send_all("X")) {
            std::this_thread::sleep_for(100ms);
        }
        return Clock::now() - started;
    });
    // A body that never arrives in full.
    auto slow_body = std::async(std::launch::async, [this] {
        Raw raw(port());
        raw.send_all("POST /execute HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     "Content-Length: 1000\r\n\r\n{\"script\": ");
        const auto started = Clock::now();
        bool closed = false;
        const std::string response = raw.read_until_close(5s, &closed);
        return std::make_pair(Clock::now() - started, response);
    });
    for (int i = 0; i < 3; ++i) {
        expect_hello_world();
    }
    EXPECT_LT(drip.get(), 3s);
    const auto [elapsed, response] = slow_body.get();
    EXPECT_LT(elapsed, 3s);
    EXPECT_EQ(status_of(response), 400) << response;
    expect_hello_world();
}

TEST_F(ServerTest, TooManyConnectionsGetAnImmediate503) {
    ServerSettings settings;
    settings.concurrency = 1;
    settings.queue_length = 0;
    settings.max_connections = 4;
    ASSERT_NO_FATAL_FAILURE(start(settings));
    std::vector<std::unique_ptr<Raw>> held;
    for (int i = 0; i < 4; ++i) {
        held.push_back(std::make_unique<Raw>(port()));
        std::this_thread::sleep_for(50ms);
    }
    Raw extra(port());
    extra.send_all("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    const std::string response = extra.read_response(3s);
    EXPECT_EQ(status_of(response), 503) << response;
    EXPECT_TRUE(has_header(response, "Retry-After: 1")) << response;
    EXPECT_EQ(body_of(response), error_json("The server has too many open connections; retry later", "unavailable"));
    held.clear();  // the server sees them close and frees the threads
    const auto deadline = Clock::now() + 5s;
    bool serving = false;
    while (!serving && Clock::now() < deadline) {
        const auto health = client()->Get("/healthz");
        serving = health && health->status == 200;
        std::this_thread::sleep_for(20ms);
    }
    ASSERT_TRUE(serving);
    expect_hello_world();
    static const std::regex refused_count(R"(\nsafepy_connections_refused_total ([0-9]+)\n)");
    const std::string text = metrics();
    std::smatch match;
    ASSERT_TRUE(std::regex_search(text, match, refused_count)) << text;
    EXPECT_GE(std::stoi(match[1]), 1);
}

TEST_F(ServerTest, KeepAliveIsLimited) {
    ServerSettings settings;
    settings.keep_alive_max_requests = 3;
    ASSERT_NO_FATAL_FAILURE(start(settings));
    Raw raw(port());
    for (int i = 1; i <= 3; ++i) {
        ASSERT_TRUE(raw.send_all("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"));
        const std::string response = raw.read_response();
        EXPECT_EQ(status_of(response), 200);
        EXPECT_EQ(body_of(response), k_health_body);
        EXPECT_EQ(has_header(response, "Connection: close"), i == 3) << response;
    }
    bool closed = false;
    raw.read_until_close(3s, &closed);
    EXPECT_TRUE(closed);
}

TEST_F(ServerTest, SixteenConcurrentRequestsAreAllAnsweredCorrectly) {
    ASSERT_NO_FATAL_FAILURE(start());
    constexpr int k_requests = 16;
    std::vector<std::future<std::pair<int, std::string>>> replies;
    for (int i = 0; i < k_requests; ++i) {
        replies.push_back(std::async(std::launch::async, [this, i] {
            const auto res = execute(execute_body("def main():\n    print(" + std::to_string(i) + ")\n    return {\"n\": " +
                                                  std::to_string(i) + "}\n"));
            return res ? std::make_pair(res->status, res->body) : std::make_pair(0, res.error());
        }));
    }
    for (int i = 0; i < k_requests; ++i) {
        const auto [status, body] = replies[static_cast<std::size_t>(i)].get();
        EXPECT_EQ(status, 200) << body;
        EXPECT_EQ(body, "{\"result\": {\"n\": " + std::to_string(i) + "}, \"stdout\": \"" + std::to_string(i) + "\\n\"}");
    }
    EXPECT_TRUE(wait_for_metric("safepy_executions_total{status=\"ok\"} 16"));
}

TEST_F(ServerTest, AFullQueueIs429) {
    ServerSettings settings;
    settings.concurrency = 1;
    settings.queue_length = 1;
    ASSERT_NO_FATAL_FAILURE(start(settings));
    auto running = std::async(std::launch::async, [this] { return execute(execute_body(sleeper(2.0))); });
    ASSERT_TRUE(wait_for_metric("safepy_executions_in_flight 1"));
    auto queued = std::async(std::launch::async, [this] { return execute(k_hello_body); });
    ASSERT_TRUE(wait_for_metric("safepy_executions_queued 1"));

    const auto refused = execute(k_hello_body);
    ASSERT_TRUE(refused);
    EXPECT_EQ(refused->status, 429);
    EXPECT_EQ(refused->get_header_value("Retry-After"), "1");
    EXPECT_EQ(refused->body,
              error_json("Every execution slot is busy and the queue is full; retry later", "unavailable"));

    const auto first = running.get();
    ASSERT_TRUE(first);
    EXPECT_EQ(first->body, R"({"result": {"slept": true}, "stdout": ""})");
    const auto second = queued.get();
    ASSERT_TRUE(second);
    EXPECT_EQ(second->body, k_hello_envelope);
}

TEST_F(ServerTest, AWaitTooLongIs503) {
    ServerSettings settings;
    settings.concurrency = 1;
    settings.queue_timeout = 300ms;
    ASSERT_NO_FATAL_FAILURE(start(settings));
    auto running = std::async(std::launch::async, [this] { return execute(execute_body(sleeper(1.5))); });
    ASSERT_TRUE(wait_for_metric("safepy_executions_in_flight 1"));
    const auto started = Clock::now();
    const auto res = execute(k_hello_body);
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 503);
    EXPECT_EQ(res->get_header_value("Retry-After"), "1");
    EXPECT_EQ(res->body, error_json("No execution slot became free within 300 ms; retry later", "unavailable"));
    EXPECT_GE(Clock::now() - started, 300ms);
    EXPECT_LT(Clock::now() - started, 1200ms);
    ASSERT_TRUE(running.get());
}

// In warm mode the template's jail is this process's one lasting child.
void ServerTest::check_bombs_stay_in_their_slot(bool warm) {
    ServerSettings settings;
    settings.concurrency = 2;
    ASSERT_NO_FATAL_FAILURE(start(settings, "", warm));
    struct Bomb {
        const char* name;
        std::string body;
        std::set<std::string> statuses;
    };
    const std::vector<Bomb> bombs = {
        {"fork bomb",
         execute_body("import os\ndef main():\n    while True:\n        try:\n            os.fork()\n"
                      "        except OSError:\n            pass\n",
                      R"({"wall_ms": 3000, "processes": 32})"),
         {"timeout", "script_error", "memory_limit"}},
        {"memory bomb",
         execute_body("def main():\n    blocks = []\n    while True:\n        blocks.append(bytearray(1 << 24))\n",
                      R"({"wall_ms": 10000, "memory_bytes": 134217728})"),
         {"memory_limit"}},
        {"endless loop", execute_body("def main():\n    while True:\n        pass\n", R"({"wall_ms": 2000})"), {"timeout"}},
        {"100 MB of output",
         execute_body("import sys\ndef main():\n    chunk = 'x' * (1 << 20)\n    for _ in range(100):\n"
                      "        sys.stdout.write(chunk)\n    return {}\n",
                      R"({"wall_ms": 10000})"),
         {"output_limit"}},
    };
    const std::uint64_t resident_before = resident_bytes();
    for (const auto& bomb : bombs) {
        SCOPED_TRACE(bomb.name);
        const auto started = Clock::now();
        auto exploding = std::async(std::launch::async, [this, &bomb] { return execute(bomb.body); });
        int served = 0;
        while (exploding.wait_for(0ms) != std::future_status::ready || served < 3) {
            expect_hello_world();
            ++served;
        }
        const auto res = exploding.get();
        ASSERT_TRUE(res);
        EXPECT_EQ(res->status, 422) << res->body.substr(0, 300);
        static const std::regex status_pattern(R"re("status": "([a-z_]+)")re");
        std::smatch match;
        ASSERT_TRUE(std::regex_search(res->body, match, status_pattern)) << res->body.substr(0, 300);
        EXPECT_TRUE(bomb.statuses.count(match[1])) << match[1];
        EXPECT_LT(Clock::now() - started, 15s);
    }
    EXPECT_LT(resident_bytes(), resident_before + (64u << 20));
    EXPECT_EQ(children_of_this_process().size(), warm ? 1u : 0u);
}

TEST_F(ServerTest, BombsStayInTheirSlot) {
    check_bombs_stay_in_their_slot(false);
}

TEST_F(ServerTest, BombsStayInTheirSlotInWarmMode) {
    check_bombs_stay_in_their_slot(true);
}

TEST_F(ServerTest, WarmModeAnswersTheReadmeExamplesAndConcurrentRequests) {
    ASSERT_NO_FATAL_FAILURE(start({}, "", true));
    const auto hello = execute(k_hello_body);
    ASSERT_TRUE(hello);
    EXPECT_EQ(hello->status, 200);
    EXPECT_EQ(hello->body, k_hello_envelope);
    const auto numbers = execute(k_numbers_body);
    ASSERT_TRUE(numbers);
    EXPECT_EQ(numbers->body, k_numbers_envelope);
    expect_error(k_no_main_body, 422, k_no_main_envelope);
    constexpr int k_requests = 16;
    std::vector<std::future<std::pair<int, std::string>>> replies;
    for (int i = 0; i < k_requests; ++i) {
        replies.push_back(std::async(std::launch::async, [this, i] {
            const auto res = execute(execute_body("import pandas\ndef main():\n    return {\"n\": int(pandas.Series([" +
                                                  std::to_string(i) + "]).sum())}\n"));
            return res ? std::make_pair(res->status, res->body) : std::make_pair(0, res.error());
        }));
    }
    for (int i = 0; i < k_requests; ++i) {
        const auto [status, body] = replies[static_cast<std::size_t>(i)].get();
        EXPECT_EQ(status, 200) << body;
        EXPECT_EQ(body, "{\"result\": {\"n\": " + std::to_string(i) + "}, \"stdout\": \"\"}");
    }
}

TEST_F(ServerTest, HealthAndReadiness) {
    ASSERT_NO_FATAL_FAILURE(start());
    auto c = client();
    auto res = c->Get("/healthz");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 200);
    EXPECT_EQ(res->body, k_health_body);
    res = c->Get("/readyz");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 200);
    EXPECT_EQ(res->body.rfind(R"({"status": "ready", "jail": "bwrap", "probe_ms": )", 0), 0u) << res->body;
    // This machine gives per-run cgroups (v1 or v2): the mode and what was set up for it.
    static const std::regex resource(
        R"re(, "resource_control": "cgroup-v[12]", "resource_control_reason": "per-run cgroups in /sys/fs/cgroup/[^"]+"\}$)re");
    EXPECT_TRUE(std::regex_search(res->body, resource)) << res->body;
    const std::string first = res->body;
    res = c->Get("/readyz");  // cached: the same probe
    ASSERT_TRUE(res);
    EXPECT_EQ(res->body, first);
}

TEST_F(ServerTest, ASandboxFailureIs500AndNotReady) {
    ASSERT_NO_FATAL_FAILURE(start({}, "/bin/false"));
    const auto res = execute(k_hello_body);
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 500);
    EXPECT_NE(res->body.find(R"("status": "sandbox_error")"), std::string::npos) << res->body;
    const auto ready = client()->Get("/readyz");
    ASSERT_TRUE(ready);
    EXPECT_EQ(ready->status, 503);
    EXPECT_NE(ready->body.find(R"("status": "sandbox_error")"), std::string::npos) << ready->body;
    const auto health = client()->Get("/healthz");
    ASSERT_TRUE(health);
    EXPECT_EQ(health->status, 200);
}

TEST_F(ServerTest, MetricsCountWhatHappened) {
    ASSERT_NO_FATAL_FAILURE(start());
    expect_hello_world();
    expect_hello_world();
    expect_error(k_no_main_body, 422, k_no_main_envelope);
    bad_request_message("{");
    ASSERT_TRUE(client()->Get("/nope"));
    // A run's slot is released once its response is written, which the
    // client can see a moment before the server's completion handler runs.
    // Each earlier GET /metrics counts as a 200.
    std::string text = metrics();
    int polls = 0;
    for (const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
         text.find("\nsafepy_executions_in_flight 0\n") == std::string::npos && std::chrono::steady_clock::now() < deadline;) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
        text = metrics();
        ++polls;
    }
    const std::string ok_responses = "safepy_http_requests_total{code=\"200\"} " + std::to_string(2 + polls);
    for (const char* line : {
             ok_responses.c_str(),
             "safepy_http_requests_total{code=\"400\"} 1",
             "safepy_http_requests_total{code=\"404\"} 1",
             "safepy_http_requests_total{code=\"422\"} 1",
             "safepy_executions_total{status=\"ok\"} 2",
             "safepy_executions_total{status=\"invalid_script\"} 1",
             "safepy_executions_total{status=\"timeout\"} 0",
             "safepy_execute_duration_seconds_count 4",
             "safepy_execute_duration_seconds_bucket{le=\"+Inf\"} 4",
             "safepy_queue_wait_seconds_count 4",
             "safepy_executions_in_flight 0",
             "safepy_executions_queued 0",
             "safepy_execution_slots 2",
             "safepy_queue_capacity 32",
         }) {
        EXPECT_NE(text.find(std::string("\n") + line + "\n"), std::string::npos) << line << "\n" << text;
    }
    EXPECT_EQ(text.find("safepy_http_requests_total{code=\"500\"}"), std::string::npos);
    // The server's own memory is reported, and is this process's (the test hosts the server).
    const auto at = text.find("\nsafepy_server_resident_bytes ");
    ASSERT_NE(at, std::string::npos) << text;
    const auto reported = std::stoull(text.substr(at + 30));
    EXPECT_GT(reported, 1u << 20);
    EXPECT_LT(reported, resident_bytes() + (64u << 20));
    static const std::regex resource(
        R"re(\nsafepy_resource_control\{mode="cgroup-v[12]",reason="per-run cgroups in /sys/fs/cgroup/[^"\n]+"\} 1\n)re");
    EXPECT_TRUE(std::regex_search(text, resource)) << text;
}

TEST_F(ServerTest, OneLogLinePerRequestWithoutScriptOrOutput) {
    ASSERT_NO_FATAL_FAILURE(start());
    const auto res = execute(execute_body("SECRET_SCRIPT = 1\ndef main():\n    print('SECRET_OUTPUT')\n    return {}\n"));
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 200);
    ASSERT_TRUE(client()->Get("/healthz"));
    // A line is written once its response has gone out, so it may trail the client a little.
    const auto deadline = Clock::now() + 2s;
    while (log_lines().size() < 2 && Clock::now() < deadline) {
        std::this_thread::sleep_for(5ms);
    }
    std::this_thread::sleep_for(50ms);
    auto lines = log_lines();
    ASSERT_EQ(lines.size(), 2u);
    // Either may come first: the execute line waits for its response's last
    // write, which the client may see before it.
    if (lines[0].find(R"("path":"/healthz")") != std::string::npos) {
        std::swap(lines[0], lines[1]);
    }
    static const std::regex execute_line(
        R"(^\{"time":"[0-9T:.\-]+Z","method":"POST","path":"/execute","status":200,"outcome":"ok","duration_ms":[0-9]+,)"
        R"("queue_ms":[0-9]+,"run_ms":[0-9]+,"cpu_ms":[0-9]+,"peak_memory_bytes":[0-9]+,"bytes_in":[0-9]+,"bytes_out":[0-9]+,)"
        R"("remote":"127.0.0.1"\}$)");
    EXPECT_TRUE(std::regex_match(lines[0], execute_line)) << lines[0];
    EXPECT_NE(lines[1].find(R"("method":"GET","path":"/healthz","status":200)"), std::string::npos) << lines[1];
    for (const auto& line : lines) {
        EXPECT_EQ(line.find("SECRET"), std::string::npos) << line;
    }
}

TEST_F(ServerTest, GracefulStopLetsARunInFlightFinish) {
    ASSERT_NO_FATAL_FAILURE(start());
    auto in_flight = std::async(std::launch::async, [this] { return execute(execute_body(sleeper(1.5))); });
    ASSERT_TRUE(wait_for_metric("safepy_executions_in_flight 1"));
    const int bound = port();
    const auto started = Clock::now();
    auto stopping = std::async(std::launch::async, [this] { m_server->stop(10s); });
    std::this_thread::sleep_for(200ms);
    Raw late(bound);
    EXPECT_FALSE(late.connected()) << "the listening socket must close at once";
    const auto res = in_flight.get();
    ASSERT_TRUE(res) << res.error();
    EXPECT_EQ(res->status, 200);
    EXPECT_EQ(res->body, R"({"result": {"slept": true}, "stdout": ""})");
    stopping.get();
    EXPECT_LT(Clock::now() - started, 4s);
    EXPECT_EQ(m_server->killed_runs(), 0u);
    EXPECT_TRUE(children_of_this_process().empty());
}

TEST_F(ServerTest, GracefulStopKillsRunsThatOutlastTheGrace) {
    ASSERT_NO_FATAL_FAILURE(start());
    auto in_flight =
        std::async(std::launch::async, [this] { return execute(execute_body(sleeper(60), R"({"wall_ms": 120000})")); });
    ASSERT_TRUE(wait_for_metric("safepy_executions_in_flight 1"));
    // The gauge counts the run from admission; its jail is forked a moment later.
    const auto forked_by = Clock::now() + 10s;
    while (children_of_this_process().empty() && Clock::now() < forked_by) {
        std::this_thread::sleep_for(10ms);
    }
    ASSERT_FALSE(children_of_this_process().empty());
    const auto started = Clock::now();
    m_server->stop(500ms);
    EXPECT_LT(Clock::now() - started, 5s);
    const auto res = in_flight.get();
    ASSERT_TRUE(res) << res.error();
    EXPECT_EQ(res->status, 503);
    EXPECT_EQ(res->get_header_value("Retry-After"), "1");
    EXPECT_EQ(res->body, error_json("The server shut down before the run finished; retry on another instance",
                                    "unavailable"));
    EXPECT_EQ(m_server->killed_runs(), 1u);
    EXPECT_TRUE(children_of_this_process().empty());
}

// safepy-server started as the README says, its stderr collected.
class ServerProcess {
public:
    ServerProcess() {
        int err[2];
        if (pipe2(err, O_CLOEXEC) != 0) {
            return;
        }
        m_pid = fork();
        if (m_pid == 0) {
            dup2(err[1], 2);
            execl(SAFEPY_SERVER_PATH, SAFEPY_SERVER_PATH, "--address", "127.0.0.1", "--port", "0", "--jail", "bwrap",
                  static_cast<char*>(nullptr));
            _exit(127);
        }
        close(err[1]);
        m_reader = std::thread([this, fd = err[0]] {
            char chunk[4096];
            ssize_t n;
            while ((n = read(fd, chunk, sizeof chunk)) > 0) {
                std::lock_guard lock(m_mutex);
                m_log.append(chunk, static_cast<std::size_t>(n));
            }
            close(fd);
        });
    }

    ~ServerProcess() {
        if (m_pid > 0 && !m_status) {
            kill(m_pid, SIGKILL);
            wait();
        }
        if (m_reader.joinable()) {
            m_reader.join();
        }
    }

    // The port from the "listening" log line; 0 if it does not come within `timeout`.
    int port(std::chrono::milliseconds timeout) {
        static const std::regex listening(R"re("event":"listening".*"port":([0-9]+))re");
        const auto deadline = Clock::now() + timeout;
        while (Clock::now() < deadline) {
            const std::string text = log();
            std::smatch match;
            if (std::regex_search(text, match, listening)) {
                return std::stoi(match[1]);
            }
            std::this_thread::sleep_for(20ms);
        }
        return 0;
    }

    pid_t pid() const { return m_pid; }

    // The wait status once the process has ended.
    int wait() {
        int status = 0;
        if (!m_status && waitpid(m_pid, &status, 0) == m_pid) {
            m_status = status;
        }
        if (m_reader.joinable()) {
            m_reader.join();
        }
        return m_status.value_or(-1);
    }

    std::string log() {
        std::lock_guard lock(m_mutex);
        return m_log;
    }

private:
    pid_t m_pid = -1;
    std::optional<int> m_status;
    std::thread m_reader;
    std::mutex m_mutex;
    std::string m_log;
};

TEST(ServerBinary, SigtermFinishesTheRunInFlightAndExitsZero) {
    ServerProcess server;
    ASSERT_GT(server.pid(), 0);
    const int port = server.port(30s);
    ASSERT_GT(port, 0) << server.log();

    Client c(port);
    const auto readme = c.Post("/execute", k_hello_body, "application/json");
    ASSERT_TRUE(readme);
    EXPECT_EQ(readme->body, k_hello_envelope);
    auto in_flight = std::async(std::launch::async, [port] {
        Client slow(port);
        return slow.Post("/execute", execute_body(sleeper(1.0)), "application/json");
    });
    std::this_thread::sleep_for(400ms);
    ASSERT_EQ(kill(server.pid(), SIGTERM), 0);
    const auto res = in_flight.get();
    ASSERT_TRUE(res) << res.error();
    EXPECT_EQ(res->status, 200);
    EXPECT_EQ(res->body, R"({"result": {"slept": true}, "stdout": ""})");
    const int status = server.wait();
    const std::string log = server.log();
    EXPECT_TRUE(WIFEXITED(status)) << log;
    EXPECT_EQ(WEXITSTATUS(status), 0) << log;
    EXPECT_NE(log.find(R"("event":"stopping","signal":"SIGTERM")"), std::string::npos) << log;
    EXPECT_NE(log.find(R"("event":"stopped","killed_runs":0)"), std::string::npos) << log;
}

}  // namespace
}  // namespace safepy::server

namespace safepy::server {
namespace {

using namespace test_support;

// POST /execute with args, stdin and files in, and the files a run leaves in
// /tmp/out back as base64, cold and warm.
class ServerIoTest : public ServerFixture, public ::testing::WithParamInterface<bool> {};

INSTANTIATE_TEST_SUITE_P(Modes, ServerIoTest, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "warm" : "cold"; });

TEST_P(ServerIoTest, ArgsStdinAndFilesInAndOut) {
    ASSERT_NO_FATAL_FAILURE(start({}, "", GetParam()));
    const std::string script =
        "import sys\n"
        "def main(n, label):\n"
        "    data = sys.stdin.read()\n"
        "    table = open('in/table.csv').read()\n"
        "    with open('/tmp/out/copy.txt', 'w') as f:\n"
        "        f.write(label * n)\n"
        "    return {'stdin': data, 'table': table}\n";
    const std::string body = "{\"script\": " + json_quote(script) +
                             ", \"args\": {\"n\": 3, \"label\": \"ab\"}, \"stdin\": \"piped\\n\", "
                             "\"files\": [{\"path\": \"in/table.csv\", \"content_base64\": \"YSxiCjEsMgo=\"}]}";
    const auto res = execute(body);
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 200) << res->body;
    EXPECT_EQ(res->body, R"({"result": {"stdin": "piped\n", "table": "a,b\n1,2\n"}, "stdout": "", )"
                         R"("files": [{"path": "copy.txt", "size": 6, "content_base64": "YWJhYmFi"}]})");
}

TEST_P(ServerIoTest, HostileInputsAre400WithoutARun) {
    ASSERT_NO_FATAL_FAILURE(start({}, "", GetParam()));
    const std::string script = json_quote("def main():\n    return {}\n");
    EXPECT_EQ(bad_request_message("{\"script\": " + script +
                                  ", \"files\": [{\"path\": \"../../etc/passwd\", \"content\": \"x\"}]}"),
              R"(Input file \"../../etc/passwd\": the path has a \"..\" component)");
    EXPECT_EQ(bad_request_message("{\"script\": " + script + ", \"files\": [{\"path\": \"/etc/passwd\", \"content\": \"x\"}]}"),
              R"(Input file \"/etc/passwd\": the path is absolute; it must be relative to the working directory)");
    EXPECT_EQ(bad_request_message("{\"script\": " + script + ", \"args\": [1]}"),
              R"(\"args\" must be a JSON object (names to values): main is called as main(**args))");
    EXPECT_EQ(bad_request_message("{\"script\": " + script + ", \"stdin\": \"12345\", \"limits\": {\"stdin_bytes\": 4}}"),
              "stdin is larger than the limit of 4 bytes (stdin_bytes)");
}

TEST_P(ServerIoTest, LinksInTmpOutAreSkippedAndAStarArgsMainTakesNoNames) {
    ASSERT_NO_FATAL_FAILURE(start({}, "", GetParam()));
    const auto links = execute(execute_body(
        "import os\ndef main():\n    os.symlink('/etc/passwd', '/tmp/out/passwd')\n"
        "    open('/tmp/secret', 'w').write('s')\n    os.link('/tmp/secret', '/tmp/out/hard')\n    return {}\n"));
    ASSERT_TRUE(links);
    EXPECT_EQ(links->status, 200) << links->body;
    EXPECT_EQ(links->body, R"x({"result": {}, "stdout": "", "files_skipped": ["hard: a hard link (the file has other names)", )x"
                           R"x("passwd: a symbolic link (never followed)"]})x");
    const auto star = execute("{\"script\": " + json_quote("def main(*args):\n    return list(args)\n") +
                              ", \"args\": {\"n\": 1}}");
    ASSERT_TRUE(star);
    EXPECT_EQ(star->status, 422) << star->body;
    EXPECT_NE(star->body.find("main() does not accept the argument(s) 'n'"), std::string::npos) << star->body;
}

TEST_P(ServerIoTest, AGigabyteOutputFileIs422) {
    ASSERT_NO_FATAL_FAILURE(start({}, "", GetParam()));
    const auto res = execute(execute_body("def main():\n    chunk = b'x' * (1 << 20)\n    written = 0\n"
                                          "    try:\n        with open('/tmp/out/huge', 'wb') as f:\n"
                                          "            for _ in range(1024):\n                f.write(chunk)\n"
                                          "    except OSError:\n        pass\n    return {}\n",
                                          R"({"wall_ms": 60000, "cpu_ms": 60000, "file_bytes": 33554432})"));
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 422) << res->body.substr(0, 300);
    EXPECT_NE(res->body.find("(output_files_bytes)"), std::string::npos) << res->body.substr(0, 300);
}

TEST_P(ServerIoTest, TenThousandOutputFilesAre422) {
    ASSERT_NO_FATAL_FAILURE(start({}, "", GetParam()));
    const auto res = execute(execute_body("def main():\n    for i in range(10000):\n"
                                          "        open('/tmp/out/f%d' % i, 'w').close()\n    return {}\n",
                                          R"({"wall_ms": 60000, "cpu_ms": 60000})"));
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 422) << res->body;
    EXPECT_NE(res->body.find("\"status\": \"output_limit\""), std::string::npos) << res->body;
    EXPECT_EQ(res->body.find("\"files\""), std::string::npos) << res->body.substr(0, 300);
}

}  // namespace
}  // namespace safepy::server

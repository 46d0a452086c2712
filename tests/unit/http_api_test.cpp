#include "safepy/http.hpp"

#include <gtest/gtest.h>

namespace safepy {
namespace {

using namespace std::string_literals;

const ExecutePolicy& policy() {
    static const ExecutePolicy value;
    return value;
}

Request parsed(std::string_view body, const ExecutePolicy& with = policy()) {
    auto result = parse_execute_body(body, with);
    if (auto* error = std::get_if<HttpError>(&result)) {
        ADD_FAILURE() << "rejected: " << error->message << "\nbody: " << body;
        return {};
    }
    return std::get<Request>(std::move(result));
}

// The 400 error message for a body that must be rejected.
std::string rejected(std::string_view body, const ExecutePolicy& with = policy()) {
    auto result = parse_execute_body(body, with);
    auto* error = std::get_if<HttpError>(&result);
    if (!error) {
        ADD_FAILURE() << "accepted: " << body;
        return {};
    }
    EXPECT_EQ(error->http_status, 400);
    EXPECT_EQ(error->status, "invalid_request");
    return error->message;
}

TEST(ExecuteBody, TakesTheScriptAndTheDefaultLimits) {
    const Request request = parsed(R"({"script": "def main(): return {\"result\": \"Hello, World!\"}"})");
    EXPECT_EQ(request.script, R"(def main(): return {"result": "Hello, World!"})");
    EXPECT_EQ(request.limits, Limits{});
    EXPECT_EQ(request.mode, Mode::run);
}

TEST(ExecuteBody, DecodesEscapesAndUnicode) {
    EXPECT_EQ(parsed(R"({"script": "a\n\t\"\\\u00e9\ud83d\ude00"})").script, "a\n\t\"\\\xc3\xa9\xf0\x9f\x98\x80");
    EXPECT_EQ(parsed(" \r\n{ \"script\" : \"\" }\n").script, "");
    // NUL bytes parse; Sandbox::run rejects them.
    EXPECT_EQ(parsed(R"({"script": "a\u0000b"})").script, std::string("a\0b", 3));
}

TEST(ExecuteBody, AppliesLimitsWithinTheMaxima) {
    const Request request = parsed(R"({"limits": {"wall_ms": 500, "memory_bytes": 67108864}, "script": "x"})");
    EXPECT_EQ(request.limits.wall, std::chrono::milliseconds(500));
    EXPECT_EQ(request.limits.memory_bytes, 64u << 20);
    EXPECT_EQ(request.limits.cpu, Limits{}.cpu);
    EXPECT_EQ(parsed(R"({"script": "x", "limits": {}})").limits, Limits{});

    ExecutePolicy strict;
    strict.defaults.wall = std::chrono::milliseconds(2000);
    strict.maxima.wall = std::chrono::milliseconds(20000);
    EXPECT_EQ(parsed(R"({"script": "x"})", strict).limits.wall, std::chrono::milliseconds(2000));
    EXPECT_EQ(parsed(R"({"script": "x", "limits": {"wall_ms": 20000}})", strict).limits.wall,
              std::chrono::milliseconds(20000));
    EXPECT_EQ(rejected(R"({"script": "x", "limits": {"wall_ms": 20001}})", strict),
              "Invalid limits: wall_ms must be between 1 and 20000, got 20001");
}

TEST(ExecuteBody, RejectsBadLimits) {
    EXPECT_EQ(rejected(R"({"script": "x", "limits": {"wall_ms": 0}})"),
              "Invalid limits: wall_ms must be between 1 and 300000, got 0");
    EXPECT_EQ(rejected(R"({"script": "x", "limits": {"wall_ms": -1}})"), "limits.wall_ms must be a non-negative integer");
    EXPECT_EQ(rejected(R"({"script": "x", "limits": {"wall_ms": 1.5}})"), "limits.wall_ms must be a non-negative integer");
    EXPECT_EQ(rejected(R"({"script": "x", "limits": {"wall_ms": 1e3}})"), "limits.wall_ms must be a non-negative integer");
    EXPECT_EQ(rejected(R"({"script": "x", "limits": {"wall_ms": "5s"}})"), "limits.wall_ms must be a non-negative integer");
    EXPECT_EQ(rejected(R"({"script": "x", "limits": {"wall_ms": null}})"), "limits.wall_ms must be a non-negative integer");
    EXPECT_EQ(rejected(R"({"script": "x", "limits": {"wall_ms": [1]}})"), "limits.wall_ms must be a non-negative integer");
    EXPECT_EQ(rejected(R"({"script": "x", "limits": {"wall_ms": 18446744073709551616}})"),
              "limits.wall_ms must be a non-negative integer");
    EXPECT_EQ(rejected(R"({"script": "x", "limits": {"processes": 4294967297}})"),
              "Invalid limits: processes must be between 4 and 1024, got 4294967297");
    EXPECT_EQ(rejected(R"({"script": "x", "limits": {"stdout_bytes": 1073741824}})"),
              "Invalid limits: stdout_bytes must be between 1 and 16777216, got 1073741824");
    EXPECT_EQ(rejected(R"({"script": "x", "limits": {"wall_ms": 1, "wall_ms": 2}})"), "Duplicate limit \"wall_ms\"");
    EXPECT_EQ(rejected(R"({"script": "x", "limits": []})"), "\"limits\" must be an object");
    EXPECT_EQ(rejected(R"({"script": "x", "limits": null})"), "\"limits\" must be an object");
    EXPECT_EQ(rejected(R"({"script": "x", "limits": {"wall": 1}})"),
              "Unknown limit \"wall\"; known limits: wall_ms, cpu_ms, memory_bytes, processes, tmp_bytes, "
              "file_bytes, open_files, stdout_bytes, stderr_bytes, result_bytes, cpu_cores, stdin_bytes, input_files, input_files_bytes, output_files, "
              "output_files_bytes");
}

TEST(ExecuteBody, RequiresAStringScript) {
    EXPECT_EQ(rejected("{}"), "Missing field \"script\"");
    EXPECT_EQ(rejected(R"({"limits": {"wall_ms": 100}})"), "Missing field \"script\"");
    for (const char* value : {"42", "null", "true", "[\"x\"]", "{\"code\": \"x\"}", "1.5"}) {
        EXPECT_EQ(rejected(std::string(R"({"script": )") + value + "}"), "\"script\" must be a string") << value;
    }
    EXPECT_EQ(rejected(R"({"script": "a", "script": "b"})"), "Duplicate field \"script\"");
}

TEST(ExecuteBody, RejectsUnknownFields) {
    EXPECT_EQ(rejected(R"({"script": "x", "timeout": 5})"),
              "Unknown field \"timeout\"; the request accepts \"script\", \"limits\", \"args\", \"stdin\", \"stdin_base64\" and \"files\"");
    EXPECT_EQ(rejected(R"({"Script": "x"})"), "Unknown field \"Script\"; the request accepts \"script\", \"limits\", \"args\", \"stdin\", \"stdin_base64\" and \"files\"");
    const std::string long_key(10000, 'k');
    EXPECT_EQ(rejected("{\"" + long_key + "\": 1}"),
              "Unknown field \"" + std::string(64, 'k') + "\"...; the request accepts \"script\", \"limits\", \"args\", \"stdin\", \"stdin_base64\" and \"files\"");
    EXPECT_EQ(rejected("{\"scrip\\u0074\": \"x\", \"x\\u0000\": 1}"),
              "Unknown field \"x\\u0000\"; the request accepts \"script\", \"limits\", \"args\", \"stdin\", \"stdin_base64\" and \"files\"");
}

TEST(ExecuteBody, RejectsBodiesThatAreNotAnObject) {
    EXPECT_EQ(rejected(""), "The request body is empty; send a JSON object with a \"script\" string");
    EXPECT_EQ(rejected(" \n"), "The request body is empty; send a JSON object with a \"script\" string");
    for (const char* body : {"[]", "\"script\"", "42", "null", "[{\"script\": \"x\"}]"}) {
        EXPECT_EQ(rejected(body), "The request body must be a JSON object") << body;
    }
}

TEST(ExecuteBody, RejectsNonStrictJson) {
    for (const std::string& body : {
             R"({'script': 'x'})"s,
             R"({"script": "x",})"s,
             R"({"script": "x"} {"script": "y"})"s,
             R"({"script": "x"} trailing)"s,
             R"({"script": "x" /* c */})"s,
             R"({script: "x"})"s,
             R"({"script": "x")"s,
             R"({"script": "x\q"})"s,
             R"({"script": "\ud800"})"s,
             "{\"script\": \"tab\tinside\"}"s,
             "{\"script\": \"caf\xe9\"}"s,
             "{\"script\": \"\xed\xa0\x80\"}"s,
             "{\"script\": \"a\0b\"}"s,
             "\0{\"script\": \"x\"}"s,
             "{\"script\": \"x\"}\0"s,
         }) {
        const std::string message = rejected(body);
        EXPECT_EQ(message.rfind("The request body is not valid JSON", 0), 0u) << message << "\nbody: " << body;
    }
}

TEST(ExecuteBody, RejectsDeepNestingWithoutRecursing) {
    for (const std::size_t depth : {std::size_t(3), std::size_t(100), std::size_t(1) << 20}) {
        EXPECT_EQ(rejected(std::string(depth, '[') + std::string(depth, ']')), "The request body must be a JSON object");
        EXPECT_EQ(rejected("{\"script\": " + std::string(depth, '[') + std::string(depth, ']') + "}"),
                  "\"script\" must be a string");
        EXPECT_EQ(rejected("{\"script\": \"x\", \"limits\": {\"wall_ms\": " + std::string(depth, '{')),
                  "limits.wall_ms must be a non-negative integer");
    }
}

TEST(ExecuteBody, TakesArgsAsJsonTextWithNumbersExact) {
    const Request request = parsed(
        R"({"script": "x", "args": {"n": 3, "big": 123456789012345678901234567890, "f": -1.5e3, "s": "\u00e9\"",)"
        R"( "list": [1, [], {}, null, true, false], "nested": {"a": {"b": []}}}})");
    ASSERT_TRUE(request.args_json);
    EXPECT_EQ(*request.args_json,
              "{\"n\": 3, \"big\": 123456789012345678901234567890, \"f\": -1.5e3, \"s\": \"\xc3\xa9\\\"\", "
              "\"list\": [1, [], {}, null, true, false], \"nested\": {\"a\": {\"b\": []}}}");
    EXPECT_EQ(parsed(R"({"script": "x", "args": {}})").args_json, "{}");
    EXPECT_EQ(parsed(R"({"script": "x"})").args_json, std::nullopt);
}

TEST(ExecuteBody, RejectsArgsThatAreNotAnObject) {
    const std::string message = "\"args\" must be a JSON object (names to values): main is called as main(**args)";
    for (const char* args : {"[1, 2]", "3", "\"x\"", "null", "true"}) {
        EXPECT_EQ(rejected(std::string(R"({"script": "x", "args": )") + args + "}"), message) << args;
    }
    EXPECT_EQ(rejected(R"({"script": "x", "args": {"a": 1, "a": 2}})"), "Duplicate key \"a\" in \"args\"");
    EXPECT_EQ(rejected(R"({"script": "x", "args": {"o": {"k": 1, "k": 1}}})"), "Duplicate key \"k\" in \"args\"");
    EXPECT_EQ(rejected(R"({"script": "x", "args": {}, "args": {}})"), "Duplicate field \"args\"");
    EXPECT_NE(rejected("{\"script\": \"x\", \"args\": {\"a\": " + std::string(100, '[') + std::string(100, ']') + "}}")
                  .find("not valid JSON"),
              std::string::npos);
}

TEST(ExecuteBody, TakesStdinAsTextOrBase64) {
    EXPECT_EQ(parsed(R"({"script": "x", "stdin": "a,b\n1,2\n"})").stdin_bytes, "a,b\n1,2\n");
    EXPECT_EQ(parsed(R"({"script": "x", "stdin_base64": "AP8K"})").stdin_bytes, std::string("\0\xff\n", 3));
    EXPECT_EQ(rejected(R"({"script": "x", "stdin_base64": "AP8"})"), "\"stdin_base64\" is not valid base64");
    EXPECT_EQ(rejected(R"({"script": "x", "stdin": "a", "stdin_base64": "YQ=="})"),
              "Give \"stdin\" or \"stdin_base64\", not both");
    EXPECT_EQ(rejected(R"({"script": "x", "stdin": 5})"), "\"stdin\" must be a string");
    EXPECT_EQ(rejected(R"({"script": "x", "stdin_base64": ["YQ=="]})"), "\"stdin_base64\" must be a string of base64");
}

TEST(ExecuteBody, TakesFilesWithTextOrBase64Content) {
    const Request request = parsed(
        R"({"script": "x", "files": [{"path": "data.csv", "content": "a,b"}, {"content_base64": "iVBO", "path": "in/p.png"}]})");
    EXPECT_EQ(request.files, (std::vector<File>{{"data.csv", "a,b"}, {"in/p.png", "\x89PN"}}));
    EXPECT_TRUE(parsed(R"({"script": "x", "files": []})").files.empty());
    EXPECT_EQ(rejected(R"({"script": "x", "files": {"path": "a"}})"),
              "\"files\" must be an array of {\"path\": ..., \"content_base64\": ...} objects");
    EXPECT_EQ(rejected(R"({"script": "x", "files": ["a"]})"),
              "files[0] must be an object with \"path\" and \"content\" or \"content_base64\"");
    EXPECT_EQ(rejected(R"({"script": "x", "files": [{"path": "a", "content": ""}, {"content": ""}]})"),
              "files[1] has no \"path\"");
    EXPECT_EQ(rejected(R"({"script": "x", "files": [{"path": "a"}]})"),
              "files[0] needs one of \"content\" and \"content_base64\"");
    EXPECT_EQ(rejected(R"({"script": "x", "files": [{"path": "a", "content": "", "content_base64": ""}]})"),
              "files[0] needs one of \"content\" and \"content_base64\"");
    EXPECT_EQ(rejected(R"({"script": "x", "files": [{"path": "a", "path": "b", "content": ""}]})"),
              "files[0]: duplicate field \"path\"");
    EXPECT_EQ(rejected(R"({"script": "x", "files": [{"path": "a", "mode": 511, "content": ""}]})"),
              "files[0]: unknown field \"mode\"; a file has \"path\" and \"content\" or \"content_base64\"");
    EXPECT_EQ(rejected(R"({"script": "x", "files": [{"path": 1, "content": ""}]})"), "files[0].path must be a string");
    EXPECT_EQ(rejected(R"({"script": "x", "files": [{"path": "a", "content_base64": "!!"}]})"),
              "files[0].content_base64 is not valid base64");
    EXPECT_EQ(rejected(R"({"script": "x", "files": [[]]})"),
              "files[0] must be an object with \"path\" and \"content\" or \"content_base64\"");
}

TEST(ExecuteBody, KeepsAHugeScriptWhole) {
    const std::string script(3u << 20, 'x');
    EXPECT_EQ(parsed("{\"script\": \"" + script + "\"}").script, script);
}

ExecuteHeaders json_headers(std::string_view length) {
    ExecuteHeaders headers;
    headers.content_type = "application/json";
    headers.content_lengths = {length};
    return headers;
}

TEST(ExecuteHeaders, AcceptsAJsonBodyWithinTheLimit) {
    ExecutePolicy small;
    small.max_body_bytes = 100;
    EXPECT_EQ(check_execute_headers(json_headers("100"), small), std::nullopt);
    EXPECT_EQ(check_execute_headers(json_headers("0"), small), std::nullopt);
    ExecuteHeaders headers = json_headers("10");
    headers.content_type = " Application/JSON ; charset=utf-8";
    EXPECT_EQ(check_execute_headers(headers, small), std::nullopt);
    headers.content_encoding = "identity";
    EXPECT_EQ(check_execute_headers(headers, small), std::nullopt);
}

int refused(const ExecuteHeaders& headers, std::size_t max_body = 100) {
    ExecutePolicy small;
    small.max_body_bytes = max_body;
    const auto error = check_execute_headers(headers, small);
    if (!error) {
        ADD_FAILURE() << "accepted";
        return 0;
    }
    EXPECT_EQ(error->status, "invalid_request");
    EXPECT_FALSE(error->message.empty());
    return error->http_status;
}

TEST(ExecuteHeaders, RefusesWhatWouldBypassTheBodyLimit) {
    ExecuteHeaders chunked = json_headers("10");
    chunked.transfer_encoding = true;
    EXPECT_EQ(refused(chunked), 411);
    chunked.content_lengths.clear();
    EXPECT_EQ(refused(chunked), 411);
    ExecuteHeaders no_length = json_headers("");
    no_length.content_lengths.clear();
    EXPECT_EQ(refused(no_length), 411);
    EXPECT_EQ(refused(json_headers("101")), 413);
    EXPECT_EQ(refused(json_headers("99999999999999999999999")), 400);
    EXPECT_EQ(refused(json_headers("-1")), 400);
    EXPECT_EQ(refused(json_headers("1e3")), 400);
    EXPECT_EQ(refused(json_headers("")), 400);
    ExecuteHeaders twice = json_headers("10");
    twice.content_lengths.push_back("10");
    EXPECT_EQ(refused(twice), 400);
    ExecuteHeaders gzip = json_headers("10");
    gzip.content_encoding = "gzip";
    EXPECT_EQ(refused(gzip), 415);
}

TEST(ExecuteHeaders, RequiresJsonContentType) {
    ExecuteHeaders form = json_headers("10");
    form.content_type = "application/x-www-form-urlencoded";
    EXPECT_EQ(refused(form), 415);
    form.content_type = "text/plain";
    EXPECT_EQ(refused(form), 415);
    form.content_type = "application/jsonx";
    EXPECT_EQ(refused(form), 415);
    form.content_type.reset();
    EXPECT_EQ(refused(form), 415);
}

TEST(HttpStatus, SeparatesRequestScriptAndSandboxFailures) {
    EXPECT_EQ(http_status(Status::ok), 200);
    EXPECT_EQ(http_status(Status::invalid_request), 400);
    for (Status status : {Status::invalid_script, Status::script_error, Status::invalid_result, Status::timeout,
                          Status::memory_limit, Status::output_limit}) {
        EXPECT_EQ(http_status(status), 422) << status_name(status);
    }
    EXPECT_EQ(http_status(Status::sandbox_error), 500);
}

TEST(ErrorBody, IsJsonWithErrorAndStatus) {
    EXPECT_EQ(error_body({404, "No such path", "invalid_request"}),
              R"({"error": "No such path", "status": "invalid_request"})");
    EXPECT_EQ(error_body({503, "Busy \"now\"\n", std::string(k_unavailable_status)}),
              R"({"error": "Busy \"now\"\n", "status": "unavailable"})");
    EXPECT_EQ(error_body({400, "bad \xff", "invalid_request"}),
              "{\"error\": \"bad \xef\xbf\xbd\", \"status\": \"invalid_request\"}");
}

TEST(Details, OnlyOneAndTrueAskForThem) {
    EXPECT_TRUE(details_requested("1"));
    EXPECT_TRUE(details_requested("true"));
    EXPECT_FALSE(details_requested(""));
    EXPECT_FALSE(details_requested("0"));
    EXPECT_FALSE(details_requested("yes"));
}

TEST(JsonQuote, EscapesAndRepairs) {
    EXPECT_EQ(json_quote("a\"b\n"), R"("a\"b\n")");
    EXPECT_EQ(json_quote("\xff"), "\"\xef\xbf\xbd\"");
}

TEST(ServiceMaxima, CapOutputAndAdmitTheDefaults) {
    const Limits maxima = service_maxima();
    EXPECT_EQ(check_limits(Limits{}, maxima), std::nullopt);
    EXPECT_EQ(maxima.stdout_bytes, 16u << 20);
    EXPECT_EQ(maxima.wall, default_maxima().wall);
}

TEST(AccessLog, IsOneJsonLineWithoutClientBytes) {
    AccessLogEntry entry;
    entry.time = std::chrono::system_clock::time_point(std::chrono::milliseconds(1'700'000'000'123));
    entry.method = "POST";
    entry.path = "/execute";
    entry.remote_address = "127.0.0.1";
    entry.http_status = 200;
    entry.outcome = "ok";
    entry.duration = std::chrono::milliseconds(70);
    entry.queue_wait = std::chrono::milliseconds(3);
    Usage usage;
    usage.wall = std::chrono::milliseconds(60);
    usage.cpu = std::chrono::milliseconds(40);
    usage.peak_memory_bytes = 1024;
    entry.usage = usage;
    entry.bytes_in = 71;
    entry.bytes_out = 55;
    EXPECT_EQ(access_log_json(entry),
              R"({"time":"2023-11-14T22:13:20.123Z","method":"POST","path":"/execute","status":200,"outcome":"ok",)"
              R"("duration_ms":70,"queue_ms":3,"run_ms":60,"cpu_ms":40,"peak_memory_bytes":1024,"bytes_in":71,)"
              R"("bytes_out":55,"remote":"127.0.0.1"})");

    AccessLogEntry hostile;
    hostile.time = entry.time;
    hostile.method = "G\"ET\n";
    const std::string path = "/\xff" + std::string(1000, 'a');
    hostile.path = path;
    hostile.http_status = 404;
    const std::string line = access_log_json(hostile);
    EXPECT_EQ(line.find('\n'), std::string::npos);
    EXPECT_NE(line.find(R"("method":"G\"ET\n")"), std::string::npos) << line;
    EXPECT_NE(line.find("\"path\":\"/\xef\xbf\xbd" + std::string(254, 'a') + "\""), std::string::npos) << line;
    EXPECT_EQ(line.find("outcome"), std::string::npos);
    EXPECT_EQ(line.find("run_ms"), std::string::npos);
}

}  // namespace
}  // namespace safepy

namespace safepy {
namespace {

// The state after feeding `head` whole, and again one byte at a time.
RequestHeadScanner::State scanned(std::string_view head, RequestHeadScanner* out = nullptr,
                                  RequestHeadLimits limits = {}) {
    RequestHeadScanner whole(limits);
    const auto state = whole.scan(head);
    RequestHeadScanner drip(limits);
    auto dripped = RequestHeadScanner::State::need_more;
    for (std::size_t n = 1; n <= head.size() && dripped == RequestHeadScanner::State::need_more; ++n) {
        dripped = drip.scan(head.substr(0, n));
    }
    EXPECT_EQ(dripped, state) << head.substr(0, 100);
    if (out) {
        *out = whole;
    }
    return state;
}

TEST(RequestHead, AcceptsStrictHeadsAndSaysWhereTheyEnd) {
    using State = RequestHeadScanner::State;
    RequestHeadScanner scanner;
    const std::string head = "POST /execute?details=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nX-E: a\tb \xc3\xa9\r\n\r\n";
    EXPECT_EQ(scanned(head + "{}", &scanner), State::complete);
    EXPECT_EQ(scanner.head_bytes(), head.size());
    EXPECT_EQ(scanned("GET / HTTP/1.0\r\n\r\n"), State::complete);
    EXPECT_EQ(scanned("GET / HTTP/1.1\r\nHost: x\r\n"), State::need_more);
}

TEST(RequestHead, RefusesLaxHeads) {
    using State = RequestHeadScanner::State;
    for (const std::string& head : std::vector<std::string>{
             "GET / HTTP/1.1\nHost: x\r\n\r\n",
             "GET / HTTP/1.1\r\nHost: x\r\nA: 1\r\n 2\r\n\r\n",
             "GET / HTTP/1.1\r\nHost: x\r\nA 1\r\n\r\n",
             "GET / HTTP/1.1\r\nHost: x\r\nA : 1\r\n\r\n",
             "GET / HTTP/1.1\r\nHost: x\r\nA: 1\r2\r\n\r\n",
             std::string("GET / HTTP/1.1\r\nHost: x\r\nA: \0\r\n\r\n", 33),
             "GET / HTTP/1.1\r\nHost: x\r\nA: \x7f\r\n\r\n",
             "GET / HTTP/1.1\r\n\r\n",
             "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
             "BREW / HTTP/1.1\r\nHost: x\r\n\r\n",
             "GET / HTTP/1.2\r\nHost: x\r\n\r\n",
             "GET  / HTTP/1.1\r\nHost: x\r\n\r\n",
             "\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
         }) {
        RequestHeadScanner scanner;
        EXPECT_EQ(scanned(head, &scanner), State::refused) << head;
        EXPECT_EQ(scanner.error().http_status, 400) << head;
        EXPECT_EQ(scanner.error().message, "Malformed HTTP request");
        EXPECT_FALSE(scanner.detail().empty());
    }
}

TEST(RequestHead, LimitsTheTargetTheHeadAndTheFieldCount) {
    using State = RequestHeadScanner::State;
    RequestHeadLimits limits;
    limits.head_bytes = 4096;
    limits.target_bytes = 100;
    limits.fields = 3;
    RequestHeadScanner scanner;
    // A long request line is refused before its end arrives.
    EXPECT_EQ(scanned("GET /" + std::string(200, 'a'), &scanner, limits), State::refused);
    EXPECT_EQ(scanner.error().http_status, 414);
    EXPECT_EQ(scanned("GET /" + std::string(100, 'a') + " HTTP/1.1\r\n", &scanner, limits), State::refused);
    EXPECT_EQ(scanner.error().http_status, 414);
    EXPECT_EQ(scanned("GET / HTTP/1.1\r\nHost: x\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n", &scanner, limits), State::refused);
    EXPECT_EQ(scanner.error().http_status, 400);
    EXPECT_EQ(scanned("GET / HTTP/1.1\r\nHost: x\r\nA: " + std::string(5000, 'a'), &scanner, limits), State::refused);
    EXPECT_EQ(scanner.error().http_status, 400);
}

TEST(RequestTarget, OriginAndAbsoluteForms) {
    const auto origin = parse_request_target("/execute?details=1&x");
    ASSERT_TRUE(origin);
    EXPECT_EQ(origin->path, "/execute");
    EXPECT_EQ(origin->query, "details=1&x");
    const auto absolute = parse_request_target("HTTP://example.com:8080/readyz");
    ASSERT_TRUE(absolute);
    EXPECT_EQ(absolute->path, "/readyz");
    EXPECT_EQ(parse_request_target("http://example.com")->path, "/");
    EXPECT_FALSE(parse_request_target("*"));
    EXPECT_FALSE(parse_request_target("execute"));
    EXPECT_FALSE(parse_request_target("http:///execute"));
    EXPECT_FALSE(parse_request_target("ftp://x/execute"));
    EXPECT_EQ(query_parameter("a=1&details=true&b", "details"), "true");
    EXPECT_EQ(query_parameter("xdetails=1", "details"), "");
    EXPECT_EQ(query_parameter("", "details"), "");
}

TEST(RefusalThrottle, OneFullLinePerSecondAndASummaryWithCounts) {
    RefusalThrottle throttle;
    const auto t0 = RefusalThrottle::Clock::now();
    EXPECT_TRUE(throttle.admit("connection_refused", t0));
    EXPECT_FALSE(throttle.admit("connection_refused", t0 + std::chrono::milliseconds(10)));
    EXPECT_FALSE(throttle.admit("malformed", t0 + std::chrono::milliseconds(20)));
    EXPECT_FALSE(throttle.admit("malformed", t0 + std::chrono::milliseconds(999)));
    const auto line = throttle.summary();
    ASSERT_TRUE(line);
    EXPECT_NE(line->find(R"("event":"refusals_suppressed","count":3,"outcomes":{"connection_refused":1,"malformed":2})"),
              std::string::npos)
        << *line;
    EXPECT_FALSE(throttle.summary());
    EXPECT_TRUE(throttle.admit("malformed", t0 + std::chrono::milliseconds(1000)));
}

}  // namespace
}  // namespace safepy

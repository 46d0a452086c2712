// The HTTP face's decisions: what POST /execute accepts, which HTTP status each
// outcome gets, and the JSON bodies and log lines the server writes. Pure
// functions, no I/O: the server translates HTTP to these calls and back.
#pragma once

#include "safepy/safepy.hpp"

#include <chrono>
#include <map>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace safepy {

// The body's "status" when the server could not take a request (429, 503): retry later.
inline constexpr std::string_view k_unavailable_status = "unavailable";

// A request answered without a run: the HTTP status code and the body's fields.
struct HttpError {
    int http_status = 400;
    std::string message;                     // the body's "error"
    std::string status = "invalid_request";  // the body's "status": a status_name() or k_unavailable_status
};

// A whole answer decided by the library: the HTTP status code and the JSON body.
struct HttpReply {
    int http_status = 200;
    std::string body;
};

// The JSON body of an error: {"error": "...", "status": "..."}, with the
// envelope's separators; invalid UTF-8 in the message becomes U+FFFD.
std::string error_body(const HttpError& error);

// The HTTP status code for an outcome: 200 ok, 400 invalid_request, 422 the
// script failed (invalid_script, script_error, invalid_result, timeout,
// memory_limit, output_limit), 500 sandbox_error.
int http_status(Status status);

// The largest limits a network service allows by default: default_maxima()
// sized to this host for `concurrency` runs (see host_maxima), with output
// caps that keep one response's memory to tens of MiB.
Limits service_maxima(std::size_t concurrency = 1, bool warm = true);

// What POST /execute accepts.
struct ExecutePolicy {
    Limits defaults;                    // a request's limits before its "limits" field applies
    Limits maxima = service_maxima();   // no request limit may exceed these
    std::size_t max_body_bytes = 2u << 20;
};

// The request headers that decide whether a POST /execute body is read at all.
struct ExecuteHeaders {
    std::optional<std::string_view> content_type;
    std::vector<std::string_view> content_lengths;  // one entry per Content-Length header
    bool transfer_encoding = false;                 // any Transfer-Encoding header (chunked included)
    std::optional<std::string_view> content_encoding;
};

// The error to answer instead of reading the body: 411 for a transfer-encoded
// (chunked) body or no Content-Length, 400 for a malformed or repeated
// Content-Length, 413 for a body over policy.max_body_bytes, 415 for a
// Content-Encoding or a Content-Type other than application/json. Empty when
// the body may be read; it is then exactly the Content-Length, within the limit.
std::optional<HttpError> check_execute_headers(const ExecuteHeaders& headers, const ExecutePolicy& policy);

// The bounds of a request's line and headers, before anything else is read.
struct RequestHeadLimits {
    std::size_t head_bytes = 64 * 1024;    // request line, header lines and the blank line together
    std::size_t target_bytes = 8 * 1024;   // the request target (URI); more gets 414
    std::size_t fields = 100;              // header lines
};

// Strict HTTP/1.1 for a request head (RFC 9112), fed the bytes of a
// connection as they arrive. Refused with 400 "Malformed HTTP request": a
// method other than GET, HEAD, POST, PUT, DELETE, OPTIONS, TRACE, PATCH or
// CONNECT; a version other than HTTP/1.0 or HTTP/1.1; a bare CR or LF (every
// line ends in CRLF); NUL or another control character; obs-fold (a line
// starting with a space or tab); a header name that is not a token or is
// followed by anything but ':'; more than `fields` header lines or
// `head_bytes` in all; a missing or repeated Host in HTTP/1.1. Refused with
// 414: a request target longer than `target_bytes`. detail() says which rule,
// for the log. Each byte is looked at once, however the head is split.
class RequestHeadScanner {
public:
    enum class State { need_more, complete, refused };

    explicit RequestHeadScanner(RequestHeadLimits limits = {});

    // Scans `received`, every byte of the connection since the head began
    // (the same prefix, longer at each call).
    State scan(std::string_view received);

    // Once complete: the head's length, blank line included; what follows is body or the next request.
    std::size_t head_bytes() const { return m_head_bytes; }

    // Once refused: the answer, and which rule was broken (for the operator's log, never sent).
    const HttpError& error() const { return m_error; }
    const std::string& detail() const { return m_detail; }

private:
    State refuse(int http_status, std::string detail);
    State check_line(std::string_view line);

    RequestHeadLimits m_limits;
    std::size_t m_line_start = 0;   // the first byte of the line being received
    std::size_t m_scanned = 0;      // bytes looked at
    std::size_t m_lines = 0;        // complete lines so far
    std::size_t m_hosts = 0;
    bool m_http11 = false;
    std::size_t m_head_bytes = 0;
    HttpError m_error;
    std::string m_detail;
};

// The path and query of a request target in origin form ("/execute?details=1")
// or absolute form ("http://host/execute"); empty when it is neither (400).
struct RequestTarget {
    std::string_view path;
    std::string_view query;
};
std::optional<RequestTarget> parse_request_target(std::string_view target);

// The value of query parameter `name` ("details" in "a=1&details=1"), as sent; empty when absent.
std::string_view query_parameter(std::string_view query, std::string_view name);

// POST /execute after its headers passed check_execute_headers: the Request
// to run, or the reply when the body or the script is refused without a run
// (400, with the envelope's error body, or the sandbox's own refusal).
std::variant<Request, HttpReply> prepare_execute(std::string_view body, const ExecutePolicy& policy,
                                                 const Sandbox& sandbox);

// The reply for a finished run: http_status() and the envelope.
HttpReply execute_reply(const Outcome& outcome, bool details);

// GET /readyz from the doctor's probe run (Sandbox::diagnostics(true)): 200
// {"status": "ready", "jail": ..., "probe_ms": N} when it ran, else 503 with
// the probe's error (its detail and stderr go to `detail`, for the log).
HttpReply readiness_reply(const Diagnostics& diagnostics, std::string& detail);

// Whether the query parameter "details" (POST /execute?details=1) asks for
// envelope_json(outcome, true): "1" or "true".
bool details_requested(std::string_view value);

// Parses a POST /execute body: a strict JSON object (no comments, trailing
// commas, duplicate keys or invalid UTF-8) with a string "script" and an
// optional "limits" object of limit names (see limit_fields()) to non-negative
// integers, each checked against policy.maxima; limits not given keep
// policy.defaults. Any other field is rejected. Errors are 400 HttpErrors;
// never throws. Script size and NUL bytes are left to Sandbox::run.
std::variant<Request, HttpError> parse_execute_body(std::string_view body, const ExecutePolicy& policy);

// A JSON string literal (quotes included) for any bytes; invalid UTF-8 becomes U+FFFD.
std::string json_quote(std::string_view bytes);

// `time` as the logs write it: RFC 3339 in UTC with milliseconds, "2025-01-31T12:00:00.123Z".
std::string log_timestamp(std::chrono::system_clock::time_point time);

// One request, as the server's access log records it. Never the script or its output.
struct AccessLogEntry {
    std::chrono::system_clock::time_point time;
    std::string_view method;
    std::string_view path;
    std::string_view remote_address;
    int http_status = 0;
    std::string_view outcome;  // a status_name() when a run happened, else why not (may be empty)
    std::chrono::milliseconds duration{0};    // first request byte to response written
    std::chrono::milliseconds queue_wait{0};
    std::optional<Usage> usage;               // when a run happened
    std::uint64_t bytes_in = 0;               // request body
    std::uint64_t bytes_out = 0;              // response body
    std::string_view detail;                  // a sandbox_error's detail, for the operator
};

// The entry as one line of JSON, without a newline. Client-controlled text
// (method, path) is cut to 256 bytes and made valid UTF-8.
std::string access_log_json(const AccessLogEntry& entry);

// Under a flood of refusals (connections over the budget, malformed
// requests), the first of each second is logged in full and the rest are
// only counted: one summary line per second instead. Not thread-safe.
class RefusalThrottle {
public:
    using Clock = std::chrono::steady_clock;

    // True when this refusal gets its own log line; else it is counted under `outcome`.
    bool admit(std::string_view outcome, Clock::time_point now = Clock::now());

    // The line for refusals counted since the last summary, if any; called once a second:
    // {"time":...,"event":"refusals_suppressed","count":N,"outcomes":{"connection_refused":N,...}}.
    std::optional<std::string> summary(std::chrono::system_clock::time_point wall = std::chrono::system_clock::now());

private:
    std::optional<Clock::time_point> m_window;  // when the second of the last logged refusal began
    std::map<std::string, std::uint64_t, std::less<>> m_suppressed;
};

}  // namespace safepy

// The HTTP face's decisions: what POST /execute accepts, which HTTP status each
// outcome gets, and the JSON bodies and log lines the server writes. Pure
// functions, no I/O: the server translates HTTP to these calls and back.
#pragma once

#include "safepy/safepy.hpp"

#include <chrono>
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

}  // namespace safepy

#include "safepy/http.hpp"

#include "envelope.hpp"

#include <boost/json/basic_parser_impl.hpp>
#include <boost/json/object.hpp>
#include <boost/json/serialize.hpp>
#include <boost/json/value.hpp>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <ctime>

namespace safepy {
namespace {

namespace json = boost::json;

constexpr std::size_t k_body_max_depth = 8;  // the schema needs 2; deeper input fails at its first container
constexpr std::size_t k_quoted_name_bytes = 64;
constexpr std::size_t k_logged_text_bytes = 256;

HttpError bad_request(std::string message) {
    return HttpError{400, std::move(message), std::string(status_name(Status::invalid_request))};
}

// A client-supplied name, cut short and quoted, for an error message.
std::string quoted_name(std::string_view name) {
    if (name.size() > k_quoted_name_bytes) {
        return json_string(repair_utf8(name.substr(0, k_quoted_name_bytes))) + "...";
    }
    return json_string(repair_utf8(name));
}

std::string known_limit_names() {
    std::string names;
    for (const auto& field : limit_fields()) {
        names += (names.empty() ? "" : ", ") + std::string(field.name);
    }
    return names;
}

bool iequals(std::string_view a, std::string_view b) {
    return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
               return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
           });
}

std::string_view trim(std::string_view text) {
    const auto first = text.find_first_not_of(" \t");
    if (first == std::string_view::npos) {
        return {};
    }
    return text.substr(first, text.find_last_not_of(" \t") - first + 1);
}

// Builds the Request while Boost.JSON's basic_parser checks syntax, UTF-8 and
// depth. Turning every value into a Request field as it arrives means a
// duplicate key or a value of the wrong type is caught at once, and nothing but
// the script is ever stored.
class BodyHandler {
public:
    constexpr static std::size_t max_object_size = std::size_t(-1);
    constexpr static std::size_t max_array_size = std::size_t(-1);
    constexpr static std::size_t max_key_size = std::size_t(-1);
    constexpr static std::size_t max_string_size = std::size_t(-1);

    explicit BodyHandler(const ExecutePolicy& policy) : m_maxima(policy.maxima) {
        m_request.limits = policy.defaults;
    }

    bool on_document_begin(json::error_code&) { return true; }
    bool on_document_end(json::error_code&) { return true; }

    bool on_object_begin(json::error_code& ec) {
        if (m_depth == 0 || (m_depth == 1 && m_expect == Expect::limits_object)) {
            ++m_depth;
            m_expect = Expect::key;
            return true;
        }
        return wrong_type(ec);
    }
    bool on_object_end(std::size_t, json::error_code&) {
        --m_depth;
        m_expect = m_depth == 0 ? Expect::nothing : Expect::key;
        return true;
    }
    bool on_array_begin(json::error_code& ec) { return wrong_type(ec); }
    bool on_array_end(std::size_t, json::error_code&) { return true; }

    bool on_key_part(json::string_view part, std::size_t, json::error_code&) {
        append_key(part);
        return true;
    }
    bool on_key(json::string_view part, std::size_t, json::error_code& ec) {
        append_key(part);
        const std::string key = std::move(m_key);
        const bool cut = m_key_cut;
        m_key.clear();
        m_key_cut = false;
        return m_depth == 1 ? on_field(key, cut, ec) : on_limit_name(key, cut, ec);
    }

    bool on_string_part(json::string_view part, std::size_t, json::error_code& ec) {
        if (m_expect != Expect::script) {
            return wrong_type(ec);
        }
        m_request.script.append(part.data(), part.size());
        return true;
    }
    bool on_string(json::string_view part, std::size_t n, json::error_code& ec) {
        if (!on_string_part(part, n, ec)) {
            return false;
        }
        m_expect = Expect::key;
        return true;
    }

    bool on_number_part(json::string_view, json::error_code&) { return true; }
    bool on_int64(std::int64_t value, json::string_view, json::error_code& ec) {
        if (value < 0) {
            return wrong_type(ec);
        }
        return on_uint64(static_cast<std::uint64_t>(value), {}, ec);
    }
    bool on_uint64(std::uint64_t value, json::string_view, json::error_code& ec) {
        if (m_expect != Expect::limit_value) {
            return wrong_type(ec);
        }
        if (auto error = set_limit(m_request.limits, m_limit, value, m_maxima)) {
            return fail("Invalid limits: " + *error, ec);
        }
        m_expect = Expect::key;
        return true;
    }
    bool on_double(double, json::string_view, json::error_code& ec) { return wrong_type(ec); }
    bool on_bool(bool, json::error_code& ec) { return wrong_type(ec); }
    bool on_null(json::error_code& ec) { return wrong_type(ec); }
    bool on_comment_part(json::string_view, json::error_code&) { return true; }
    bool on_comment(json::string_view, json::error_code&) { return true; }

    const std::string& error() const { return m_error; }
    bool has_script() const { return m_seen_script; }
    Request take_request() { return std::move(m_request); }

private:
    enum class Expect { document, key, script, limits_object, limit_value, nothing };

    void append_key(json::string_view part) {
        // Keys longer than any known name are only ever quoted in a message.
        const std::size_t room = k_quoted_name_bytes + 1 - std::min(m_key.size(), k_quoted_name_bytes + 1);
        m_key.append(part.data(), std::min(part.size(), room));
        m_key_cut = m_key_cut || part.size() > room;
    }

    bool on_field(const std::string& key, bool cut, json::error_code& ec) {
        if (!cut && key == "script") {
            if (m_seen_script) {
                return fail("Duplicate field \"script\"", ec);
            }
            m_seen_script = true;
            m_expect = Expect::script;
            return true;
        }
        if (!cut && key == "limits") {
            if (m_seen_limits) {
                return fail("Duplicate field \"limits\"", ec);
            }
            m_seen_limits = true;
            m_expect = Expect::limits_object;
            return true;
        }
        return fail("Unknown field " + quoted_name(key) + "; the request accepts \"script\" and \"limits\"", ec);
    }

    bool on_limit_name(const std::string& key, bool cut, json::error_code& ec) {
        if (cut || !get_limit(m_request.limits, key)) {
            return fail("Unknown limit " + quoted_name(key) + "; known limits: " + known_limit_names(), ec);
        }
        if (std::find(m_seen_limit_names.begin(), m_seen_limit_names.end(), key) != m_seen_limit_names.end()) {
            return fail("Duplicate limit " + quoted_name(key), ec);
        }
        m_seen_limit_names.push_back(key);
        m_limit = key;
        m_expect = Expect::limit_value;
        return true;
    }

    bool wrong_type(json::error_code& ec) {
        switch (m_expect) {
        case Expect::document:
            return fail("The request body must be a JSON object", ec);
        case Expect::script:
            return fail("\"script\" must be a string", ec);
        case Expect::limits_object:
            return fail("\"limits\" must be an object", ec);
        case Expect::limit_value:
            return fail("limits." + m_limit + " must be a non-negative integer", ec);
        case Expect::key:
        case Expect::nothing:
            break;
        }
        return fail("The request body is not valid JSON", ec);
    }

    bool fail(std::string message, json::error_code& ec) {
        m_error = std::move(message);
        ec = json::error::syntax;  // any error stops the parser; m_error says what it was
        return false;
    }

    const Limits& m_maxima;
    Request m_request;
    Expect m_expect = Expect::document;
    std::size_t m_depth = 0;
    std::string m_key;
    bool m_key_cut = false;
    std::string m_limit;
    std::vector<std::string> m_seen_limit_names;
    bool m_seen_script = false;
    bool m_seen_limits = false;
    std::string m_error;
};

json::string_view logged_text(std::string_view text, std::string& storage) {
    storage = repair_utf8(text.substr(0, k_logged_text_bytes));
    return json::string_view(storage.data(), storage.size());
}

}  // namespace

std::string error_body(const HttpError& error) {
    return "{\"error\": " + json_string(repair_utf8(error.message)) +
           ", \"status\": " + json_string(repair_utf8(error.status)) + "}";
}

int http_status(Status status) {
    constexpr int k_codes[] = {200, 400, 422, 500};  // by Party
    return k_codes[static_cast<int>(party_of(status))];
}

Limits service_maxima(std::size_t concurrency, bool warm) {
    Limits maxima = host_maxima(default_maxima(), read_host_resources(), concurrency, warm);
    maxima.stdout_bytes = 16ull << 20;
    maxima.stderr_bytes = 16ull << 20;
    maxima.result_bytes = 64ull << 20;
    return maxima;
}

std::optional<HttpError> check_execute_headers(const ExecuteHeaders& headers, const ExecutePolicy& policy) {
    if (headers.transfer_encoding) {
        return HttpError{411, "Transfer-Encoding (chunked) request bodies are not accepted; send Content-Length",
                         std::string(status_name(Status::invalid_request))};
    }
    if (headers.content_encoding && !iequals(trim(*headers.content_encoding), "identity")) {
        return HttpError{415, "Content-Encoding is not accepted; send the body uncompressed",
                         std::string(status_name(Status::invalid_request))};
    }
    if (headers.content_lengths.empty()) {
        return HttpError{411, "Content-Length is required", std::string(status_name(Status::invalid_request))};
    }
    if (headers.content_lengths.size() > 1) {
        return bad_request("Content-Length must be given once");
    }
    const std::string_view text = trim(headers.content_lengths.front());
    std::uint64_t length = 0;
    const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), length);
    if (text.empty() || error != std::errc() || end != text.data() + text.size()) {
        return bad_request("Content-Length is not a number");
    }
    if (length > policy.max_body_bytes) {
        return HttpError{413,
                         "The request body is " + std::to_string(length) + " bytes; the limit is " +
                             std::to_string(policy.max_body_bytes),
                         std::string(status_name(Status::invalid_request))};
    }
    const std::string_view media_type =
        headers.content_type ? trim(headers.content_type->substr(0, headers.content_type->find(';'))) : "";
    if (!iequals(media_type, "application/json")) {
        return HttpError{415, "Content-Type must be application/json",
                         std::string(status_name(Status::invalid_request))};
    }
    return std::nullopt;
}

bool details_requested(std::string_view value) {
    return value == "1" || value == "true";
}

std::variant<Request, HttpError> parse_execute_body(std::string_view body, const ExecutePolicy& policy) {
    if (body.find_first_not_of(" \t\r\n") == std::string_view::npos) {
        return bad_request("The request body is empty; send a JSON object with a \"script\" string");
    }
    json::parse_options options;
    options.max_depth = k_body_max_depth;
    json::basic_parser<BodyHandler> parser(options, policy);
    json::error_code error;
    const std::size_t used = parser.write_some(false, body.data(), body.size(), error);
    BodyHandler& handler = parser.handler();
    if (!handler.error().empty()) {
        return bad_request(handler.error());
    }
    if (error) {
        return bad_request("The request body is not valid JSON: " + error.message() + " at byte " +
                           std::to_string(used));
    }
    if (body.substr(used).find_first_not_of(" \t\r\n") != std::string_view::npos) {
        return bad_request("The request body is not valid JSON: data after the object at byte " +
                           std::to_string(used));
    }
    if (!handler.has_script()) {
        return bad_request("Missing field \"script\"");
    }
    return handler.take_request();
}

std::string log_timestamp(std::chrono::system_clock::time_point time) {
    const auto since_epoch = time.time_since_epoch();
    const auto seconds = std::chrono::floor<std::chrono::seconds>(since_epoch);
    const auto millis = std::chrono::duration_cast<std::chrono::milliseconds>(since_epoch - seconds).count();
    const std::time_t t = static_cast<std::time_t>(seconds.count());
    std::tm parts{};
    gmtime_r(&t, &parts);
    char text[40];
    const std::size_t n = std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%S", &parts);
    return std::string(text, n) + "." + std::to_string(1000 + millis).substr(1) + "Z";
}

std::string json_quote(std::string_view bytes) {
    return json_string(repair_utf8(bytes));
}

std::string access_log_json(const AccessLogEntry& entry) {
    std::string method, path, remote, detail;
    json::object line;
    line["time"] = log_timestamp(entry.time);
    line["method"] = logged_text(entry.method, method);
    line["path"] = logged_text(entry.path, path);
    line["status"] = entry.http_status;
    if (!entry.outcome.empty()) {
        line["outcome"] = json::string_view(entry.outcome.data(), entry.outcome.size());
    }
    line["duration_ms"] = entry.duration.count();
    line["queue_ms"] = entry.queue_wait.count();
    if (entry.usage) {
        line["run_ms"] = entry.usage->wall.count();
        line["cpu_ms"] = entry.usage->cpu.count();
        line["peak_memory_bytes"] = entry.usage->peak_memory_bytes;
    }
    line["bytes_in"] = entry.bytes_in;
    line["bytes_out"] = entry.bytes_out;
    line["remote"] = logged_text(entry.remote_address, remote);
    if (!entry.detail.empty()) {
        detail = repair_utf8(entry.detail);
        line["detail"] = json::string_view(detail.data(), detail.size());
    }
    return json::serialize(line);
}

}  // namespace safepy

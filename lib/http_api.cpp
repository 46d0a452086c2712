#include "safepy/http.hpp"

#include "base64.hpp"
#include "envelope.hpp"
#include "job.hpp"

#include <boost/json/basic_parser_impl.hpp>
#include <boost/json/object.hpp>
#include <boost/json/serialize.hpp>
#include <boost/json/value.hpp>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <ctime>
#include <set>

namespace safepy {
namespace {

namespace json = boost::json;

// The schema needs 3; "args" may nest k_args_max_depth deep (lib/job.hpp).
constexpr std::size_t k_body_max_depth = 2 + k_args_max_depth;
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
// the request's own fields is ever stored. "args" is kept as JSON text,
// written back from the parser's events (duplicate keys refused).
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
        if (capturing()) {
            return capture_open('{', true);
        }
        switch (m_expect) {
        case Expect::document:
            m_expect = Expect::key;
            return true;
        case Expect::limits_object:
            m_where = Where::limits;
            m_expect = Expect::key;
            return true;
        case Expect::args_value:
            m_args = "";
            return capture_open('{', true);
        case Expect::file_item:
            m_where = Where::file;
            m_file = File{};
            m_file_fields = {};
            m_expect = Expect::key;
            return true;
        default:
            return wrong_type(ec);
        }
    }
    bool on_object_end(std::size_t, json::error_code& ec) {
        if (capturing()) {
            return capture_close('}');
        }
        switch (m_where) {
        case Where::limits:
            m_where = Where::top;
            m_expect = Expect::key;
            return true;
        case Where::file:
            return end_file(ec);
        default:
            m_expect = Expect::nothing;
            return true;
        }
    }
    bool on_array_begin(json::error_code& ec) {
        if (capturing()) {
            return capture_open('[', false);
        }
        if (m_expect != Expect::files_array) {
            return wrong_type(ec);
        }
        m_where = Where::files;
        m_expect = Expect::file_item;
        return true;
    }
    bool on_array_end(std::size_t, json::error_code&) {
        if (capturing()) {
            return capture_close(']');
        }
        m_where = Where::top;
        m_expect = Expect::key;
        return true;
    }

    bool on_key_part(json::string_view part, std::size_t, json::error_code&) {
        if (capturing()) {
            m_text.append(part.data(), part.size());
        } else {
            append_key(part);
        }
        return true;
    }
    bool on_key(json::string_view part, std::size_t n, json::error_code& ec) {
        on_key_part(part, n, ec);
        if (capturing()) {
            return capture_key(ec);
        }
        const std::string key = std::move(m_key);
        const bool cut = m_key_cut;
        m_key.clear();
        m_key_cut = false;
        switch (m_where) {
        case Where::limits:
            return on_limit_name(key, cut, ec);
        case Where::file:
            return on_file_field(key, cut, ec);
        default:
            return on_field(key, cut, ec);
        }
    }

    bool on_string_part(json::string_view part, std::size_t, json::error_code& ec) {
        std::string* target = string_target();
        if (!target) {
            return wrong_type(ec);
        }
        target->append(part.data(), part.size());
        return true;
    }
    bool on_string(json::string_view part, std::size_t n, json::error_code& ec) {
        if (!on_string_part(part, n, ec)) {
            return false;
        }
        if (capturing()) {
            capture_value(json_string(m_text));
            m_text.clear();
            return true;
        }
        return end_string(ec);
    }

    bool on_number_part(json::string_view part, json::error_code&) {
        if (capturing()) {
            m_text.append(part.data(), part.size());
        }
        return true;
    }
    bool on_int64(std::int64_t value, json::string_view text, json::error_code& ec) {
        if (capturing()) {
            return capture_number(text);
        }
        if (value < 0) {
            return wrong_type(ec);
        }
        return on_uint64(static_cast<std::uint64_t>(value), {}, ec);
    }
    bool on_uint64(std::uint64_t value, json::string_view text, json::error_code& ec) {
        if (capturing()) {
            return capture_number(text);
        }
        if (m_expect != Expect::limit_value) {
            return wrong_type(ec);
        }
        if (auto error = set_limit(m_request.limits, m_limit, value, m_maxima)) {
            return fail("Invalid limits: " + *error, ec);
        }
        m_expect = Expect::key;
        return true;
    }
    bool on_double(double, json::string_view text, json::error_code& ec) {
        return capturing() ? capture_number(text) : wrong_type(ec);
    }
    bool on_bool(bool value, json::error_code& ec) {
        return capturing() ? capture_value(value ? "true" : "false") : wrong_type(ec);
    }
    bool on_null(json::error_code& ec) { return capturing() ? capture_value("null") : wrong_type(ec); }
    bool on_comment_part(json::string_view, json::error_code&) { return true; }
    bool on_comment(json::string_view, json::error_code&) { return true; }

    const std::string& error() const { return m_error; }
    bool has_script() const { return m_seen.count("script") > 0; }
    Request take_request() { return std::move(m_request); }

private:
    enum class Expect {
        document, key, script, stdin_text, stdin_base64, limits_object, limit_value, args_value, files_array,
        file_item, file_path, file_content, file_content_base64, nothing
    };
    enum class Where { top, limits, files, file };

    // One open container of "args".
    struct Frame {
        bool is_object;
        bool any = false;  // an element was written: the next needs ", "
        std::set<std::string, std::less<>> keys;
    };

    bool capturing() const { return !m_frames.empty(); }

    void before_value() {
        if (!m_frames.empty() && !m_frames.back().is_object) {
            m_args += m_frames.back().any ? ", " : "";
            m_frames.back().any = true;
        }
    }
    bool capture_open(char bracket, bool is_object) {
        before_value();
        m_args += bracket;
        m_frames.push_back(Frame{is_object, false, {}});
        return true;
    }
    bool capture_close(char bracket) {
        m_args += bracket;
        m_frames.pop_back();
        if (m_frames.empty()) {
            m_request.args_json = std::move(m_args);
            m_expect = Expect::key;
        }
        return true;
    }
    bool capture_key(json::error_code& ec) {
        Frame& frame = m_frames.back();
        if (!frame.keys.insert(m_text).second) {
            return fail("Duplicate key " + quoted_name(m_text) + " in \"args\"", ec);
        }
        m_args += frame.any ? ", " : "";
        frame.any = true;
        m_args += json_string(m_text) + ": ";
        m_text.clear();
        return true;
    }
    bool capture_value(std::string_view text) {
        before_value();
        m_args += text;
        return true;
    }
    bool capture_number(json::string_view last) {
        m_text.append(last.data(), last.size());
        capture_value(m_text);
        m_text.clear();
        return true;
    }

    std::string* string_target() {
        switch (m_expect) {
        case Expect::script: return &m_request.script;
        case Expect::stdin_text: return &m_request.stdin_bytes;
        case Expect::stdin_base64: return &m_base64;
        case Expect::file_path: return &m_file.path;
        case Expect::file_content: return &m_file.content;
        case Expect::file_content_base64: return &m_base64;
        default: return capturing() ? &m_text : nullptr;
        }
    }

    bool end_string(json::error_code& ec) {
        switch (m_expect) {
        case Expect::stdin_base64:
            if (auto decoded = base64_decode(m_base64)) {
                m_request.stdin_bytes = std::move(*decoded);
            } else {
                return fail("\"stdin_base64\" is not valid base64", ec);
            }
            m_base64.clear();
            break;
        case Expect::file_content_base64:
            if (auto decoded = base64_decode(m_base64)) {
                m_file.content = std::move(*decoded);
            } else {
                return fail(file_name() + ".content_base64 is not valid base64", ec);
            }
            m_base64.clear();
            break;
        default:
            break;
        }
        m_expect = Expect::key;
        return true;
    }

    std::string file_name() const { return "files[" + std::to_string(m_request.files.size()) + "]"; }

    bool end_file(json::error_code& ec) {
        if (!m_file_fields.count("path")) {
            return fail(file_name() + " has no \"path\"", ec);
        }
        if (m_file_fields.count("content") + m_file_fields.count("content_base64") != 1) {
            return fail(file_name() + " needs one of \"content\" and \"content_base64\"", ec);
        }
        m_request.files.push_back(std::move(m_file));
        m_where = Where::files;
        m_expect = Expect::file_item;
        return true;
    }

    void append_key(json::string_view part) {
        // Keys longer than any known name are only ever quoted in a message.
        const std::size_t room = k_quoted_name_bytes + 1 - std::min(m_key.size(), k_quoted_name_bytes + 1);
        m_key.append(part.data(), std::min(part.size(), room));
        m_key_cut = m_key_cut || part.size() > room;
    }

    bool on_field(const std::string& key, bool cut, json::error_code& ec) {
        static const std::pair<std::string_view, Expect> k_fields[] = {
            {"script", Expect::script},           {"limits", Expect::limits_object},
            {"args", Expect::args_value},         {"stdin", Expect::stdin_text},
            {"stdin_base64", Expect::stdin_base64}, {"files", Expect::files_array},
        };
        for (const auto& [name, expect] : k_fields) {
            if (cut || key != name) {
                continue;
            }
            if (!m_seen.insert(key).second) {
                return fail("Duplicate field " + quoted_name(key), ec);
            }
            if (m_seen.count("stdin") && m_seen.count("stdin_base64")) {
                return fail("Give \"stdin\" or \"stdin_base64\", not both", ec);
            }
            m_expect = expect;
            return true;
        }
        return fail("Unknown field " + quoted_name(key) +
                        "; the request accepts \"script\", \"limits\", \"args\", \"stdin\", \"stdin_base64\" and \"files\"",
                    ec);
    }

    bool on_file_field(const std::string& key, bool cut, json::error_code& ec) {
        static const std::pair<std::string_view, Expect> k_fields[] = {
            {"path", Expect::file_path},
            {"content", Expect::file_content},
            {"content_base64", Expect::file_content_base64},
        };
        for (const auto& [name, expect] : k_fields) {
            if (!cut && key == name) {
                if (!m_file_fields.insert(key).second) {
                    return fail(file_name() + ": duplicate field " + quoted_name(key), ec);
                }
                m_expect = expect;
                return true;
            }
        }
        return fail(file_name() + ": unknown field " + quoted_name(key) +
                        "; a file has \"path\" and \"content\" or \"content_base64\"",
                    ec);
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
        case Expect::stdin_text:
            return fail("\"stdin\" must be a string", ec);
        case Expect::stdin_base64:
            return fail("\"stdin_base64\" must be a string of base64", ec);
        case Expect::limits_object:
            return fail("\"limits\" must be an object", ec);
        case Expect::limit_value:
            return fail("limits." + m_limit + " must be a non-negative integer", ec);
        case Expect::args_value:
            return fail("\"args\" must be a JSON object (names to values): main is called as main(**args)", ec);
        case Expect::files_array:
            return fail("\"files\" must be an array of {\"path\": ..., \"content_base64\": ...} objects", ec);
        case Expect::file_item:
            return fail(file_name() + " must be an object with \"path\" and \"content\" or \"content_base64\"", ec);
        case Expect::file_path:
            return fail(file_name() + ".path must be a string", ec);
        case Expect::file_content:
            return fail(file_name() + ".content must be a string", ec);
        case Expect::file_content_base64:
            return fail(file_name() + ".content_base64 must be a string of base64", ec);
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
    Where m_where = Where::top;
    std::string m_key;
    bool m_key_cut = false;
    std::string m_limit;
    std::vector<std::string> m_seen_limit_names;
    std::set<std::string, std::less<>> m_seen;  // top-level fields
    std::string m_error;
    // "args": its text so far, its open containers, the key, string or number being read.
    std::string m_args;
    std::vector<Frame> m_frames;
    std::string m_text;
    // "files": the file being read and its fields so far.
    File m_file;
    std::set<std::string, std::less<>> m_file_fields;
    std::string m_base64;  // stdin_base64 or content_base64 as it arrives
};

json::string_view logged_text(std::string_view text, std::string& storage) {
    storage = repair_utf8(text.substr(0, k_logged_text_bytes));
    return json::string_view(storage.data(), storage.size());
}

bool is_tchar(unsigned char c) {
    return std::isalnum(c) || std::string_view("!#$%&'*+-.^_`|~").find(static_cast<char>(c)) != std::string_view::npos;
}

bool is_token(std::string_view text) {
    return !text.empty() && std::all_of(text.begin(), text.end(), [](char c) { return is_tchar(static_cast<unsigned char>(c)); });
}

// Field values: visible characters, obs-text, spaces and tabs; no other control character.
bool is_field_value(std::string_view text) {
    return std::all_of(text.begin(), text.end(), [](char ch) {
        const auto c = static_cast<unsigned char>(ch);
        return c == '\t' || (c >= 0x20 && c != 0x7f);
    });
}

constexpr std::string_view k_methods[] = {"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "TRACE", "PATCH", "CONNECT"};

}  // namespace

RequestHeadScanner::RequestHeadScanner(RequestHeadLimits limits) : m_limits(limits) {
    m_error.message = "Malformed HTTP request";
}

RequestHeadScanner::State RequestHeadScanner::refuse(int http_status, std::string detail) {
    m_error.http_status = http_status;
    m_error.message = http_status == 414 ? "The request line is too long" : "Malformed HTTP request";
    m_detail = std::move(detail);
    return State::refused;
}

RequestHeadScanner::State RequestHeadScanner::scan(std::string_view received) {
    if (m_head_bytes) {
        return State::complete;
    }
    if (!m_detail.empty()) {
        return State::refused;
    }
    const std::size_t end = std::min(received.size(), m_limits.head_bytes);
    for (; m_scanned < end; ++m_scanned) {
        const char c = received[m_scanned];
        if (c == '\r') {
            if (m_scanned + 1 < received.size() && received[m_scanned + 1] != '\n') {
                return refuse(400, "a bare CR in the head");
            }
            continue;
        }
        if (c == '\0') {
            return refuse(400, "a NUL byte in the head");
        }
        if (c != '\n') {
            continue;
        }
        if (m_scanned == m_line_start || received[m_scanned - 1] != '\r') {
            return refuse(400, "a line ends in a bare LF");
        }
        const std::string_view line = received.substr(m_line_start, m_scanned - 1 - m_line_start);
        if (const State state = check_line(line); state != State::need_more) {
            if (state == State::complete) {
                m_head_bytes = m_scanned + 1;
            }
            return state;
        }
        ++m_lines;
        m_line_start = m_scanned + 1;
    }
    if (m_lines == 0 && m_scanned - m_line_start > m_limits.target_bytes + 32) {
        return refuse(414, "the request line is longer than " + std::to_string(m_limits.target_bytes + 32) + " bytes");
    }
    if (received.size() >= m_limits.head_bytes) {
        return refuse(400, "the head is larger than " + std::to_string(m_limits.head_bytes) + " bytes");
    }
    return State::need_more;
}

RequestHeadScanner::State RequestHeadScanner::check_line(std::string_view line) {
    if (m_lines == 0) {
        const auto first = line.find(' ');
        const auto second = first == std::string_view::npos ? first : line.find(' ', first + 1);
        if (second == std::string_view::npos) {
            return refuse(400, "the request line is not METHOD SP TARGET SP VERSION");
        }
        const std::string_view method = line.substr(0, first);
        const std::string_view target = line.substr(first + 1, second - first - 1);
        const std::string_view version = line.substr(second + 1);
        if (std::find(std::begin(k_methods), std::end(k_methods), method) == std::end(k_methods)) {
            return refuse(400, "unknown method " + quoted_name(method));
        }
        if (target.size() > m_limits.target_bytes) {
            return refuse(414, "the request target is " + std::to_string(target.size()) + " bytes");
        }
        if (target.empty() || !std::all_of(target.begin(), target.end(), [](char c) { return c > 0x20 && c < 0x7f; })) {
            return refuse(400, "the request target is empty or holds a space or control character");
        }
        if (version != "HTTP/1.1" && version != "HTTP/1.0") {
            return refuse(400, "unsupported version " + quoted_name(version));
        }
        m_http11 = version == "HTTP/1.1";
        return State::need_more;
    }
    if (line.empty()) {
        if (m_http11 && m_hosts != 1) {
            return refuse(400, m_hosts == 0 ? "no Host header" : "more than one Host header");
        }
        return State::complete;
    }
    if (m_lines > m_limits.fields) {
        return refuse(400, "more than " + std::to_string(m_limits.fields) + " header lines");
    }
    if (line.front() == ' ' || line.front() == '\t') {
        return refuse(400, "obs-fold (a header line starting with white space)");
    }
    const auto colon = line.find(':');
    if (colon == std::string_view::npos) {
        return refuse(400, "a header line without a colon");
    }
    const std::string_view name = line.substr(0, colon);
    if (!is_token(name)) {
        return refuse(400, "the header name " + quoted_name(name) + " is not a token");
    }
    if (!is_field_value(line.substr(colon + 1))) {
        return refuse(400, "a control character in the value of " + quoted_name(name));
    }
    if (iequals(name, "host")) {
        ++m_hosts;
    }
    return State::need_more;
}

std::optional<RequestTarget> parse_request_target(std::string_view target) {
    for (const std::string_view scheme : {"http://", "https://"}) {
        if (target.size() > scheme.size() && iequals(target.substr(0, scheme.size()), scheme)) {
            const auto slash = target.find_first_of("/?", scheme.size());
            if (slash == scheme.size()) {
                return std::nullopt;  // no authority
            }
            target = slash == std::string_view::npos ? std::string_view("/") : target.substr(slash);
            if (target.front() == '?') {
                return std::nullopt;
            }
            break;
        }
    }
    if (target.empty() || target.front() != '/') {
        return std::nullopt;
    }
    const auto question = target.find('?');
    if (question == std::string_view::npos) {
        return RequestTarget{target, {}};
    }
    return RequestTarget{target.substr(0, question), target.substr(question + 1)};
}

std::string_view query_parameter(std::string_view query, std::string_view name) {
    while (!query.empty()) {
        const auto amp = query.find('&');
        const std::string_view pair = query.substr(0, amp);
        const auto equals = pair.find('=');
        if (pair.substr(0, equals) == name) {
            return equals == std::string_view::npos ? std::string_view() : pair.substr(equals + 1);
        }
        query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
    }
    return {};
}

std::variant<Request, HttpReply> prepare_execute(std::string_view body, const ExecutePolicy& policy,
                                                 const Sandbox& sandbox) {
    auto parsed = parse_execute_body(body, policy);
    if (auto* error = std::get_if<HttpError>(&parsed)) {
        return HttpReply{error->http_status, error_body(*error)};
    }
    // Requests the library would refuse anyway do not wait for a slot.
    if (auto problem = sandbox.check(std::get<Request>(parsed))) {
        Outcome rejected;
        rejected.status = Status::invalid_request;
        rejected.error = *problem;
        return HttpReply{http_status(rejected.status), envelope_json(rejected)};
    }
    return std::get<Request>(std::move(parsed));
}

HttpReply execute_reply(const Outcome& outcome, bool details) {
    return HttpReply{http_status(outcome.status), envelope_json(outcome, details)};
}

HttpReply readiness_reply(const Diagnostics& diagnostics, std::string& detail) {
    if (diagnostics.probe_status == Status::ok) {
        return HttpReply{200, "{\"status\": \"ready\", \"jail\": " + json_quote(diagnostics.jail) +
                                  ", \"probe_ms\": " + std::to_string(diagnostics.probe_wall.count()) +
                                  ", \"resource_control\": " + json_quote(diagnostics.resource_control) +
                                  ", \"resource_control_reason\": " +
                                  json_quote(diagnostics.resource_control_reason) + "}"};
    }
    // The first line without the bracketed detail is the outcome's error, fit for clients.
    const std::string& error = diagnostics.probe_error;
    detail = error;
    const std::string summary = error.substr(0, std::min(error.find(" ["), error.find('\n')));
    return HttpReply{503, error_body(HttpError{503,
                                               "The sandbox probe run failed (" +
                                                   std::string(status_name(diagnostics.probe_status)) + "): " + summary,
                                               std::string(status_name(Status::sandbox_error))})};
}

bool RefusalThrottle::admit(std::string_view outcome, Clock::time_point now) {
    if (!m_window || now - *m_window >= std::chrono::seconds(1)) {
        m_window = now;
        return true;
    }
    auto it = m_suppressed.find(outcome);
    if (it == m_suppressed.end()) {
        it = m_suppressed.emplace(std::string(outcome), 0).first;
    }
    ++it->second;
    return false;
}

std::optional<std::string> RefusalThrottle::summary(std::chrono::system_clock::time_point wall) {
    if (m_suppressed.empty()) {
        return std::nullopt;
    }
    json::object line;
    json::object outcomes;
    std::uint64_t count = 0;
    for (const auto& [outcome, n] : m_suppressed) {
        outcomes[outcome] = n;
        count += n;
    }
    line["time"] = log_timestamp(wall);
    line["event"] = "refusals_suppressed";
    line["count"] = count;
    line["outcomes"] = std::move(outcomes);
    m_suppressed.clear();
    return json::serialize(line);
}

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
    maxima.output_files_bytes = 64ull << 20;
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

#include "envelope.hpp"

#include "base64.hpp"

#include "safepy/safepy.hpp"

#include <boost/json/basic_parser_impl.hpp>
#include <boost/json/serialize.hpp>
#include <boost/json/string.hpp>
#include <boost/json/parse.hpp>
#include <boost/json/value.hpp>

#include <unordered_set>

namespace safepy {
namespace {

namespace json = boost::json;

// basic_parser does the syntax, depth and UTF-8 checks; the handler adds
// what strict JSON leaves open: a key may appear once per object (Python
// writes {1: "a", "1": "b"} as two "1" keys).
struct ValidatingHandler {
    constexpr static std::size_t max_object_size = std::size_t(-1);
    constexpr static std::size_t max_array_size = std::size_t(-1);
    constexpr static std::size_t max_key_size = std::size_t(-1);
    constexpr static std::size_t max_string_size = std::size_t(-1);

    // One entry per open container: the keys seen so far (arrays have none).
    std::vector<std::unordered_set<std::string>> keys;
    std::string key;  // the key being read, in parts
    bool top_is_container = false;
    std::optional<std::string> duplicate;

    bool begin_container() {
        if (keys.empty()) {
            top_is_container = true;
        }
        keys.emplace_back();
        return true;
    }
    bool on_document_begin(json::error_code&) { return true; }
    bool on_document_end(json::error_code&) { return true; }
    bool on_object_begin(json::error_code&) { return begin_container(); }
    bool on_object_end(std::size_t, json::error_code&) { return keys.pop_back(), true; }
    bool on_array_begin(json::error_code&) { return begin_container(); }
    bool on_array_end(std::size_t, json::error_code&) { return keys.pop_back(), true; }
    bool on_key_part(json::string_view part, std::size_t, json::error_code&) {
        key.append(part.data(), part.size());
        return true;
    }
    bool on_key(json::string_view part, std::size_t, json::error_code& error) {
        key.append(part.data(), part.size());
        if (!keys.back().insert(std::move(key)).second) {
            duplicate = std::move(key);
            error = json::make_error_code(json::error::syntax);
            return false;
        }
        key.clear();
        return true;
    }
    bool on_string_part(json::string_view, std::size_t, json::error_code&) { return true; }
    bool on_string(json::string_view, std::size_t, json::error_code&) { return true; }
    bool on_number_part(json::string_view, json::error_code&) { return true; }
    bool on_int64(std::int64_t, json::string_view, json::error_code&) { return true; }
    bool on_uint64(std::uint64_t, json::string_view, json::error_code&) { return true; }
    bool on_double(double, json::string_view, json::error_code&) { return true; }
    bool on_bool(bool, json::error_code&) { return true; }
    bool on_null(json::error_code&) { return true; }
    bool on_comment_part(json::string_view, json::error_code&) { return true; }
    bool on_comment(json::string_view, json::error_code&) { return true; }
};

// With the envelope's own ", " and ": " separators.
std::string usage_json(const Outcome& outcome) {
    auto flag = [](bool value) { return value ? "true" : "false"; };
    return "{\"wall_ms\": " + std::to_string(outcome.usage.wall.count()) +
           ", \"cpu_ms\": " + std::to_string(outcome.usage.cpu.count()) +
           ", \"peak_memory_bytes\": " + std::to_string(outcome.usage.peak_memory_bytes) +
           ", \"stdout_truncated\": " + flag(outcome.stdout_truncated) +
           ", \"stderr_truncated\": " + flag(outcome.stderr_truncated) +
           ", \"jail\": " + json_string(repair_utf8(outcome.jail)) +
           ", \"resource_control\": " + json_string(repair_utf8(outcome.resource_control)) + "}";
}

std::string files_json(const Outcome& outcome, bool contents) {
    std::string out;
    if (!outcome.files.empty()) {
        out += ", \"files\": [";
        for (std::size_t i = 0; i < outcome.files.size(); ++i) {
            const File& file = outcome.files[i];
            out += i ? ", " : "";
            out += "{\"path\": " + json_string(file.path) + ", \"size\": " + std::to_string(file.content.size());
            if (contents) {
                out += ", \"content_base64\": \"" + base64_encode(file.content) + "\"";
            }
            out += "}";
        }
        out += "]";
    }
    if (!outcome.skipped_files.empty()) {
        out += ", \"files_skipped\": [";
        for (std::size_t i = 0; i < outcome.skipped_files.size(); ++i) {
            out += (i ? ", " : "") + json_string(repair_utf8(outcome.skipped_files[i]));
        }
        out += "]";
    }
    return out;
}

}  // namespace

std::optional<std::string> validate_result_json(std::string_view text, std::size_t max_depth) {
    json::parse_options options;
    options.max_depth = max_depth;
    json::basic_parser<ValidatingHandler> parser(options);
    json::error_code error;
    const std::size_t used = parser.write_some(false, text.data(), text.size(), error);
    if (const auto& duplicate = parser.handler().duplicate) {
        const std::string shown = duplicate->size() > 200 ? duplicate->substr(0, 200) + "..." : *duplicate;
        return "duplicate key " + json_string(repair_utf8(shown)) + " in an object";
    }
    if (error) {
        return "invalid JSON at byte " + std::to_string(used) + " (" + error.message() + ")";
    }
    if (text.substr(used).find_first_not_of(" \t\r\n") != std::string_view::npos) {
        return "invalid JSON: data after the value at byte " + std::to_string(used);
    }
    if (!parser.handler().top_is_container) {
        return "the result must be a JSON object or array";
    }
    return std::nullopt;
}

std::string repair_utf8(std::string_view bytes) {
    std::string out;
    out.reserve(bytes.size());
    const auto* data = reinterpret_cast<const unsigned char*>(bytes.data());
    const std::size_t size = bytes.size();
    std::size_t i = 0;
    while (i < size) {
        // Copy runs of ASCII in one go: most output is ASCII.
        std::size_t ascii = i;
        while (ascii < size && data[ascii] < 0x80) {
            ++ascii;
        }
        out.append(bytes.substr(i, ascii - i));
        i = ascii;
        if (i == size) {
            break;
        }
        const unsigned char lead = data[i];
        std::size_t length = 0;
        unsigned char low = 0x80, high = 0xBF;
        if (lead >= 0xC2 && lead <= 0xDF) {
            length = 2;
        } else if (lead >= 0xE0 && lead <= 0xEF) {
            length = 3;
            low = lead == 0xE0 ? 0xA0 : 0x80;
            high = lead == 0xED ? 0x9F : 0xBF;  // no surrogates
        } else if (lead >= 0xF0 && lead <= 0xF4) {
            length = 4;
            low = lead == 0xF0 ? 0x90 : 0x80;
            high = lead == 0xF4 ? 0x8F : 0xBF;
        }
        std::size_t valid = length ? 1 : 0;
        while (valid > 0 && valid < length && i + valid < size) {
            const unsigned char next = data[i + valid];
            const unsigned char lo = valid == 1 ? low : 0x80;
            const unsigned char hi = valid == 1 ? high : 0xBF;
            if (next < lo || next > hi) {
                break;
            }
            ++valid;
        }
        if (length && valid == length) {
            out.append(bytes.substr(i, length));
            i += length;
        } else {
            out.append("\xEF\xBF\xBD");  // one U+FFFD per maximal invalid prefix
            i += valid ? valid : 1;
        }
    }
    return out;
}

std::vector<std::string> parse_string_list(std::string_view text) {
    json::error_code error;
    const json::value value = json::parse(json::string_view(text.data(), text.size()), error);
    std::vector<std::string> strings;
    if (error || !value.is_array()) {
        return strings;
    }
    for (const auto& item : value.get_array()) {
        if (!item.is_string()) {
            return {};
        }
        strings.emplace_back(item.get_string().c_str(), item.get_string().size());
    }
    return strings;
}

std::string json_string(std::string_view text) {
    return json::serialize(json::string_view(text.data(), text.size()));
}

std::string envelope_json(const Outcome& outcome, bool with_details, bool file_contents) {
    // Written by hand with ", " and ": " separators so that the envelope of a
    // success is byte for byte {"result": ..., "stdout": "..."}.
    std::string out = "{";
    if (outcome.status == Status::ok) {
        out += "\"result\": " + outcome.result_json;
        out += ", \"stdout\": " + json_string(repair_utf8(outcome.stdout_bytes));
        out += files_json(outcome, file_contents);
        if (with_details) {
            out += ", \"status\": \"ok\"";
        }
    } else {
        out += "\"error\": " + json_string(repair_utf8(outcome.error));
        out += ", \"status\": \"" + std::string(status_name(outcome.status)) + "\"";
        if (outcome.script_started) {
            out += ", \"stdout\": " + json_string(repair_utf8(outcome.stdout_bytes));
            out += ", \"stderr\": " + json_string(repair_utf8(outcome.stderr_bytes));
        }
    }
    if (with_details) {
        out += ", \"usage\": " + usage_json(outcome);
    }
    out += "}";
    return out;
}

}  // namespace safepy

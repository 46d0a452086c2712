#include "safepy/check.hpp"

#include "envelope.hpp"

#include <algorithm>
#include <dirent.h>
#include <glob.h>
#include <sys/stat.h>

namespace safepy {
namespace {

// GitHub's workflow command escaping: the message, and a property's value
// (which also escapes ':' and ',').
std::string github_escape(std::string_view text, bool property) {
    std::string out;
    for (const char c : text) {
        switch (c) {
        case '%': out += "%25"; break;
        case '\r': out += "%0D"; break;
        case '\n': out += "%0A"; break;
        case ':': out += property ? "%3A" : ":"; break;
        case ',': out += property ? "%2C" : ","; break;
        default: out += c;
        }
    }
    return out;
}

// Text for XML 1.0: the five entities escaped, characters XML cannot hold
// (controls other than tab, CR and LF) replaced by U+FFFD.
std::string xml_escape(std::string_view bytes) {
    const std::string text = repair_utf8(bytes);
    std::string out;
    for (std::size_t i = 0; i < text.size(); ++i) {
        const unsigned char c = static_cast<unsigned char>(text[i]);
        switch (c) {
        case '&': out += "&amp;"; break;
        case '<': out += "&lt;"; break;
        case '>': out += "&gt;"; break;
        case '"': out += "&quot;"; break;
        case '\'': out += "&apos;"; break;
        default:
            if (c < 0x20 && c != '\t' && c != '\n' && c != '\r') {
                out += "\xEF\xBF\xBD";
            } else if (c == 0xEF && i + 2 < text.size() && static_cast<unsigned char>(text[i + 1]) == 0xBF &&
                       (static_cast<unsigned char>(text[i + 2]) == 0xBE || static_cast<unsigned char>(text[i + 2]) == 0xBF)) {
                out += "\xEF\xBF\xBD";  // U+FFFE and U+FFFF are not XML characters
                i += 2;
            } else {
                out += static_cast<char>(c);
            }
        }
    }
    return out;
}

bool is_directory(const std::string& path, bool follow) {
    struct stat info {};
    return (follow ? stat(path.c_str(), &info) : lstat(path.c_str(), &info)) == 0 && S_ISDIR(info.st_mode);
}

void walk(const std::string& dir, std::vector<std::string>& out) {
    DIR* handle = opendir(dir.c_str());
    if (!handle) {
        return;
    }
    std::vector<std::string> names;
    while (dirent* entry = readdir(handle)) {
        const std::string name = entry->d_name;
        if (name != "." && name != "..") {
            names.push_back(name);
        }
    }
    closedir(handle);
    std::sort(names.begin(), names.end());
    const std::string prefix = dir.back() == '/' ? dir : dir + "/";
    for (const auto& name : names) {
        const std::string path = prefix + name;
        if (is_directory(path, false)) {
            if (name[0] != '.') {
                walk(path, out);
            }
        } else if (name.size() > 3 && name.compare(name.size() - 3, 3, ".py") == 0) {
            out.push_back(path);
        }
    }
}

std::string_view failure_kind(Status status) {
    return party_of(status) == Party::sandbox ? "error" : "failure";
}

}  // namespace

std::optional<CheckFormat> parse_check_format(std::string_view name) {
    if (name == "text") return CheckFormat::text;
    if (name == "json") return CheckFormat::json;
    if (name == "github") return CheckFormat::github;
    if (name == "junit") return CheckFormat::junit;
    return std::nullopt;
}

int check_exit_code(const std::vector<CheckedFile>& files) {
    int worst = 0;
    for (const auto& file : files) {
        worst = std::max(worst, exit_code(file.status));
    }
    return worst;
}

std::optional<int> error_line(std::string_view error) {
    const auto at = error.rfind("(line ");
    if (at == std::string_view::npos) {
        return std::nullopt;
    }
    int line = 0;
    std::size_t i = at + 6;
    for (; i < error.size() && error[i] >= '0' && error[i] <= '9' && line < 100'000'000; ++i) {
        line = line * 10 + (error[i] - '0');
    }
    if (i == at + 6 || i >= error.size() || error[i] != ')') {
        return std::nullopt;
    }
    return line;
}

std::string check_report(const std::vector<CheckedFile>& files, CheckFormat format) {
    std::string out;
    std::size_t failed = 0;
    for (const auto& file : files) {
        failed += file.status == Status::ok ? 0 : 1;
    }
    switch (format) {
    case CheckFormat::text:
        for (const auto& file : files) {
            out += repair_utf8(file.path) + ": " +
                   (file.status == Status::ok ? "ok" : std::string(status_name(file.status)) + ": " + repair_utf8(file.error)) +
                   "\n";
        }
        break;
    case CheckFormat::json:
        out = "{\"files\": [";
        for (std::size_t i = 0; i < files.size(); ++i) {
            const auto& file = files[i];
            out += (i ? ", " : "") + std::string("{\"path\": ") + json_string(repair_utf8(file.path)) +
                   ", \"status\": \"" + std::string(status_name(file.status)) + "\"";
            if (file.status != Status::ok) {
                out += ", \"error\": " + json_string(repair_utf8(file.error));
                if (auto line = error_line(file.error)) {
                    out += ", \"line\": " + std::to_string(*line);
                }
            }
            out += "}";
        }
        out += "], \"checked\": " + std::to_string(files.size()) + ", \"failed\": " + std::to_string(failed) +
               ", \"exit_code\": " + std::to_string(check_exit_code(files)) + "}\n";
        break;
    case CheckFormat::github:
        for (const auto& file : files) {
            if (file.status == Status::ok) {
                continue;
            }
            out += "::error file=" + github_escape(repair_utf8(file.path), true);
            if (auto line = error_line(file.error)) {
                out += ",line=" + std::to_string(*line);
            }
            out += ",title=" + github_escape("safepy " + std::string(status_name(file.status)), true) +
                   "::" + github_escape(repair_utf8(file.error), false) + "\n";
        }
        out += "safepy check: " + std::to_string(files.size()) + " checked, " + std::to_string(failed) + " failed\n";
        break;
    case CheckFormat::junit: {
        std::size_t errors = 0;
        for (const auto& file : files) {
            errors += file.status != Status::ok && party_of(file.status) == Party::sandbox ? 1 : 0;
        }
        out = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites>\n  <testsuite name=\"safepy check\" tests=\"" +
              std::to_string(files.size()) + "\" failures=\"" + std::to_string(failed - errors) + "\" errors=\"" +
              std::to_string(errors) + "\">\n";
        for (const auto& file : files) {
            out += "    <testcase classname=\"safepy.check\" name=\"" + xml_escape(file.path) + "\"";
            if (file.status == Status::ok) {
                out += "/>\n";
                continue;
            }
            const std::string kind(failure_kind(file.status));
            out += ">\n      <" + kind + " type=\"" + std::string(status_name(file.status)) + "\" message=\"" +
                   xml_escape(file.error) + "\">" + xml_escape(file.error) + "</" + kind + ">\n    </testcase>\n";
        }
        out += "  </testsuite>\n</testsuites>\n";
        break;
    }
    }
    return out;
}

ScriptList find_scripts(const std::vector<std::string>& inputs) {
    ScriptList list;
    for (const auto& input : inputs) {
        struct stat info {};
        if (input == "-" || (stat(input.c_str(), &info) == 0 && !S_ISDIR(info.st_mode))) {
            list.paths.push_back(input);
        } else if (is_directory(input, true)) {
            const std::size_t before = list.paths.size();
            walk(input, list.paths);
            if (list.paths.size() == before) {
                list.error = input + ": no *.py files in this directory";
                return list;
            }
        } else if (input.find_first_of("*?[") != std::string::npos) {
            glob_t found{};
            const int code = glob(input.c_str(), GLOB_ERR, nullptr, &found);
            if (code != 0) {
                globfree(&found);
                list.error = input + ": " + (code == GLOB_NOMATCH ? "matches no file" : "cannot be expanded");
                return list;
            }
            const std::size_t before = list.paths.size();
            for (std::size_t i = 0; i < found.gl_pathc; ++i) {
                if (!is_directory(found.gl_pathv[i], true)) {
                    list.paths.emplace_back(found.gl_pathv[i]);
                }
            }
            globfree(&found);
            if (list.paths.size() == before) {
                list.error = input + ": matches no file (only directories)";
                return list;
            }
        } else {
            list.error = input + ": no such file or directory";
            return list;
        }
    }
    return list;
}

std::string_view version() {
    return SAFEPY_VERSION;
}

}  // namespace safepy

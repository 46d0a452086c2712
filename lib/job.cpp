#include "job.hpp"

#include "envelope.hpp"

#include <set>

namespace safepy {
namespace {

constexpr std::uint64_t k_page_bytes = 4096;

void append_le(std::string& out, std::uint64_t value, int bytes) {
    for (int i = 0; i < bytes; ++i) {
        out += static_cast<char>((value >> (8 * i)) & 0xFF);
    }
}

void append_record(std::string& out, char tag, std::string_view name, std::string_view data) {
    out += tag;
    append_le(out, name.size(), 4);
    append_le(out, data.size(), 8);
    out.append(name);
    out.append(data);
}

bool is_valid_utf8(std::string_view text) {
    return repair_utf8(text) == text;
}

// The directories a path needs, "a" and "a/b" for "a/b/c".
std::vector<std::string_view> parents(std::string_view path) {
    std::vector<std::string_view> out;
    for (std::size_t slash = path.find('/'); slash != std::string_view::npos; slash = path.find('/', slash + 1)) {
        out.push_back(path.substr(0, slash));
    }
    return out;
}

}  // namespace

std::optional<std::string> check_file_path(std::string_view path) {
    if (path.empty()) {
        return std::string("the path is empty");
    }
    if (path.size() > k_file_path_bytes) {
        return "the path is longer than " + std::to_string(k_file_path_bytes) + " bytes";
    }
    if (path.find('\0') != std::string_view::npos) {
        return std::string("the path contains a NUL byte");
    }
    if (!is_valid_utf8(path)) {
        return std::string("the path is not valid UTF-8");
    }
    if (path.front() == '/') {
        return std::string("the path is absolute; it must be relative to the working directory");
    }
    std::size_t start = 0;
    while (start <= path.size()) {
        const std::size_t slash = std::min(path.find('/', start), path.size());
        const std::string_view part = path.substr(start, slash - start);
        if (part.empty()) {
            return std::string("the path has an empty component");
        }
        if (part == "." || part == "..") {
            return "the path has a \"" + std::string(part) + "\" component";
        }
        if (part.size() > k_file_name_bytes) {
            return "a component of the path is longer than " + std::to_string(k_file_name_bytes) + " bytes";
        }
        start = slash + 1;
    }
    return std::nullopt;
}

std::uint64_t input_footprint_bytes(const std::vector<File>& files) {
    std::set<std::string_view> directories;
    std::uint64_t bytes = 0;
    for (const auto& file : files) {
        bytes += (file.content.size() + k_page_bytes - 1) / k_page_bytes * k_page_bytes;
        for (auto parent : parents(file.path)) {
            directories.insert(parent);
        }
    }
    return bytes + directories.size() * k_page_bytes;
}

std::optional<std::string> check_inputs(const Request& request, std::size_t max_args_bytes) {
    const Limits& limits = request.limits;
    if (request.mode == Mode::check && (request.args_json || !request.stdin_bytes.empty() || !request.files.empty())) {
        return std::string("A check takes no args, stdin or files: nothing runs");
    }
    if (request.args_json) {
        const std::string& args = *request.args_json;
        if (args.size() > max_args_bytes) {
            return "args is " + std::to_string(args.size()) + " bytes; the limit is " + std::to_string(max_args_bytes);
        }
        if (auto error = validate_result_json(args, k_args_max_depth)) {
            return "args must be a JSON object: " + *error;
        }
        if (args.substr(args.find_first_not_of(" \t\r\n")).front() != '{') {
            return std::string("args must be a JSON object (names to values), not an array");
        }
    }
    if (request.stdin_bytes.size() > limits.stdin_bytes) {
        return "stdin is larger than the limit of " + std::to_string(limits.stdin_bytes) + " bytes (stdin_bytes)";
    }
    if (request.files.size() > limits.input_files) {
        return std::to_string(request.files.size()) + " files were given; the limit is " +
               std::to_string(limits.input_files) + " (input_files)";
    }
    std::uint64_t total = 0;
    std::set<std::string_view> paths, directories;
    for (const auto& file : request.files) {
        const std::string shown = json_string(repair_utf8(file.path.substr(0, 200)));
        if (auto error = check_file_path(file.path)) {
            return "Input file " + shown + ": " + *error;
        }
        if (file.path == k_output_dir || file.path.rfind(std::string(k_output_dir) + "/", 0) == 0) {
            return "Input file " + shown + ": out/ is reserved for the files a run returns";
        }
        if (!paths.insert(file.path).second) {
            return "Input file " + shown + " is given twice";
        }
        for (auto parent : parents(file.path)) {
            directories.insert(parent);
        }
        total += file.content.size();
    }
    for (auto directory : directories) {
        if (paths.count(directory)) {
            return "Input file " + json_string(repair_utf8(std::string(directory).substr(0, 200))) +
                   " is also a directory of another input file";
        }
    }
    if (total > limits.input_files_bytes) {
        return "The input files hold more than the limit of " + std::to_string(limits.input_files_bytes) +
               " bytes (input_files_bytes)";
    }
    if (const std::uint64_t footprint = input_footprint_bytes(request.files); footprint > limits.tmp_bytes) {
        return "The input files take " + std::to_string(footprint) + " bytes of the run's /tmp; tmp_bytes is " +
               std::to_string(limits.tmp_bytes);
    }
    return std::nullopt;
}

std::string encode_job(const Request& request) {
    std::string job(k_job_magic);
    std::size_t size = job.size() + 13 + request.script.size() + 13 + request.stdin_bytes.size() + 64;
    for (const auto& file : request.files) {
        size += 13 + file.path.size() + file.content.size();
    }
    job.reserve(size + (request.args_json ? request.args_json->size() + 13 : 0));
    append_record(job, 's', "", request.script);
    if (request.args_json) {
        append_record(job, 'a', "", *request.args_json);
    }
    if (!request.stdin_bytes.empty()) {
        append_record(job, 'i', "", request.stdin_bytes);
    }
    for (const auto& file : request.files) {
        append_record(job, 'f', file.path, file.content);
    }
    append_record(job, 'o', "",
                  std::to_string(request.limits.output_files) + " " + std::to_string(request.limits.output_files_bytes));
    return job;
}

}  // namespace safepy

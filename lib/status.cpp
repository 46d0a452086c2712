#include "safepy/safepy.hpp"

#include <array>
#include <utility>

namespace safepy {
namespace {

constexpr std::array<std::pair<Status, std::string_view>, 9> k_statuses = {{
    {Status::ok, "ok"},
    {Status::invalid_request, "invalid_request"},
    {Status::invalid_script, "invalid_script"},
    {Status::script_error, "script_error"},
    {Status::invalid_result, "invalid_result"},
    {Status::timeout, "timeout"},
    {Status::memory_limit, "memory_limit"},
    {Status::output_limit, "output_limit"},
    {Status::sandbox_error, "sandbox_error"},
}};

}  // namespace

std::string_view status_name(Status status) {
    for (const auto& [value, name] : k_statuses) {
        if (value == status) {
            return name;
        }
    }
    return "sandbox_error";
}

std::optional<Status> parse_status(std::string_view name) {
    for (const auto& [value, known] : k_statuses) {
        if (known == name) {
            return value;
        }
    }
    return std::nullopt;
}

Party party_of(Status status) {
    switch (status) {
    case Status::ok:
        return Party::none;
    case Status::invalid_request:
        return Party::request;
    case Status::sandbox_error:
        return Party::sandbox;
    case Status::invalid_script:
    case Status::script_error:
    case Status::invalid_result:
    case Status::timeout:
    case Status::memory_limit:
    case Status::output_limit:
        break;
    }
    return Party::script;
}

int exit_code(Status status) {
    constexpr int k_codes[] = {0, 2, 1, 3};  // by Party
    return k_codes[static_cast<int>(party_of(status))];
}

std::string_view jail_name(JailKind kind) {
    switch (kind) {
    case JailKind::nsjail:
        return "nsjail";
    case JailKind::bwrap:
        return "bwrap";
    case JailKind::automatic:
        break;
    }
    return "auto";
}

std::optional<JailKind> parse_jail(std::string_view name) {
    if (name == "auto") {
        return JailKind::automatic;
    }
    if (name == "nsjail") {
        return JailKind::nsjail;
    }
    if (name == "bwrap" || name == "bubblewrap") {
        return JailKind::bwrap;
    }
    return std::nullopt;
}

std::string_view resource_control_name(ResourceControl control) {
    return control == ResourceControl::rlimits ? "rlimits" : "cgroup";
}

std::optional<ResourceControl> parse_resource_control(std::string_view name) {
    if (name == "cgroup") {
        return ResourceControl::cgroup;
    }
    if (name == "rlimits") {
        return ResourceControl::rlimits;
    }
    return std::nullopt;
}

}  // namespace safepy

#include "safepy/options.hpp"

namespace safepy {

std::string limit_flag(std::string_view limit) {
    std::string flag(limit);
    for (auto& c : flag) {
        c = c == '_' ? '-' : c;
    }
    return flag;
}

std::optional<std::string> apply_typed_limits(const std::map<std::string, std::string>& typed,
                                              std::string_view flag_prefix, Limits& limits, const Limits& ceiling) {
    for (const auto& [name, text] : typed) {
        const auto value = parse_quantity(text);
        if (!value) {
            return std::string(flag_prefix) + limit_flag(name) + ": not a number: " + text;
        }
        if (auto error = set_limit(limits, name, *value, ceiling)) {
            return std::string(flag_prefix) + limit_flag(name) + ": " + *error;
        }
    }
    return std::nullopt;
}

}  // namespace safepy

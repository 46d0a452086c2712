#include "base64.hpp"

#include <array>
#include <cstdint>

namespace safepy {
namespace {

constexpr std::string_view k_alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

constexpr std::array<std::int8_t, 256> decoding_table() {
    std::array<std::int8_t, 256> table{};
    for (auto& entry : table) {
        entry = -1;
    }
    for (std::size_t i = 0; i < k_alphabet.size(); ++i) {
        table[static_cast<unsigned char>(k_alphabet[i])] = static_cast<std::int8_t>(i);
    }
    return table;
}

constexpr auto k_decoding = decoding_table();

}  // namespace

std::string base64_encode(std::string_view bytes) {
    std::string out;
    out.reserve((bytes.size() + 2) / 3 * 4);
    const auto* data = reinterpret_cast<const unsigned char*>(bytes.data());
    std::size_t i = 0;
    for (; i + 3 <= bytes.size(); i += 3) {
        const std::uint32_t word = (data[i] << 16) | (data[i + 1] << 8) | data[i + 2];
        out += k_alphabet[(word >> 18) & 63];
        out += k_alphabet[(word >> 12) & 63];
        out += k_alphabet[(word >> 6) & 63];
        out += k_alphabet[word & 63];
    }
    const std::size_t rest = bytes.size() - i;
    if (rest > 0) {
        const std::uint32_t word = (data[i] << 16) | (rest == 2 ? data[i + 1] << 8 : 0);
        out += k_alphabet[(word >> 18) & 63];
        out += k_alphabet[(word >> 12) & 63];
        out += rest == 2 ? k_alphabet[(word >> 6) & 63] : '=';
        out += '=';
    }
    return out;
}

std::optional<std::string> base64_decode(std::string_view text) {
    if (text.size() % 4 != 0) {
        return std::nullopt;
    }
    std::string out;
    out.reserve(text.size() / 4 * 3);
    for (std::size_t i = 0; i < text.size(); i += 4) {
        const bool last = i + 4 == text.size();
        const std::size_t padding = last ? (text[i + 3] == '=') + (text[i + 2] == '=' && text[i + 3] == '=') : 0;
        std::uint32_t word = 0;
        for (std::size_t j = 0; j < 4 - padding; ++j) {
            const std::int8_t value = k_decoding[static_cast<unsigned char>(text[i + j])];
            if (value < 0) {
                return std::nullopt;
            }
            word |= static_cast<std::uint32_t>(value) << (18 - 6 * j);
        }
        // Canonical only: the bits that padding drops must be zero.
        if ((padding == 1 && (word & 0xFF) != 0) || (padding == 2 && (word & 0xFFFF) != 0)) {
            return std::nullopt;
        }
        out += static_cast<char>((word >> 16) & 0xFF);
        if (padding < 2) {
            out += static_cast<char>((word >> 8) & 0xFF);
        }
        if (padding < 1) {
            out += static_cast<char>(word & 0xFF);
        }
    }
    return out;
}

}  // namespace safepy

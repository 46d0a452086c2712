#include "safepy/safepy.hpp"

#include <algorithm>
#include <array>
#include <charconv>
#include <limits>

namespace safepy {
namespace {

struct FieldSpec {
    LimitField field;
    std::uint64_t minimum;
    std::uint64_t Limits::*bytes = nullptr;
    std::uint32_t Limits::*count = nullptr;
    std::chrono::milliseconds Limits::*duration = nullptr;
};

// The minimums keep a run able to start at all (the jail's own processes and
// descriptors count), so that a tiny limit reads as the script's failure.
const std::array<FieldSpec, 16> k_fields = {{
    {{"wall_ms", "wall-clock time limit in milliseconds"}, 1, nullptr, nullptr, &Limits::wall},
    {{"cpu_ms", "CPU time limit in milliseconds (all processes of the run)"}, 1, nullptr, nullptr, &Limits::cpu},
    {{"memory_bytes", "memory limit in bytes (RAM of all processes, /tmp included)"}, 16u << 20, &Limits::memory_bytes},
    {{"processes", "most processes and threads at once"}, 4, nullptr, &Limits::processes},
    {{"tmp_bytes", "size of the private /tmp in bytes"}, 4096, &Limits::tmp_bytes},
    {{"file_bytes", "largest file the script may write, in bytes"}, 4096, &Limits::file_bytes},
    {{"open_files", "most open file descriptors per process"}, 16, nullptr, &Limits::open_files},
    {{"stdout_bytes", "stdout cap in bytes; more ends the run"}, 1, &Limits::stdout_bytes},
    {{"stderr_bytes", "stderr cap in bytes; more ends the run"}, 1, &Limits::stderr_bytes},
    {{"result_bytes", "cap on main()'s serialised result in bytes"}, 16, &Limits::result_bytes},
    {{"cpu_cores", "CPU quota: most CPUs' worth of time the run may use at once"}, 1, nullptr, &Limits::cpu_cores},
    {{"stdin_bytes", "most bytes of stdin handed to the script"}, 0, &Limits::stdin_bytes},
    {{"input_files", "most files handed to the run"}, 0, nullptr, &Limits::input_files},
    {{"input_files_bytes", "most bytes of files handed to the run, in all"}, 0, &Limits::input_files_bytes},
    {{"output_files", "most entries (files, directories, links) under /tmp/out returned"}, 0, nullptr,
     &Limits::output_files},
    {{"output_files_bytes", "most bytes of files returned from /tmp/out, in all"}, 0, &Limits::output_files_bytes},
}};

const FieldSpec* find_field(std::string_view name) {
    for (const auto& spec : k_fields) {
        if (spec.field.name == name) {
            return &spec;
        }
    }
    return nullptr;
}

std::uint64_t read_field(const FieldSpec& spec, const Limits& limits) {
    if (spec.bytes) {
        return limits.*spec.bytes;
    }
    if (spec.count) {
        return limits.*spec.count;
    }
    return static_cast<std::uint64_t>((limits.*spec.duration).count());
}

void write_field(const FieldSpec& spec, Limits& limits, std::uint64_t value) {
    if (spec.bytes) {
        limits.*spec.bytes = value;
    } else if (spec.count) {
        limits.*spec.count = static_cast<std::uint32_t>(value);
    } else {
        limits.*spec.duration = std::chrono::milliseconds(static_cast<std::int64_t>(value));
    }
}

std::optional<std::string> check_value(const FieldSpec& spec, std::uint64_t value, const Limits& maxima) {
    const std::uint64_t maximum = read_field(spec, maxima);
    if (value < spec.minimum || value > maximum) {
        return std::string(spec.field.name) + " must be between " + std::to_string(spec.minimum) + " and " +
               std::to_string(maximum) + ", got " + std::to_string(value);
    }
    return std::nullopt;
}

}  // namespace

Limits default_maxima() {
    Limits maxima;
    maxima.wall = std::chrono::minutes(5);
    maxima.cpu = std::chrono::minutes(5);
    maxima.memory_bytes = 8ull << 30;
    maxima.processes = 1024;
    maxima.tmp_bytes = 4ull << 30;
    maxima.file_bytes = 4ull << 30;
    maxima.open_files = 4096;
    maxima.stdout_bytes = 256ull << 20;
    maxima.stderr_bytes = 256ull << 20;
    maxima.result_bytes = 256ull << 20;
    maxima.cpu_cores = 1024;
    maxima.stdin_bytes = 1ull << 30;
    maxima.input_files = 10'000;
    maxima.input_files_bytes = 1ull << 30;
    maxima.output_files = 10'000;
    maxima.output_files_bytes = 1ull << 30;
    return maxima;
}

std::uint64_t memory_reserve_bytes(std::size_t concurrency, bool warm) {
    // The server's own memory and output buffers; a warm template holds
    // Python with numpy and pandas imported (about 100 MiB resident).
    // Concurrency is at most a few thousand (the server's option), so this cannot overflow.
    return (256ull << 20) + (warm ? static_cast<std::uint64_t>(std::min<std::size_t>(concurrency, 1u << 20)) * (160ull << 20) : 0);
}

Limits host_maxima(const Limits& ceiling, const HostResources& host, std::size_t concurrency, bool warm) {
    Limits maxima = ceiling;
    const std::uint64_t reserve = memory_reserve_bytes(concurrency, warm);
    // 15/16 of what is left: MemAvailable moves between reads, and maxima
    // sized from one read must still fit at the next (check_fits).
    const std::uint64_t usable = host.memory_bytes > reserve ? (host.memory_bytes - reserve) / 16 * 15 : 0;
    const std::uint64_t share = usable / std::max<std::size_t>(concurrency, 1);
    // Never below the smallest memory limit a run can start with.
    const std::uint64_t memory = std::max<std::uint64_t>(std::min(ceiling.memory_bytes, share), 16u << 20);
    maxima.memory_bytes = memory;
    maxima.tmp_bytes = std::min(ceiling.tmp_bytes, memory);
    // stdin and the files handed in live in the run's memory.
    maxima.stdin_bytes = std::min(ceiling.stdin_bytes, memory);
    maxima.input_files_bytes = std::min(ceiling.input_files_bytes, memory);
    maxima.cpu_cores = std::max<std::uint32_t>(1, std::min(ceiling.cpu_cores, host.cpus));
    return maxima;
}

std::optional<std::string> check_fits(const Limits& maxima, const HostResources& host, std::size_t concurrency,
                                      bool warm) {
    const std::uint64_t reserve = memory_reserve_bytes(concurrency, warm);
    std::uint64_t runs = 0, needed = 0;
    const bool overflow = __builtin_mul_overflow(static_cast<std::uint64_t>(concurrency), maxima.memory_bytes, &runs) ||
                          __builtin_add_overflow(runs, reserve, &needed);
    if (overflow) {
        return std::to_string(concurrency) + " concurrent runs of up to " + std::to_string(maxima.memory_bytes) +
               " bytes each cannot be counted, let alone fit: lower the memory_bytes maximum or the concurrency";
    }
    if (needed > host.memory_bytes) {
        return std::to_string(concurrency) + " concurrent runs of up to " + std::to_string(maxima.memory_bytes) +
               " bytes each, plus " + std::to_string(reserve) + " bytes for safepy itself, need " +
               std::to_string(needed) + " bytes, but " + std::to_string(host.memory_bytes) +
               " are available (" + host.memory_source + "): lower the memory_bytes maximum or the concurrency";
    }
    if (maxima.cpu_cores > host.cpus) {
        return "the cpu_cores maximum " + std::to_string(maxima.cpu_cores) + " is above the " +
               std::to_string(host.cpus) + " CPUs available (" + host.cpus_source + ")";
    }
    return std::nullopt;
}

Limits fit_defaults(Limits defaults, const Limits& maxima) {
    for (const auto& spec : k_fields) {
        const std::uint64_t maximum = read_field(spec, maxima);
        if (read_field(spec, defaults) > maximum) {
            write_field(spec, defaults, maximum);
        }
    }
    return defaults;
}

Limits local_maxima() {
    static const Limits maxima = host_maxima(default_maxima(), read_host_resources(), 1, false);
    return maxima;
}

const std::vector<LimitField>& limit_fields() {
    static const std::vector<LimitField> fields = [] {
        std::vector<LimitField> out;
        for (const auto& spec : k_fields) {
            out.push_back(spec.field);
        }
        return out;
    }();
    return fields;
}

std::optional<std::string> set_limit(Limits& limits, std::string_view name, std::uint64_t value,
                                     const Limits& maxima) {
    const FieldSpec* spec = find_field(name);
    if (!spec) {
        return "unknown limit '" + std::string(name) + "'";
    }
    if (auto error = check_value(*spec, value, maxima)) {
        return error;
    }
    write_field(*spec, limits, value);
    return std::nullopt;
}

std::optional<std::uint64_t> parse_quantity(std::string_view text) {
    std::uint64_t multiplier = 1;
    if (!text.empty()) {
        switch (text.back()) {
        case 'K': case 'k': multiplier = 1ull << 10; break;
        case 'M': case 'm': multiplier = 1ull << 20; break;
        case 'G': case 'g': multiplier = 1ull << 30; break;
        default: break;
        }
        if (multiplier != 1) {
            text.remove_suffix(1);
        }
    }
    std::uint64_t value = 0;
    const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (text.empty() || error != std::errc() || end != text.data() + text.size() ||
        value > std::numeric_limits<std::uint64_t>::max() / multiplier) {
        return std::nullopt;
    }
    return value * multiplier;
}

std::optional<std::uint64_t> get_limit(const Limits& limits, std::string_view name) {
    const FieldSpec* spec = find_field(name);
    if (!spec) {
        return std::nullopt;
    }
    return read_field(*spec, limits);
}

std::optional<std::string> check_limits(const Limits& limits, const Limits& maxima) {
    for (const auto& spec : k_fields) {
        if (auto error = check_value(spec, read_field(spec, limits), maxima)) {
            return error;
        }
    }
    return std::nullopt;
}

}  // namespace safepy

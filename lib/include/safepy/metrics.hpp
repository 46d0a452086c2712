// Counters and histograms for GET /metrics, rendered in the Prometheus text
// exposition format (version 0.0.4). Safe from many threads.
#pragma once

#include "safepy/safepy.hpp"

#include <array>
#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace safepy {

// A cumulative histogram with fixed upper bounds, in seconds.
class Histogram {
public:
    explicit Histogram(std::vector<double> bounds_seconds);

    // Counts one observation.
    void observe(std::chrono::duration<double> value);

    // Appends the _bucket, _sum and _count lines of metric `name`.
    void render(std::string& out, const std::string& name) const;

private:
    mutable std::mutex m_mutex;
    std::vector<double> m_bounds;
    std::vector<std::uint64_t> m_counts;  // per bucket, not cumulative
    std::uint64_t m_count = 0;
    double m_sum = 0;
};

// Point-in-time values that the server reads when /metrics is asked for.
struct Gauges {
    std::size_t running = 0;
    std::size_t waiting = 0;
    std::size_t slots = 0;
    std::size_t queue_length = 0;
    std::size_t connections = 0;
    std::size_t resident_bytes = 0;  // the server process's RSS
    std::string resource_control;         // "cgroup-v2", "cgroup-v1" or "rlimits-only"
    std::string resource_control_reason;  // what was set up for it, or why rlimits
};

// This process's resident set size from /proc/self/statm; 0 if unreadable.
std::size_t resident_bytes();

class Metrics {
public:
    Metrics();

    // Counts one HTTP response by status code.
    void count_response(int http_status);

    // Counts one finished run by its outcome status.
    void count_execution(Status status);

    // Records one POST /execute: first request byte to response ready, and its time in line.
    void observe_execute(std::chrono::duration<double> latency, std::chrono::duration<double> queue_wait);

    // Counts a connection refused with a canned 503 because every connection thread was taken.
    void count_refused_connection();

    // The whole exposition, with `gauges` as of now.
    std::string render(const Gauges& gauges) const;

private:
    mutable std::mutex m_mutex;
    std::map<int, std::uint64_t> m_responses;
    std::array<std::uint64_t, 16> m_executions{};
    std::uint64_t m_refused_connections = 0;
    Histogram m_latency;
    Histogram m_queue_wait;
};

}  // namespace safepy

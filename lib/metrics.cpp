#include "safepy/metrics.hpp"

#include <cstdio>

#include <unistd.h>

namespace safepy {
namespace {

constexpr std::array k_statuses = {Status::ok,          Status::invalid_request, Status::invalid_script,
                                   Status::script_error, Status::invalid_result,  Status::timeout,
                                   Status::memory_limit, Status::output_limit,    Status::sandbox_error};

std::string number(double value) {
    char text[32];
    std::snprintf(text, sizeof text, "%.6g", value);
    return text;
}

void header(std::string& out, const char* name, const char* type, const char* help) {
    out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
}

void gauge(std::string& out, const char* name, const char* help, std::size_t value) {
    header(out, name, "gauge", help);
    out += std::string(name) + " " + std::to_string(value) + "\n";
}

// A label value in the exposition format: backslash, quote and newline escaped.
std::string label_value(const std::string& text) {
    std::string out;
    for (const char c : text) {
        if (c == '\\' || c == '"') {
            out += '\\';
            out += c;
        } else if (c == '\n') {
            out += "\\n";
        } else {
            out += c;
        }
    }
    return out;
}

}  // namespace

Histogram::Histogram(std::vector<double> bounds_seconds)
    : m_bounds(std::move(bounds_seconds)), m_counts(m_bounds.size() + 1, 0) {}

void Histogram::observe(std::chrono::duration<double> value) {
    const double seconds = value.count();
    std::size_t bucket = 0;
    while (bucket < m_bounds.size() && seconds > m_bounds[bucket]) {
        ++bucket;
    }
    std::lock_guard lock(m_mutex);
    ++m_counts[bucket];
    ++m_count;
    m_sum += seconds;
}

void Histogram::render(std::string& out, const std::string& name) const {
    std::lock_guard lock(m_mutex);
    std::uint64_t cumulative = 0;
    for (std::size_t i = 0; i < m_bounds.size(); ++i) {
        cumulative += m_counts[i];
        out += name + "_bucket{le=\"" + number(m_bounds[i]) + "\"} " + std::to_string(cumulative) + "\n";
    }
    out += name + "_bucket{le=\"+Inf\"} " + std::to_string(m_count) + "\n";
    out += name + "_sum " + number(m_sum) + "\n";
    out += name + "_count " + std::to_string(m_count) + "\n";
}

Metrics::Metrics()
    : m_latency({0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300}),
      m_queue_wait({0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}) {}

void Metrics::count_response(int http_status) {
    std::lock_guard lock(m_mutex);
    ++m_responses[http_status];
}

void Metrics::count_execution(Status status) {
    std::lock_guard lock(m_mutex);
    ++m_executions[static_cast<std::size_t>(status) % m_executions.size()];
}

void Metrics::observe_execute(std::chrono::duration<double> latency, std::chrono::duration<double> queue_wait) {
    m_latency.observe(latency);
    m_queue_wait.observe(queue_wait);
}

void Metrics::count_refused_connection() {
    std::lock_guard lock(m_mutex);
    ++m_refused_connections;
}

std::size_t resident_bytes() {
    std::FILE* statm = std::fopen("/proc/self/statm", "r");
    if (!statm) {
        return 0;
    }
    unsigned long size = 0, resident = 0;
    const bool ok = std::fscanf(statm, "%lu %lu", &size, &resident) == 2;
    std::fclose(statm);
    return ok ? resident * static_cast<std::size_t>(sysconf(_SC_PAGESIZE)) : 0;
}

std::string Metrics::render(const Gauges& gauges) const {
    std::string out;
    {
        std::lock_guard lock(m_mutex);
        header(out, "safepy_http_requests_total", "counter", "HTTP responses sent, by status code.");
        for (const auto& [code, count] : m_responses) {
            out += "safepy_http_requests_total{code=\"" + std::to_string(code) + "\"} " + std::to_string(count) + "\n";
        }
        header(out, "safepy_executions_total", "counter", "Finished runs, by outcome status.");
        for (const Status status : k_statuses) {
            out += "safepy_executions_total{status=\"" + std::string(status_name(status)) + "\"} " +
                   std::to_string(m_executions[static_cast<std::size_t>(status)]) + "\n";
        }
        header(out, "safepy_connections_refused_total", "counter",
               "Connections answered 503 at once because every connection thread was taken.");
        out += "safepy_connections_refused_total " + std::to_string(m_refused_connections) + "\n";
    }
    header(out, "safepy_execute_duration_seconds", "histogram",
           "POST /execute latency, first request byte to response ready, queueing included.");
    m_latency.render(out, "safepy_execute_duration_seconds");
    header(out, "safepy_queue_wait_seconds", "histogram", "Time POST /execute requests spent waiting for a slot.");
    m_queue_wait.render(out, "safepy_queue_wait_seconds");
    gauge(out, "safepy_executions_in_flight", "Runs in progress.", gauges.running);
    gauge(out, "safepy_executions_queued", "Requests waiting for an execution slot.", gauges.waiting);
    gauge(out, "safepy_execution_slots", "Runs allowed at once.", gauges.slots);
    gauge(out, "safepy_queue_capacity", "Requests allowed to wait for a slot.", gauges.queue_length);
    gauge(out, "safepy_connections_open", "HTTP connections being served.", gauges.connections);
    gauge(out, "safepy_server_resident_bytes", "Resident memory of the server process (jails not included).",
          gauges.resident_bytes);
    header(out, "safepy_resource_control", "gauge",
           "How runs' memory and processes are limited (mode), and why (reason); always 1.");
    out += "safepy_resource_control{mode=\"" + label_value(gauges.resource_control) + "\",reason=\"" +
           label_value(gauges.resource_control_reason) + "\"} 1\n";
    return out;
}

}  // namespace safepy

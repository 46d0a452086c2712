// safepy-server's HTTP service: POST /execute, GET /healthz, /readyz and
// /metrics over Boost.Beast. It translates HTTP into one Sandbox::run call and
// back; what a request may ask for is decided in safepy/http.hpp.
#pragma once

#include "safepy/http.hpp"
#include "safepy/safepy.hpp"

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>

namespace safepy::server {

struct ServerSettings {
    std::string address = "0.0.0.0";
    int port = 8080;  // 0: any free port, see Server::port()
    std::size_t concurrency = std::max(1u, std::thread::hardware_concurrency());  // runs at once
    std::size_t queue_length = 32;                      // requests waiting for a run slot
    std::chrono::milliseconds queue_timeout{30'000};    // longest wait for a slot, then 503
    ExecutePolicy policy;                               // body size, default limits, maxima
    RequestHeadLimits head;                             // request line and headers
    std::chrono::milliseconds read_timeout{10'000};     // a request's line, headers and body, from its first byte
    std::chrono::milliseconds write_timeout{10'000};    // one response; a client that takes longer is cut off
    std::chrono::milliseconds idle_timeout{5'000};      // keep-alive: longest wait for the next request
    std::size_t keep_alive_max_requests = 100;          // requests per connection
    std::size_t max_connections = 10'000;               // open connections; more get an immediate 503
    std::size_t io_threads = 2;                         // threads serving sockets (runs have their own)
    std::chrono::milliseconds ready_cache{5'000};       // how long a /readyz probe run is reused
    std::function<void(std::string_view line)> log;     // one JSON line per request; empty: stderr
};

class Server {
public:
    // Serves runs through `sandbox`, which the server owns from now on.
    Server(ServerSettings settings, std::unique_ptr<Sandbox> sandbox);

    // Stops with no grace period if still running.
    ~Server();

    Server(const Server&) = delete;
    Server& operator=(const Server&) = delete;

    // Raises this process's open-file soft limit to its hard limit, binds and
    // starts serving on background threads; an error message when the address
    // cannot be bound or the server was started before.
    std::optional<std::string> start();

    // The port bound by start(), or 0 before.
    int port() const;

    // Graceful stop: closes the listening socket and idle connections, answers
    // new and queued runs 503, lets runs in progress finish and their
    // responses go out within `grace`, then kills the runs still going (their
    // clients get 503) and returns when every server thread has ended. Safe to
    // call more than once and from any thread.
    void stop(std::chrono::milliseconds grace);

    // Runs killed because a stop's grace period ran out.
    std::size_t killed_runs() const;

    struct Impl;

private:
    std::unique_ptr<Impl> m_impl;
};

}  // namespace safepy::server

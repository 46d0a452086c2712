#include "server.hpp"

#include "admission.hpp"
#include "connection.hpp"
#include "metrics.hpp"

#include <httplib.h>
#include <netinet/tcp.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <vector>

namespace safepy::server {
namespace {

using Clock = std::chrono::steady_clock;

constexpr std::size_t k_header_bytes = 64 * 1024;  // request line and headers together
constexpr int k_listen_backlog = 128;
constexpr auto k_after_kill = std::chrono::milliseconds(3000);
constexpr const char* k_json = "application/json";

std::chrono::milliseconds since(Clock::time_point start) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
}

// What the handlers of one request tell the code around them; one per
// request, on the thread that serves its connection.
struct Exchange {
    Clock::time_point started = Clock::now();
    ConnectionStream* stream = nullptr;
    bool answered = false;     // a handler of ours wrote the response (else httplib did: malformed request)
    bool close_after = false;  // the body may be unread, or the server drains: close the connection
    bool execute = false;      // reached the POST /execute handler
    bool holds_slot = false;   // an execution slot, released once the response is written
    std::string outcome;
    std::chrono::milliseconds queue_wait{0};
    std::optional<Usage> usage;
    std::string detail;
};
thread_local Exchange* t_exchange = nullptr;

void send_json(httplib::Response& res, int status, const std::string& body) {
    res.status = status;
    res.set_content(body, k_json);
}

void send_error(httplib::Response& res, const HttpError& error) {
    send_json(res, error.http_status, error_body(error));
}

HttpError unavailable(int http_status, std::string message) {
    return HttpError{http_status, std::move(message), std::string(k_unavailable_status)};
}

// The message for a response httplib decided on its own.
std::string library_error_message(int status) {
    switch (status) {
    case 400:
        return "Malformed HTTP request";
    case 413:
        return "The request body is too large";
    case 414:
        return "The request URI is too long";
    case 416:
        return "The Range header is not valid";
    default:
        return "HTTP error " + std::to_string(status);
    }
}

bool may_carry_body(const httplib::Request& req) {
    return req.has_header("Transfer-Encoding") ||
           (req.has_header("Content-Length") && req.get_header_value("Content-Length") != "0");
}

}  // namespace

// httplib's Server with our own connection loop: process_and_close_socket is
// the one per-connection hook it offers, and replacing it is what gives
// whole-request deadlines, byte budgets, draining and refusals.
class HttpServer final : public httplib::Server {
public:
    explicit HttpServer(safepy::server::Server::Impl& owner) : m_owner(owner) {}

    bool serve(httplib::Stream& stream, bool last, bool& closed) {
        return process_request(stream, last, closed, nullptr);
    }

    // Bound sockets get httplib's backlog of 5; a burst of clients needs more.
    void widen_backlog() { ::listen(svr_sock_, k_listen_backlog); }

private:
    bool process_and_close_socket(socket_t sock) override;

    safepy::server::Server::Impl& m_owner;
};

struct Server::Impl {
    Impl(ServerSettings settings_in, std::unique_ptr<Sandbox> sandbox_in)
        : settings(std::move(settings_in)),
          sandbox(std::move(sandbox_in)),
          admission(settings.concurrency, settings.queue_length, settings.queue_timeout),
          http(*this) {
        if (settings.connection_threads == 0) {
            settings.connection_threads = settings.concurrency + settings.queue_length + 32;
        }
    }

    void configure();
    bool serve_connection(int sock);
    void refuse_connection(int sock, Refusal why);
    httplib::Server::HandlerResponse route(const httplib::Request& req, httplib::Response& res);
    void reject(httplib::Response& res, const HttpError& error);
    void handle_execute(const httplib::Request& req, httplib::Response& res);
    void handle_ready(httplib::Response& res);
    void finish(const httplib::Request& req, httplib::Response& res);
    void log(const httplib::Request& req, const httplib::Response& res);
    void write_log(const std::string& line);

    ServerSettings settings;
    std::unique_ptr<Sandbox> sandbox;
    Admission admission;
    Metrics metrics;
    HttpServer http;
    Signal drain_signal;
    Signal abort_signal;
    std::atomic<bool> draining{false};
    std::atomic<bool> killing{false};
    std::atomic<std::size_t> killed{0};
    std::atomic<std::size_t> connections{0};
    std::thread listener;
    int bound_port = 0;
    std::mutex stop_mutex;
    bool stopped = false;
    std::mutex log_mutex;

    std::mutex ready_mutex;  // held during a probe run, so that concurrent /readyz share it
    std::optional<Clock::time_point> ready_checked;
    HttpError ready_error;
    bool ready = false;
    std::string ready_body;
};

bool HttpServer::process_and_close_socket(socket_t sock) {
    // Headers and body leave in separate writes: without TCP_NODELAY, Nagle's
    // algorithm and the client's delayed ACK hold every keep-alive response
    // back by about 40 ms.
    int yes = 1;
    setsockopt(sock, IPPROTO_TCP, TCP_NODELAY, &yes, sizeof yes);
    fcntl(sock, F_SETFD, FD_CLOEXEC);  // never inherited by a jail
    if (const Refusal refusal = current_refusal(); refusal != Refusal::none) {
        m_owner.refuse_connection(sock, refusal);
        return false;
    }
    return m_owner.serve_connection(sock);
}

void Server::Impl::configure() {
    // Header texts only: the connection loop below enforces its own limits.
    http.set_keep_alive_max_count(settings.keep_alive_max_requests);
    http.set_keep_alive_timeout(std::max<time_t>(1, static_cast<time_t>(settings.idle_timeout.count() / 1000)));
    http.set_payload_max_length(settings.policy.max_body_bytes);
    http.set_socket_options([](socket_t sock) {
        // httplib's default adds SO_REUSEPORT, which lets a second server share the port unnoticed.
        int yes = 1;
        setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
    });
    const std::size_t threads = settings.connection_threads;
    http.new_task_queue = [threads] { return new ConnectionQueue(threads, threads); };

    http.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
        return route(req, res);
    });
    http.set_expect_100_continue_handler([this](const httplib::Request& req, httplib::Response& res) {
        return route(req, res) == httplib::Server::HandlerResponse::Handled ? res.status : 100;
    });
    http.Post("/execute", [this](const httplib::Request& req, httplib::Response& res) { handle_execute(req, res); });
    http.Get("/healthz", [](const httplib::Request&, httplib::Response& res) {
        t_exchange->answered = true;
        send_json(res, 200, R"({"status": "ok"})");
    });
    http.Get("/readyz", [this](const httplib::Request&, httplib::Response& res) { handle_ready(res); });
    http.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
        t_exchange->answered = true;
        Gauges gauges;
        gauges.running = admission.running();
        gauges.waiting = admission.waiting();
        gauges.slots = admission.slots();
        gauges.queue_length = admission.queue_length();
        gauges.connections = connections.load();
        gauges.resident_bytes = resident_bytes();
        const Diagnostics diagnostics = sandbox->diagnostics(false);
        gauges.resource_control = diagnostics.resource_control;
        gauges.resource_control_reason = diagnostics.resource_control_reason;
        res.status = 200;
        res.set_content(metrics.render(gauges), "text/plain; version=0.0.4; charset=utf-8");
    });
    http.set_error_handler(httplib::Server::HandlerWithResponse([](const httplib::Request&, httplib::Response& res) {
        if (!res.body.empty()) {
            return httplib::Server::HandlerResponse::Unhandled;
        }
        const std::string status =
            res.status >= 500 ? std::string(status_name(Status::sandbox_error)) : std::string(status_name(Status::invalid_request));
        send_error(res, HttpError{res.status, library_error_message(res.status), status});
        return httplib::Server::HandlerResponse::Handled;
    }));
    http.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr) {
        send_error(res, HttpError{500, "Internal server error", std::string(status_name(Status::sandbox_error))});
    });
    http.set_post_routing_handler([this](const httplib::Request& req, httplib::Response& res) { finish(req, res); });
    http.set_logger([this](const httplib::Request& req, const httplib::Response& res) { log(req, res); });
}

bool Server::Impl::serve_connection(int sock) {
    ++connections;
    ConnectionStream stream(sock, drain_signal, abort_signal, settings.write_timeout);
    bool linger = false;
    bool keep = true;
    for (std::size_t served = 0; keep && served < settings.keep_alive_max_requests; ++served) {
        if (draining || !stream.wait_for_request(settings.idle_timeout)) {
            break;
        }
        Exchange exchange;
        exchange.stream = &stream;
        t_exchange = &exchange;
        stream.begin_request(settings.read_timeout, k_header_bytes);
        const bool last = served + 1 == settings.keep_alive_max_requests;
        bool closed = false;
        bool written = false;
        {
            // A response can be several times its run's output caps (JSON
            // escaping): keeping the slot until it is written bounds the
            // memory of responses by the number of slots.
            struct SlotRelease {
                Exchange& exchange;
                Admission& admission;
                ~SlotRelease() {
                    if (exchange.holds_slot) {
                        admission.leave();
                    }
                }
            } release{exchange, admission};
            written = http.serve(stream, last, closed);
        }
        t_exchange = nullptr;
        linger = exchange.close_after;
        keep = written && !closed && !last && !exchange.close_after;
    }
    stream.close_socket(linger);
    --connections;
    return true;
}

void Server::Impl::refuse_connection(int sock, Refusal why) {
    const HttpError error =
        why == Refusal::stopping
            ? unavailable(503, "The server is shutting down; retry on another instance")
            : unavailable(503, "The server has too many open connections; retry later");
    const std::string body = error_body(error);
    const std::string response = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                 "Content-Length: " + std::to_string(body.size()) +
                                 "\r\nRetry-After: 1\r\nConnection: close\r\n\r\n" + body;
    metrics.count_refused_connection();
    metrics.count_response(503);
    // Never block: this may run on the accepting thread.
    [[maybe_unused]] const auto sent = send(sock, response.data(), response.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    std::array<char, 16384> discard;
    for (int i = 0; i < 4 && recv(sock, discard.data(), discard.size(), MSG_DONTWAIT) > 0; ++i) {
    }
    shutdown(sock, SHUT_RDWR);
    close(sock);
    AccessLogEntry entry;
    entry.time = std::chrono::system_clock::now();
    entry.http_status = 503;
    entry.outcome = why == Refusal::stopping ? "shutting_down" : "connection_refused";
    entry.bytes_out = body.size();
    write_log(access_log_json(entry));
}

void Server::Impl::reject(httplib::Response& res, const HttpError& error) {
    t_exchange->answered = true;
    t_exchange->close_after = true;
    t_exchange->outcome = "rejected";
    send_error(res, error);
    if (error.http_status == 503 || error.http_status == 429) {
        res.set_header("Retry-After", "1");
    }
}

httplib::Server::HandlerResponse Server::Impl::route(const httplib::Request& req, httplib::Response& res) {
    using Result = httplib::Server::HandlerResponse;
    const bool head_or_get = req.method == "GET" || req.method == "HEAD";
    if (req.path == "/execute") {
        if (req.method != "POST") {
            reject(res, HttpError{405, "Method " + req.method + " is not allowed on /execute; use POST"});
            res.set_header("Allow", "POST");
            return Result::Handled;
        }
        if (draining) {
            reject(res, unavailable(503, "The server is shutting down; retry on another instance"));
            return Result::Handled;
        }
        ExecuteHeaders headers;
        const std::string content_type = req.get_header_value("Content-Type");
        if (req.has_header("Content-Type")) {
            headers.content_type = content_type;
        }
        std::vector<std::string> lengths;
        for (std::size_t i = 0; i < req.get_header_value_count("Content-Length"); ++i) {
            lengths.push_back(req.get_header_value("Content-Length", i));
        }
        headers.content_lengths.assign(lengths.begin(), lengths.end());
        headers.transfer_encoding = req.has_header("Transfer-Encoding");
        const std::string encoding = req.get_header_value("Content-Encoding");
        if (req.has_header("Content-Encoding")) {
            headers.content_encoding = encoding;
        }
        if (auto error = check_execute_headers(headers, settings.policy)) {
            reject(res, *error);
            return Result::Handled;
        }
        t_exchange->stream->allow_body(req.get_header_value<std::uint64_t>("Content-Length"));
        return Result::Unhandled;
    }
    if (req.path == "/healthz" || req.path == "/readyz" || req.path == "/metrics") {
        if (!head_or_get) {
            reject(res, HttpError{405, "Method " + req.method + " is not allowed on " + req.path + "; use GET"});
            res.set_header("Allow", "GET, HEAD");
            return Result::Handled;
        }
        t_exchange->stream->allow_body(0);
        return Result::Unhandled;
    }
    reject(res, HttpError{404, "No such endpoint: " + req.path + " (try POST /execute)"});
    t_exchange->close_after = may_carry_body(req);
    return Result::Handled;
}

void Server::Impl::handle_execute(const httplib::Request& req, httplib::Response& res) {
    Exchange& exchange = *t_exchange;
    exchange.answered = true;
    exchange.execute = true;
    auto parsed = parse_execute_body(req.body, settings.policy);
    if (auto* error = std::get_if<HttpError>(&parsed)) {
        exchange.outcome = "rejected";
        send_error(res, *error);
        return;
    }
    const Request& request = std::get<Request>(parsed);
    // Requests the library would refuse anyway do not wait for a slot.
    if (auto problem = sandbox->check(request)) {
        Outcome rejected;
        rejected.status = Status::invalid_request;
        rejected.error = *problem;
        exchange.outcome = "rejected";
        send_json(res, http_status(rejected.status), envelope_json(rejected));
        return;
    }
    switch (admission.enter(exchange.queue_wait)) {
    case Admission::Result::queue_full:
        exchange.outcome = "queue_full";
        send_error(res, unavailable(429, "Every execution slot is busy and the queue is full; retry later"));
        res.set_header("Retry-After", "1");
        return;
    case Admission::Result::timed_out:
        exchange.outcome = "queue_timeout";
        send_error(res, unavailable(503, "No execution slot became free within " +
                                             std::to_string(settings.queue_timeout.count()) + " ms; retry later"));
        res.set_header("Retry-After", "1");
        return;
    case Admission::Result::draining:
        exchange.outcome = "shutting_down";
        exchange.close_after = true;
        send_error(res, unavailable(503, "The server is shutting down; retry on another instance"));
        res.set_header("Retry-After", "1");
        return;
    case Admission::Result::admitted:
        break;
    }
    exchange.holds_slot = true;
    Outcome outcome = sandbox->run(request);
    metrics.count_execution(outcome.status);
    exchange.outcome = status_name(outcome.status);
    exchange.usage = outcome.usage;
    if (outcome.status == Status::sandbox_error) {
        exchange.detail = outcome.detail;
    }
    if (outcome.cancelled) {
        ++killed;
        exchange.outcome = "killed_at_shutdown";
        exchange.close_after = true;
        send_error(res, unavailable(503, "The server shut down before the run finished; retry on another instance"));
        return;
    }
    send_json(res, http_status(outcome.status), envelope_json(outcome, details_requested(req.get_param_value("details"))));
}

void Server::Impl::handle_ready(httplib::Response& res) {
    t_exchange->answered = true;
    if (draining) {
        send_error(res, unavailable(503, "The server is shutting down"));
        return;
    }
    std::lock_guard lock(ready_mutex);
    if (!ready_checked || Clock::now() - *ready_checked >= settings.ready_cache) {
        Request probe;
        probe.script = "def main():\n    return [1]\n";
        probe.limits.wall = std::chrono::milliseconds(5000);
        const Outcome outcome = sandbox->run(probe);
        ready = outcome.status == Status::ok && outcome.result_json == "[1]";
        if (ready) {
            ready_body = "{\"status\": \"ready\", \"jail\": " + json_quote(outcome.jail) +
                         ", \"probe_ms\": " + std::to_string(outcome.usage.wall.count()) +
                         ", \"resource_control\": " + json_quote(outcome.resource_control) +
                         ", \"resource_control_reason\": " +
                         json_quote(sandbox->diagnostics(false).resource_control_reason) + "}";
        } else {
            ready_error = HttpError{503, "The sandbox probe run failed (" + std::string(status_name(outcome.status)) +
                                             "): " + outcome.error,
                                    std::string(status_name(Status::sandbox_error))};
            t_exchange->detail = outcome.detail;
        }
        ready_checked = Clock::now();
    }
    if (ready) {
        send_json(res, 200, ready_body);
    } else {
        send_error(res, ready_error);
    }
}

// Runs just before the response is written: what a client has been answered
// is already counted when it reads /metrics next.
void Server::Impl::finish(const httplib::Request&, httplib::Response& res) {
    Exchange& exchange = *t_exchange;
    metrics.count_response(res.status);
    if (exchange.execute) {
        metrics.observe_execute(since(exchange.started), exchange.queue_wait);
    }
    if (!exchange.answered || draining) {
        exchange.close_after = true;
    }
    if (exchange.close_after) {
        res.headers.erase("Keep-Alive");
        if (res.get_header_value("Connection") != "close") {
            res.set_header("Connection", "close");
        }
    }
}

void Server::Impl::log(const httplib::Request& req, const httplib::Response& res) {
    const Exchange& exchange = *t_exchange;
    const auto duration = since(exchange.started);
    AccessLogEntry entry;
    entry.time = std::chrono::system_clock::now();
    entry.method = req.method;
    entry.path = req.path;
    entry.remote_address = req.remote_addr;
    entry.http_status = res.status;
    entry.outcome = exchange.outcome;
    entry.duration = duration;
    entry.queue_wait = exchange.queue_wait;
    entry.usage = exchange.usage;
    entry.bytes_in = req.body.size();
    entry.bytes_out = res.body.size();
    entry.detail = exchange.detail;
    write_log(access_log_json(entry));
}

void Server::Impl::write_log(const std::string& line) {
    std::lock_guard lock(log_mutex);
    if (settings.log) {
        settings.log(line);
        return;
    }
    const std::string text = line + "\n";
    std::fwrite(text.data(), 1, text.size(), stderr);
    std::fflush(stderr);
}

Server::Server(ServerSettings settings, std::unique_ptr<Sandbox> sandbox)
    : m_impl(std::make_unique<Impl>(std::move(settings), std::move(sandbox))) {
    m_impl->configure();
}

Server::~Server() {
    stop(std::chrono::milliseconds(0));
}

std::optional<std::string> Server::start() {
    Impl& impl = *m_impl;
    std::lock_guard lock(impl.stop_mutex);
    if (impl.listener.joinable() || impl.stopped) {
        return "the server was already started";
    }
    const auto& settings = impl.settings;
    errno = 0;
    const int port = settings.port == 0 ? impl.http.bind_to_any_port(settings.address)
                                        : (impl.http.bind_to_port(settings.address, settings.port) ? settings.port : -1);
    if (port < 0) {
        return "cannot listen on " + settings.address + ":" + std::to_string(settings.port) +
               (errno ? std::string(": ") + std::strerror(errno) : std::string());
    }
    impl.http.widen_backlog();
    impl.bound_port = port;
    impl.listener = std::thread([&impl] { impl.http.listen_after_bind(); });
    // httplib's stop() does nothing until the accept loop runs.
    const auto deadline = Clock::now() + std::chrono::seconds(10);
    while (!impl.http.is_running() && Clock::now() < deadline) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    if (!impl.http.is_running()) {
        return "the accept loop did not start";
    }
    return std::nullopt;
}

int Server::port() const {
    return m_impl->bound_port;
}

void Server::stop(std::chrono::milliseconds grace) {
    Impl& impl = *m_impl;
    std::lock_guard lock(impl.stop_mutex);
    if (impl.stopped || !impl.listener.joinable()) {
        impl.stopped = true;
        return;
    }
    impl.stopped = true;
    const auto grace_end = Clock::now() + grace;
    impl.draining = true;
    impl.admission.drain();
    impl.drain_signal.raise();
    impl.http.stop();
    if (!impl.admission.wait_idle(grace_end)) {
        impl.killing = true;
        // Again and again: a run admitted just before the drain may start its jail after a pass.
        const auto kill_end = Clock::now() + k_after_kill;
        do {
            impl.sandbox->cancel_all();
        } while (!impl.admission.wait_idle(std::min(kill_end, Clock::now() + std::chrono::milliseconds(50))) &&
                 Clock::now() < kill_end);
    }
    // Responses of finished runs are still being written; give them the rest of the grace period.
    const auto write_end = std::max(grace_end, Clock::now() + std::chrono::milliseconds(impl.killing ? 1000 : 0));
    while (impl.connections.load() > 0 && Clock::now() < write_end) {
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    impl.abort_signal.raise();
    impl.listener.join();
}

std::size_t Server::killed_runs() const {
    return m_impl->killed.load();
}

}  // namespace safepy::server

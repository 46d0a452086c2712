#include "server.hpp"

#include "safepy/check.hpp"

#include "safepy/admission.hpp"
#include "safepy/metrics.hpp"

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http.hpp>
#include <boost/version.hpp>

#include <fcntl.h>
#include <netinet/tcp.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <future>
#include <list>
#include <mutex>
#include <vector>

static_assert(BOOST_VERSION / 100 == 1081, "Beast and Asio must come from Boost 1.81 (link Boost::headers)");

namespace safepy::server {
namespace {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;
using Clock = std::chrono::steady_clock;
using error_code = boost::system::error_code;

constexpr int k_listen_backlog = 1024;
constexpr std::size_t k_read_chunk = 4096;
constexpr std::size_t k_buffer_bytes = 256 * 1024;  // unparsed input held per connection
constexpr std::size_t k_linger_bytes = 4u << 20;
constexpr auto k_linger = std::chrono::milliseconds(1000);
constexpr auto k_after_kill = std::chrono::milliseconds(3000);
constexpr auto k_accept_pause = std::chrono::milliseconds(50);  // out of descriptors: let some close
constexpr const char* k_json = "application/json";

std::chrono::milliseconds since(Clock::time_point start) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
}

HttpError unavailable(std::string message) {
    return HttpError{503, std::move(message), std::string(k_unavailable_status)};
}

const HttpError k_shutting_down = unavailable("The server is shutting down; retry on another instance");

// What a run in the run pool hands back to its connection.
struct RunResult {
    HttpReply reply;
    std::string outcome;
    std::chrono::milliseconds queue_wait{0};
    std::optional<Usage> usage;
    std::string detail;
    bool holds_slot = false;
    bool close_after = false;
};

}  // namespace

class Session;

struct Server::Impl {
    Impl(ServerSettings settings_in, std::unique_ptr<Sandbox> sandbox_in)
        : settings(std::move(settings_in)),
          sandbox(std::move(sandbox_in)),
          admission(settings.concurrency, settings.queue_length, settings.queue_timeout),
          run_capacity(admission.slots() + admission.queue_length() + 1),
          runs(run_capacity),
          acceptor(net::make_strand(io)),
          summary_timer(io) {}

    void accept_next();
    void accepted(int fd);
    void refuse(int fd, const HttpError& error, std::string_view outcome);
    void summarise_refusals();
    void write_log(const std::string& line);
    void log_refusal(std::string_view outcome, const std::string& line);
    template <class Action> void each_session(Action action);

    ServerSettings settings;
    std::unique_ptr<Sandbox> sandbox;
    Admission admission;
    Metrics metrics;
    std::atomic<bool> draining{false};
    std::atomic<bool> killing{false};
    std::atomic<std::size_t> killed{0};
    std::atomic<std::size_t> connections{0};
    std::atomic<std::size_t> posted_runs{0};
    const std::size_t run_capacity;  // every slot and every place in line, so that the pool never queues
    int bound_port = 0;
    std::mutex stop_mutex;
    bool started = false;
    bool stopped = false;
    std::mutex log_mutex;
    RefusalThrottle throttle;

    std::mutex sessions_mutex;
    std::list<std::weak_ptr<Session>> sessions;

    std::mutex ready_mutex;  // held during a probe run
    std::optional<Clock::time_point> ready_checked;
    HttpReply ready_reply;
    std::string ready_detail;

    // Destroyed first: pending handlers hold sessions, which use the members above.
    net::thread_pool runs;
    net::thread_pool probes{1};
    net::io_context io;
    tcp::acceptor acceptor;
    net::steady_timer summary_timer;
    std::vector<std::thread> io_threads;
};

// One client connection, from accept to close, on its own strand.
class Session : public std::enable_shared_from_this<Session> {
public:
    Session(Server::Impl& server, tcp::socket socket)
        : m_server(server), m_stream(std::move(socket)), m_buffer(k_buffer_bytes),
          m_read_timer(m_stream.get_executor()), m_scanner(server.settings.head) {
        error_code ec;
        const auto remote = m_stream.socket().remote_endpoint(ec);
        m_remote = ec ? "unknown" : remote.address().to_string();
        ++m_server.connections;
    }

    ~Session() {
        release_slot();
        --m_server.connections;
        std::lock_guard lock(m_server.sessions_mutex);
        m_server.sessions.erase(m_registration);
    }

    void start() {
        {
            std::lock_guard lock(m_server.sessions_mutex);
            m_registration = m_server.sessions.insert(m_server.sessions.end(), weak_from_this());
        }
        net::dispatch(m_stream.get_executor(), [self = shared_from_this()] { self->next_request(); });
    }

    // Closes the connection if it waits for a request; others close after their response.
    void drain() {
        net::post(m_stream.get_executor(), [self = shared_from_this()] {
            if (self->m_idle) {
                error_code ignored;
                self->m_stream.socket().close(ignored);
            }
        });
    }

    void abort() {
        net::post(m_stream.get_executor(), [self = shared_from_this()] {
            error_code ignored;
            self->m_stream.socket().close(ignored);
        });
    }

private:
    struct Exchange {
        Clock::time_point started = Clock::now();
        std::string method;
        std::string path;
        std::string outcome;
        std::string detail;
        std::chrono::milliseconds queue_wait{0};
        std::optional<Usage> usage;
        bool execute = false;
        bool head_only = false;
        bool close_after = false;
        bool refusal = false;  // logged through the throttle
    };

    std::string_view received() const {
        return {static_cast<const char*>(m_buffer.data().data()), m_buffer.size()};
    }

    void next_request() {
        if (m_server.draining || m_served >= m_server.settings.keep_alive_max_requests || !m_stream.socket().is_open()) {
            return close(false);
        }
        m_exchange = Exchange{};
        m_scanner = RequestHeadScanner(m_server.settings.head);
        m_parser.reset();
        if (m_buffer.size() > 0) {
            begin_request();
            return scan_head();
        }
        m_idle = true;
        m_stream.expires_after(m_server.settings.idle_timeout);
        read_more();
    }

    // The whole request (line, headers, body) must arrive by one deadline. The
    // stream's own expiry is a backstop: when it fires it closes the socket,
    // and a client cut off by the deadline is to be answered first.
    void begin_request() {
        m_idle = false;
        m_exchange.started = Clock::now();
        m_read_expired = false;
        m_reading = true;
        m_stream.expires_after(m_server.settings.read_timeout + m_server.settings.write_timeout);
        m_read_timer.expires_after(m_server.settings.read_timeout);
        m_read_timer.async_wait([self = shared_from_this()](error_code ec) {
            if (!ec && self->m_reading) {
                self->m_read_expired = true;
                error_code ignored;
                self->m_stream.socket().cancel(ignored);
            }
        });
    }

    void read_more() {
        m_stream.async_read_some(m_buffer.prepare(k_read_chunk),
                                 [self = shared_from_this()](error_code ec, std::size_t n) { self->on_read(ec, n); });
    }

    void on_read(error_code ec, std::size_t n) {
        if (ec) {
            return read_failed(ec);
        }
        m_buffer.commit(n);
        if (m_idle) {
            begin_request();
        }
        scan_head();
    }

    void read_failed(error_code ec) {
        if (m_read_expired && !m_idle) {
            m_exchange.outcome = "read_timeout";
            m_exchange.detail = ec.message();
            m_exchange.refusal = true;
            return reject(HttpError{400, "The request did not arrive within " +
                                             std::to_string(m_server.settings.read_timeout.count()) + " ms"});
        }
        close(false);  // the client went away, stayed idle, or the server drains
    }

    void scan_head() {
        switch (m_scanner.scan(received())) {
        case RequestHeadScanner::State::need_more:
            return read_more();
        case RequestHeadScanner::State::refused:
            return malformed(m_scanner.error(), m_scanner.detail());
        case RequestHeadScanner::State::complete:
            break;
        }
        m_parser.emplace();
        m_parser->header_limit(static_cast<std::uint32_t>(m_server.settings.head.head_bytes));
        m_parser->body_limit(boost::none);  // Content-Length is judged by check_execute_headers
        error_code ec;
        const std::size_t used = m_parser->put(net::buffer(m_buffer.data().data(), m_scanner.head_bytes()), ec);
        if (ec || used != m_scanner.head_bytes() || !m_parser->is_header_done()) {
            return malformed(HttpError{400, "Malformed HTTP request"}, ec ? ec.message() : "incomplete head");
        }
        m_buffer.consume(used);
        route();
    }

    void route() {
        auto& req = m_parser->get();
        m_exchange.method = std::string(req.method_string());
        const auto target = parse_request_target(req.target());
        if (!target) {
            return malformed(HttpError{400, "Malformed HTTP request"}, "the target is neither origin nor absolute form");
        }
        m_exchange.path = std::string(target->path);
        const http::verb method = req.method();
        const bool has_body = m_parser->chunked() || m_parser->content_length().value_or(0) > 0 ||
                              req.count(http::field::transfer_encoding) > 0;
        m_exchange.head_only = method == http::verb::head;
        if (has_body && (method == http::verb::get || method == http::verb::head || method == http::verb::options ||
                         method == http::verb::trace || method == http::verb::connect)) {
            return malformed(HttpError{400, "A " + m_exchange.method + " request must not carry a body"},
                             "a body on a bodiless method");
        }
        const std::string& path = m_exchange.path;
        if (path == "/execute") {
            if (method != http::verb::post) {
                m_response.set(http::field::allow, "POST");
                return reject(HttpError{405, "Method " + m_exchange.method + " is not allowed on /execute; use POST"});
            }
            if (m_server.draining) {
                return reject(k_shutting_down);
            }
            return check_execute(*target);
        }
        if (path == "/healthz" || path == "/readyz" || path == "/metrics") {
            if (method != http::verb::get && method != http::verb::head) {
                m_response.set(http::field::allow, "GET, HEAD");
                return reject(HttpError{405, "Method " + m_exchange.method + " is not allowed on " + path + "; use GET"});
            }
            if (path == "/healthz") {
                return respond(200, "{\"status\": \"ok\", \"version\": \"" + std::string(version()) + "\"}");
            }
            if (path == "/metrics") {
                return metrics();
            }
            return ready();
        }
        reject(HttpError{404, "No such endpoint: " + path + " (try POST /execute)"}, has_body);
    }

    void check_execute(const RequestTarget& target) {
        const auto& req = m_parser->get();
        ExecuteHeaders headers;
        if (auto it = req.find(http::field::content_type); it != req.end()) {
            headers.content_type = it->value();
        }
        for (auto [it, end] = req.equal_range(http::field::content_length); it != end; ++it) {
            headers.content_lengths.push_back(it->value());
        }
        headers.transfer_encoding = req.count(http::field::transfer_encoding) > 0;
        if (auto it = req.find(http::field::content_encoding); it != req.end()) {
            headers.content_encoding = it->value();
        }
        if (auto error = check_execute_headers(headers, m_server.settings.policy)) {
            return reject(*error);
        }
        m_details = details_requested(query_parameter(target.query, "details"));
        m_parser->body_limit(m_server.settings.policy.max_body_bytes);
        if (beast::iequals(req[http::field::expect], "100-continue")) {
            static const std::string k_continue = "HTTP/1.1 100 Continue\r\n\r\n";
            net::async_write(m_stream, net::buffer(k_continue), [self = shared_from_this()](error_code ec, std::size_t) {
                if (ec) {
                    return self->read_failed(ec);
                }
                self->read_body();
            });
            return;
        }
        read_body();
    }

    void read_body() {
        http::async_read(m_stream, m_buffer, *m_parser, [self = shared_from_this()](error_code ec, std::size_t) {
            if (ec) {
                return self->read_failed(ec);
            }
            self->m_reading = false;
            self->m_read_timer.cancel();
            self->execute();
        });
    }

    void execute() {
        m_exchange.execute = true;
        auto prepared = prepare_execute(m_parser->get().body(), m_server.settings.policy, *m_server.sandbox);
        if (auto* reply = std::get_if<HttpReply>(&prepared)) {
            m_exchange.outcome = "rejected";
            return respond(reply->http_status, std::move(reply->body));
        }
        if (m_server.posted_runs.fetch_add(1) >= m_server.run_capacity) {
            --m_server.posted_runs;
            return run_done(refused_run(Admission::Result::queue_full));
        }
        net::post(m_server.runs, [self = shared_from_this(), request = std::get<Request>(std::move(prepared))] {
            RunResult result = self->run(request);
            --self->m_server.posted_runs;
            net::post(self->m_stream.get_executor(),
                      [self, result = std::move(result)]() mutable { self->run_done(std::move(result)); });
        });
    }

    // On a run-pool thread: waits for a slot and runs. Touches no member of the session but m_details.
    RunResult run(const Request& request) {
        Server::Impl& server = m_server;
        std::chrono::milliseconds waited{0};
        const Admission::Result admitted = server.admission.enter(waited);
        if (admitted != Admission::Result::admitted) {
            RunResult result = refused_run(admitted);
            result.queue_wait = waited;
            return result;
        }
        RunResult result;
        result.holds_slot = true;
        result.queue_wait = waited;
        try {
            finish_run(request, result);
        } catch (const std::exception& error) {  // out of memory for the reply: the slot is still released
            result.outcome = status_name(Status::sandbox_error);
            result.detail = error.what();
            result.close_after = true;
            result.reply = {500, error_body(HttpError{500, "Internal server error",
                                                      std::string(status_name(Status::sandbox_error))})};
        }
        return result;
    }

    void finish_run(const Request& request, RunResult& result) {
        Server::Impl& server = m_server;
        const Outcome outcome = server.sandbox->run(request);
        server.metrics.count_execution(outcome.status);
        result.outcome = status_name(outcome.status);
        result.usage = outcome.usage;
        if (outcome.status == Status::sandbox_error) {
            result.detail = outcome.detail;
        }
        if (outcome.cancelled) {
            ++server.killed;
            result.outcome = "killed_at_shutdown";
            result.close_after = true;
            result.reply = {503, error_body(unavailable("The server shut down before the run finished; retry on another instance"))};
            return;
        }
        result.reply = execute_reply(outcome, m_details);
    }

    RunResult refused_run(Admission::Result why) const {
        RunResult result;
        switch (why) {
        case Admission::Result::queue_full:
            result.outcome = "queue_full";
            result.reply = {429, error_body(HttpError{429, "Every execution slot is busy and the queue is full; retry later",
                                                      std::string(k_unavailable_status)})};
            break;
        case Admission::Result::timed_out:
            result.outcome = "queue_timeout";
            result.reply = {503, error_body(unavailable("No execution slot became free within " +
                                                        std::to_string(m_server.settings.queue_timeout.count()) +
                                                        " ms; retry later"))};
            break;
        case Admission::Result::draining:
        case Admission::Result::admitted:
            result.outcome = "shutting_down";
            result.close_after = true;
            result.reply = {503, error_body(k_shutting_down)};
            break;
        }
        return result;
    }

    void run_done(RunResult result) {
        m_holds_slot = result.holds_slot;
        m_exchange.outcome = std::move(result.outcome);
        m_exchange.queue_wait = result.queue_wait;
        m_exchange.usage = result.usage;
        m_exchange.detail = std::move(result.detail);
        m_exchange.close_after = m_exchange.close_after || result.close_after;
        respond(result.reply.http_status, std::move(result.reply.body));
    }

    void metrics() {
        Gauges gauges;
        gauges.running = m_server.admission.running();
        gauges.waiting = m_server.admission.waiting();
        gauges.slots = m_server.admission.slots();
        gauges.queue_length = m_server.admission.queue_length();
        gauges.connections = m_server.connections.load();
        gauges.resident_bytes = resident_bytes();
        const Diagnostics diagnostics = m_server.sandbox->diagnostics(false);
        gauges.resource_control = diagnostics.resource_control;
        gauges.resource_control_reason = diagnostics.resource_control_reason;
        respond(200, m_server.metrics.render(gauges), "text/plain; version=0.0.4; charset=utf-8");
    }

    // A fresh cached answer is sent at once; a probe run happens on the probe thread.
    void ready() {
        if (m_server.draining) {
            return respond(503, error_body(unavailable("The server is shutting down")));
        }
        if (std::unique_lock lock(m_server.ready_mutex, std::try_to_lock);
            lock && m_server.ready_checked && Clock::now() - *m_server.ready_checked < m_server.settings.ready_cache) {
            return respond(m_server.ready_reply.http_status, std::string(m_server.ready_reply.body));
        }
        net::post(m_server.probes, [self = shared_from_this()] {
            Server::Impl& server = self->m_server;
            std::lock_guard lock(server.ready_mutex);
            if (!server.ready_checked || Clock::now() - *server.ready_checked >= server.settings.ready_cache) {
                server.ready_detail.clear();
                server.ready_reply = readiness_reply(server.sandbox->diagnostics(true), server.ready_detail);
                server.ready_checked = Clock::now();
            }
            net::post(self->m_stream.get_executor(),
                      [self, reply = server.ready_reply, detail = server.ready_detail]() mutable {
                          self->m_exchange.detail = std::move(detail);
                          self->respond(reply.http_status, std::move(reply.body));
                      });
        });
    }

    // A request that breaks HTTP itself: answered, logged through the throttle, and the connection closed.
    void malformed(const HttpError& error, const std::string& detail) {
        m_exchange.outcome = error.http_status == 414 ? "uri_too_long" : "malformed";
        m_exchange.detail = detail;
        m_exchange.refusal = true;
        reject(error);
    }

    void reject(const HttpError& error, bool close = true) {
        if (m_exchange.outcome.empty()) {
            m_exchange.outcome = "rejected";
        }
        m_exchange.close_after = m_exchange.close_after || close;
        respond(error.http_status, error_body(error));
    }

    void respond(int status, std::string body, const char* content_type = k_json) {
        Exchange& exchange = m_exchange;
        m_reading = false;
        m_read_timer.cancel();
        if (status == 429 || status == 503) {
            m_response.set(http::field::retry_after, "1");
        }
        const bool keep_alive = m_parser && m_parser->is_header_done() && m_parser->get().keep_alive();
        exchange.close_after = exchange.close_after || m_server.draining || !keep_alive ||
                               m_served + 1 >= m_server.settings.keep_alive_max_requests;
        m_response.version(11);
        m_response.result(static_cast<unsigned>(status));
        m_response.set(http::field::content_type, content_type);
        m_response.body() = std::move(body);
        m_response.keep_alive(!exchange.close_after);
        m_response.prepare_payload();
        // Counted before the write, so that a client's next /metrics already shows it.
        m_server.metrics.count_response(status);
        if (exchange.execute) {
            m_server.metrics.observe_execute(since(exchange.started), exchange.queue_wait);
        }
        m_stream.expires_after(m_server.settings.write_timeout);
        auto written = [self = shared_from_this()](error_code ec, std::size_t) { self->written(ec); };
        if (exchange.head_only) {
            m_serializer.emplace(m_response);
            http::async_write_header(m_stream, *m_serializer, std::move(written));
        } else {
            http::async_write(m_stream, m_response, std::move(written));
        }
    }

    void written(error_code ec) {
        log();
        m_response = {};  // a response's memory lasts no longer than its slot
        m_serializer.reset();
        release_slot();
        ++m_served;
        if (ec) {
            return close(false);
        }
        if (m_exchange.close_after) {
            return close(true);
        }
        next_request();
    }

    void log() {
        AccessLogEntry entry;
        entry.time = std::chrono::system_clock::now();
        entry.method = m_exchange.method;
        entry.path = m_exchange.path;
        entry.remote_address = m_remote;
        entry.http_status = static_cast<int>(m_response.result_int());
        entry.outcome = m_exchange.outcome;
        entry.duration = since(m_exchange.started);
        entry.queue_wait = m_exchange.queue_wait;
        entry.usage = m_exchange.usage;
        entry.bytes_in = m_parser && m_parser->is_done() ? m_parser->get().body().size() : 0;
        entry.bytes_out = m_response.body().size();
        entry.detail = m_exchange.detail;
        const std::string line = access_log_json(entry);
        if (m_exchange.refusal) {
            m_server.log_refusal(m_exchange.outcome, line);
        } else {
            m_server.write_log(line);
        }
    }

    void release_slot() {
        if (m_holds_slot) {
            m_holds_slot = false;
            m_server.admission.leave();
        }
    }

    // With `linger`, the client may still be sending what we did not read:
    // read and drop it for a moment, so that closing does not reset the
    // connection before the client has read our answer.
    void close(bool linger) {
        m_read_timer.cancel();
        error_code ignored;
        if (!linger || !m_stream.socket().is_open()) {
            m_stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
            m_stream.socket().close(ignored);
            return;
        }
        m_stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
        m_stream.expires_after(k_linger);
        m_lingered = 0;
        discard();
    }

    void discard() {
        m_buffer.clear();
        m_stream.async_read_some(m_buffer.prepare(k_read_chunk), [self = shared_from_this()](error_code ec, std::size_t n) {
            self->m_lingered += n;
            if (ec || self->m_lingered >= k_linger_bytes) {
                return self->close(false);
            }
            self->discard();
        });
    }

    Server::Impl& m_server;
    beast::tcp_stream m_stream;
    beast::flat_buffer m_buffer;
    net::steady_timer m_read_timer;
    RequestHeadScanner m_scanner;
    std::optional<http::request_parser<http::string_body>> m_parser;
    http::response<http::string_body> m_response;
    std::optional<http::response_serializer<http::string_body>> m_serializer;
    Exchange m_exchange;
    std::string m_remote;
    std::list<std::weak_ptr<Session>>::iterator m_registration;
    std::size_t m_served = 0;
    std::size_t m_lingered = 0;
    bool m_idle = false;
    bool m_read_expired = false;
    bool m_reading = false;  // the request being read is under the read deadline
    bool m_holds_slot = false;
    bool m_details = false;
};

// accept4 rather than Asio's accept: the socket is close-on-exec from the
// start, so a jail spawned by another thread at that moment never inherits it.
void Server::Impl::accept_next() {
    acceptor.async_wait(tcp::acceptor::wait_read, [this](error_code ec) {
        if (ec) {
            return;  // closed by stop()
        }
        for (int i = 0; i < 64; ++i) {
            const int fd = ::accept4(acceptor.native_handle(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
            if (fd >= 0) {
                accepted(fd);
                continue;
            }
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                auto pause = std::make_shared<net::steady_timer>(acceptor.get_executor(), k_accept_pause);
                pause->async_wait([this, pause](error_code) { accept_next(); });
                return;
            }
            break;  // EAGAIN, or a connection that went away before accept
        }
        accept_next();
    });
}

void Server::Impl::accepted(int fd) {
    const int yes = 1;
    // Headers and body may leave in separate writes: without TCP_NODELAY, Nagle
    // and the client's delayed ACK hold keep-alive responses back ~40 ms.
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &yes, sizeof yes);
    if (draining) {
        return refuse(fd, k_shutting_down, "shutting_down");
    }
    if (connections.load() >= settings.max_connections) {
        metrics.count_refused_connection();
        return refuse(fd, unavailable("The server has too many open connections; retry later"), "connection_refused");
    }
    error_code ec;
    tcp::socket socket(net::make_strand(io));
    socket.assign(acceptor.local_endpoint(ec).protocol(), fd, ec);
    if (ec) {
        ::close(fd);
        return;
    }
    std::make_shared<Session>(*this, std::move(socket))->start();
}

// A canned 503 without reading the request: never blocks the accepting strand.
void Server::Impl::refuse(int fd, const HttpError& error, std::string_view outcome) {
    const std::string body = error_body(error);
    const std::string response = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                 "Content-Length: " + std::to_string(body.size()) +
                                 "\r\nRetry-After: 1\r\nConnection: close\r\n\r\n" + body;
    metrics.count_response(503);
    [[maybe_unused]] const auto sent = ::send(fd, response.data(), response.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    char discard[16384];
    for (int i = 0; i < 4 && ::recv(fd, discard, sizeof discard, MSG_DONTWAIT) > 0; ++i) {
    }
    sockaddr_storage peer{};
    socklen_t length = sizeof peer;
    std::string remote = "unknown";
    if (getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &length) == 0) {
        tcp::endpoint endpoint;
        std::memcpy(endpoint.data(), &peer, std::min<std::size_t>(length, sizeof peer));
        remote = endpoint.address().to_string();
    }
    ::shutdown(fd, SHUT_RDWR);
    ::close(fd);
    AccessLogEntry entry;
    entry.time = std::chrono::system_clock::now();
    entry.http_status = 503;
    entry.outcome = outcome;
    entry.remote_address = remote;
    entry.bytes_out = body.size();
    log_refusal(entry.outcome, access_log_json(entry));
}

void Server::Impl::summarise_refusals() {
    summary_timer.expires_after(std::chrono::seconds(1));
    summary_timer.async_wait([this](error_code ec) {
        std::optional<std::string> line;
        {
            std::lock_guard lock(log_mutex);
            line = throttle.summary();
        }
        if (line) {
            write_log(*line);
        }
        if (!ec) {
            summarise_refusals();
        }
    });
}

void Server::Impl::log_refusal(std::string_view outcome, const std::string& line) {
    bool admitted;
    {
        std::lock_guard lock(log_mutex);
        admitted = throttle.admit(outcome);
    }
    if (admitted) {
        write_log(line);
    }
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

template <class Action> void Server::Impl::each_session(Action action) {
    std::vector<std::shared_ptr<Session>> live;
    {
        std::lock_guard lock(sessions_mutex);
        for (const auto& weak : sessions) {
            if (auto session = weak.lock()) {
                live.push_back(std::move(session));
            }
        }
    }
    for (const auto& session : live) {
        action(*session);
    }
}

Server::Server(ServerSettings settings, std::unique_ptr<Sandbox> sandbox)
    : m_impl(std::make_unique<Impl>(std::move(settings), std::move(sandbox))) {}

Server::~Server() {
    stop(std::chrono::milliseconds(0));
}

std::optional<std::string> Server::start() {
    Impl& impl = *m_impl;
    std::lock_guard lock(impl.stop_mutex);
    if (impl.started || impl.stopped) {
        return "the server was already started";
    }
    // Idle connections cost a descriptor each: allow as many as the hard limit does.
    if (rlimit files{}; getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur < files.rlim_max) {
        files.rlim_cur = files.rlim_max;
        setrlimit(RLIMIT_NOFILE, &files);
    }
    const auto& settings = impl.settings;
    error_code ec;
    const auto address = net::ip::make_address(settings.address, ec);
    if (ec) {
        return "cannot listen on " + settings.address + ": not an IP address";
    }
    const tcp::endpoint endpoint(address, static_cast<std::uint16_t>(settings.port));
    impl.acceptor.open(endpoint.protocol(), ec);
    if (!ec) {
        impl.acceptor.set_option(tcp::acceptor::reuse_address(true), ec);  // never SO_REUSEPORT: no silent sharing
        impl.acceptor.bind(endpoint, ec);
    }
    if (!ec) {
        impl.acceptor.listen(k_listen_backlog, ec);
    }
    if (!ec) {
        impl.acceptor.non_blocking(true, ec);
    }
    if (ec) {
        return "cannot listen on " + settings.address + ":" + std::to_string(settings.port) + ": " + ec.message();
    }
    ::fcntl(impl.acceptor.native_handle(), F_SETFD, FD_CLOEXEC);
    impl.bound_port = impl.acceptor.local_endpoint().port();
    impl.started = true;
    net::post(impl.acceptor.get_executor(), [&impl] { impl.accept_next(); });
    impl.summarise_refusals();
    for (std::size_t i = 0; i < std::max<std::size_t>(1, settings.io_threads); ++i) {
        impl.io_threads.emplace_back([&impl] {
            // The edge for exceptions (out of memory, say): log, and keep serving.
            for (;;) {
                try {
                    impl.io.run();
                    return;
                } catch (const std::exception& error) {
                    impl.write_log("{\"time\":" + json_quote(log_timestamp(std::chrono::system_clock::now())) +
                                   ",\"event\":\"internal_error\",\"error\":" + json_quote(error.what()) + "}");
                }
            }
        });
    }
    return std::nullopt;
}

int Server::port() const {
    return m_impl->bound_port;
}

void Server::stop(std::chrono::milliseconds grace) {
    Impl& impl = *m_impl;
    std::lock_guard lock(impl.stop_mutex);
    if (impl.stopped || !impl.started) {
        impl.stopped = true;
        return;
    }
    impl.stopped = true;
    const auto grace_end = Clock::now() + grace;
    impl.draining = true;
    impl.admission.drain();
    std::promise<void> closed;
    net::post(impl.acceptor.get_executor(), [&impl, &closed] {
        error_code ignored;
        impl.acceptor.close(ignored);
        closed.set_value();
    });
    closed.get_future().wait();
    impl.each_session([](Session& session) { session.drain(); });
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
    impl.each_session([](Session& session) { session.abort(); });
    impl.runs.join();
    impl.probes.join();
    net::post(impl.io, [&impl] { impl.summary_timer.cancel(); });
    while (impl.connections.load() > 0 && Clock::now() < write_end + std::chrono::milliseconds(1000)) {
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    impl.io.stop();
    for (auto& thread : impl.io_threads) {
        thread.join();
    }
}

std::size_t Server::killed_runs() const {
    return m_impl->killed.load();
}

}  // namespace safepy::server

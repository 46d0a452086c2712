// The connection layer under httplib: socket I/O with whole-request deadlines
// and byte budgets, and a bounded pool of connection threads. No HTTP here
// beyond what httplib's Stream and TaskQueue interfaces ask for.
#pragma once

#include <httplib.h>

#include <array>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace safepy::server {

// Why the connection being started on this thread is to be answered with a
// canned 503 instead of being served.
enum class Refusal { none, busy, stopping };

// The refusal for the connection that ConnectionQueue is starting on this thread.
Refusal current_refusal();

// A level-triggered wake-up for every thread that polls fd(): raised once, never cleared.
class Signal {
public:
    Signal();
    ~Signal();
    Signal(const Signal&) = delete;
    Signal& operator=(const Signal&) = delete;

    // Wakes every poll on fd(), now and later.
    void raise() const;

    // The descriptor to poll for POLLIN.
    int fd() const { return m_fd; }

private:
    int m_fd;
};

// The socket of one connection, kept across its keep-alive requests. Every
// wait has a deadline for the whole request or response rather than per
// recv(), so a client sending one byte at a time cannot hold a thread, and a
// byte budget caps the headers and the body before httplib buffers them.
class ConnectionStream final : public httplib::Stream {
public:
    // Serves `sock`; every wait ends when `abort` is raised, idle waits also on `drain`.
    ConnectionStream(int sock, const Signal& drain, const Signal& abort, std::chrono::milliseconds write_timeout);

    using httplib::Stream::write;

    // httplib's Stream interface.
    bool is_readable() const override;
    bool is_writable() const override;
    ssize_t read(char* ptr, size_t size) override;
    ssize_t write(const char* ptr, size_t size) override;
    void get_remote_ip_and_port(std::string& ip, int& port) const override;
    void get_local_ip_and_port(std::string& ip, int& port) const override;
    socket_t socket() const override { return m_sock; }

    // Waits for the first byte of the next request; false on end of stream,
    // after `idle` or when the server drains.
    bool wait_for_request(std::chrono::milliseconds idle);

    // A new request: its line and headers must arrive within `read_timeout` and `header_bytes`.
    void begin_request(std::chrono::milliseconds read_timeout, std::size_t header_bytes);

    // After the headers: the body may be exactly `bytes` long, within the same read deadline.
    void allow_body(std::size_t bytes);

    // Closes the socket; with `linger`, first reads and discards what the
    // client still sends for a moment, so that closing with unread data does
    // not reset the connection before the client has read our response.
    void close_socket(bool linger);

private:
    bool poll_socket(short events, int timeout_ms) const;
    bool wait(short events, std::chrono::steady_clock::time_point deadline, bool until_drain) const;
    ssize_t receive(char* ptr, std::size_t size);
    void address_of(int (*query)(int, sockaddr*, socklen_t*), std::string& ip, int& port) const;

    int m_sock;
    const Signal& m_drain;
    const Signal& m_abort;
    std::chrono::milliseconds m_write_timeout;
    std::array<char, 4096> m_buffer{};
    std::size_t m_begin = 0;
    std::size_t m_end = 0;
    std::size_t m_budget = 0;
    std::chrono::steady_clock::time_point m_read_deadline;
    std::optional<std::chrono::steady_clock::time_point> m_write_deadline;
};

// httplib's thread pool with a bounded line: a connection that finds every
// thread busy and the line full is started at once on the accepting thread
// with current_refusal() == busy, to be answered 503 without being read,
// instead of waiting in an unbounded queue.
class ConnectionQueue final : public httplib::TaskQueue {
public:
    // `threads` serve connections; at most `max_waiting` more wait for one.
    ConnectionQueue(std::size_t threads, std::size_t max_waiting);

    // httplib's TaskQueue interface; after shutdown() begins, waiting
    // connections are started with current_refusal() == stopping.
    void enqueue(std::function<void()> job) override;
    void shutdown() override;

private:
    void work();

    const std::size_t m_max_waiting;
    std::mutex m_mutex;
    std::condition_variable m_changed;
    std::deque<std::function<void()>> m_jobs;
    std::vector<std::thread> m_threads;
    bool m_shutdown = false;
};

}  // namespace safepy::server

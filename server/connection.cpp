#include "connection.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>

namespace safepy::server {
namespace {

using Clock = std::chrono::steady_clock;

constexpr auto k_linger = std::chrono::milliseconds(1000);
constexpr std::size_t k_linger_bytes = 4u << 20;

thread_local Refusal t_refusal = Refusal::none;

void run_refused(const std::function<void()>& job, Refusal why) {
    t_refusal = why;
    job();
    t_refusal = Refusal::none;
}

}  // namespace

Refusal current_refusal() {
    return t_refusal;
}

Signal::Signal() : m_fd(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {}

Signal::~Signal() {
    if (m_fd >= 0) {
        close(m_fd);
    }
}

void Signal::raise() const {
    const std::uint64_t one = 1;
    [[maybe_unused]] const auto written = ::write(m_fd, &one, sizeof one);
}

ConnectionStream::ConnectionStream(int sock, const Signal& drain, const Signal& abort,
                                   std::chrono::milliseconds write_timeout)
    : m_sock(sock), m_drain(drain), m_abort(abort), m_write_timeout(write_timeout) {}

bool ConnectionStream::is_readable() const {
    return m_begin < m_end || poll_socket(POLLIN, 0);
}

bool ConnectionStream::is_writable() const {
    return poll_socket(POLLOUT, 0);
}

ssize_t ConnectionStream::read(char* ptr, size_t size) {
    if (m_budget == 0) {
        return -1;
    }
    size = std::min(size, m_budget);
    if (m_begin == m_end) {
        if (!wait(POLLIN, m_read_deadline, false)) {
            return -1;
        }
        if (size >= m_buffer.size()) {
            const ssize_t n = receive(ptr, size);
            m_budget -= n > 0 ? static_cast<std::size_t>(n) : 0;
            return n;
        }
        const ssize_t n = receive(m_buffer.data(), m_buffer.size());
        if (n <= 0) {
            return n;
        }
        m_begin = 0;
        m_end = static_cast<std::size_t>(n);
    }
    const std::size_t n = std::min(size, m_end - m_begin);
    std::memcpy(ptr, m_buffer.data() + m_begin, n);
    m_begin += n;
    m_budget -= n;
    return static_cast<ssize_t>(n);
}

ssize_t ConnectionStream::write(const char* ptr, size_t size) {
    if (!m_write_deadline) {
        m_write_deadline = Clock::now() + m_write_timeout;
    }
    for (;;) {
        if (!wait(POLLOUT, *m_write_deadline, false)) {
            return -1;
        }
        const ssize_t n = send(m_sock, ptr, size, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n >= 0 || (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK)) {
            return n;
        }
    }
}

void ConnectionStream::get_remote_ip_and_port(std::string& ip, int& port) const {
    address_of(getpeername, ip, port);
}

void ConnectionStream::get_local_ip_and_port(std::string& ip, int& port) const {
    address_of(getsockname, ip, port);
}

bool ConnectionStream::wait_for_request(std::chrono::milliseconds idle) {
    return m_begin < m_end || wait(POLLIN, Clock::now() + idle, true);
}

void ConnectionStream::begin_request(std::chrono::milliseconds read_timeout, std::size_t header_bytes) {
    m_read_deadline = Clock::now() + read_timeout;
    m_budget = header_bytes;
    m_write_deadline.reset();
}

void ConnectionStream::allow_body(std::size_t bytes) {
    m_budget = bytes;
    m_write_deadline.reset();  // a "100 Continue" may have started it
}

void ConnectionStream::close_socket(bool linger) {
    if (linger) {
        shutdown(m_sock, SHUT_WR);
        const auto deadline = Clock::now() + k_linger;
        std::array<char, 16384> discard;
        std::size_t discarded = 0;
        while (discarded < k_linger_bytes && wait(POLLIN, deadline, false)) {
            const ssize_t n = receive(discard.data(), discard.size());
            if (n <= 0) {
                break;
            }
            discarded += static_cast<std::size_t>(n);
        }
    }
    shutdown(m_sock, SHUT_RDWR);
    close(m_sock);
}

bool ConnectionStream::poll_socket(short events, int timeout_ms) const {
    pollfd fd{m_sock, events, 0};
    return ::poll(&fd, 1, timeout_ms) > 0;
}

// False on timeout, on abort, and with `until_drain` when the server starts draining.
bool ConnectionStream::wait(short events, Clock::time_point deadline, bool until_drain) const {
    for (;;) {
        const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now());
        if (left.count() <= 0) {
            return false;
        }
        std::array<pollfd, 3> fds{{{m_sock, events, 0}, {m_abort.fd(), POLLIN, 0}, {m_drain.fd(), POLLIN, 0}}};
        const int ready = ::poll(fds.data(), until_drain ? 3 : 2,
                                 static_cast<int>(std::min<std::int64_t>(left.count(), 60'000)));
        if (ready < 0 && errno != EINTR) {
            return false;
        }
        if (ready <= 0) {
            continue;
        }
        if (fds[1].revents || (until_drain && fds[2].revents)) {
            return false;
        }
        if (fds[0].revents) {
            return true;
        }
    }
}

ssize_t ConnectionStream::receive(char* ptr, std::size_t size) {
    ssize_t n;
    do {
        n = recv(m_sock, ptr, size, MSG_DONTWAIT);
    } while (n < 0 && errno == EINTR);
    return n;
}

void ConnectionStream::address_of(int (*query)(int, sockaddr*, socklen_t*), std::string& ip, int& port) const {
    sockaddr_storage address{};
    socklen_t length = sizeof address;
    ip.clear();
    port = 0;
    if (query(m_sock, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
        return;
    }
    char text[INET6_ADDRSTRLEN] = {};
    if (address.ss_family == AF_INET) {
        const auto* v4 = reinterpret_cast<const sockaddr_in*>(&address);
        inet_ntop(AF_INET, &v4->sin_addr, text, sizeof text);
        port = ntohs(v4->sin_port);
    } else if (address.ss_family == AF_INET6) {
        const auto* v6 = reinterpret_cast<const sockaddr_in6*>(&address);
        inet_ntop(AF_INET6, &v6->sin6_addr, text, sizeof text);
        port = ntohs(v6->sin6_port);
    }
    ip = text;
}

ConnectionQueue::ConnectionQueue(std::size_t threads, std::size_t max_waiting) : m_max_waiting(max_waiting) {
    for (std::size_t i = 0; i < threads; ++i) {
        m_threads.emplace_back([this] { work(); });
    }
}

void ConnectionQueue::enqueue(std::function<void()> job) {
    {
        std::lock_guard lock(m_mutex);
        if (!m_shutdown && m_jobs.size() < m_max_waiting) {
            m_jobs.push_back(std::move(job));
            m_changed.notify_one();
            return;
        }
    }
    run_refused(job, Refusal::busy);
}

void ConnectionQueue::shutdown() {
    {
        std::lock_guard lock(m_mutex);
        m_shutdown = true;
    }
    m_changed.notify_all();
    for (auto& thread : m_threads) {
        thread.join();
    }
}

void ConnectionQueue::work() {
    for (;;) {
        std::function<void()> job;
        bool stopping;
        {
            std::unique_lock lock(m_mutex);
            m_changed.wait(lock, [this] { return m_shutdown || !m_jobs.empty(); });
            if (m_jobs.empty()) {
                return;
            }
            job = std::move(m_jobs.front());
            m_jobs.pop_front();
            stopping = m_shutdown;
        }
        if (stopping) {
            run_refused(job, Refusal::stopping);
        } else {
            job();
        }
    }
}

}  // namespace safepy::server

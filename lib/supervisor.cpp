#include "supervisor.hpp"

#include "cgroup.hpp"

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <unistd.h>

namespace safepy {

std::optional<std::uint64_t> RunProcess::cpu_microseconds() const {
    if (!m_cgroup) {
        return std::nullopt;
    }
    return m_cgroup->cpu_microseconds();
}

void RunProcess::kill_all() {
    if (m_cgroup) {
        m_cgroup->kill_all();
    }
}
namespace {

using Clock = std::chrono::steady_clock;

// How long the pipes may stay open after the process exited; whatever still
// holds them then is killed.
constexpr auto k_drain_grace = std::chrono::milliseconds(500);
// How often the run's CPU time is read.
constexpr auto k_cpu_tick = std::chrono::milliseconds(100);

class Drain {
public:
    Drain(std::string& sink, std::uint64_t cap, bool& over) : m_sink(sink), m_cap(cap), m_over(over) {}

    // Reads what is available, at most 1 MiB so that the other sources still
    // get their turn during a flood; false at end of file or on error.
    bool read_from(int fd) {
        char buffer[1 << 16];
        for (int reads = 0; reads < 16; ++reads) {
            const ssize_t n = read(fd, buffer, sizeof buffer);
            if (n > 0) {
                const auto room = m_cap > m_sink.size() ? m_cap - m_sink.size() : 0;
                const auto take = std::min<std::uint64_t>(room, static_cast<std::uint64_t>(n));
                m_sink.append(buffer, static_cast<std::size_t>(take));
                if (take < static_cast<std::uint64_t>(n)) {
                    m_over = true;
                }
                continue;
            }
            if (n < 0 && errno == EINTR) {
                continue;
            }
            return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
        }
        return true;
    }

private:
    std::string& m_sink;
    std::uint64_t m_cap;
    bool& m_over;
};

std::chrono::milliseconds to_ms(const timeval& tv) {
    return std::chrono::milliseconds(tv.tv_sec * 1000 + tv.tv_usec / 1000);
}

// A timerfd that fires at `deadline` (steady_clock is CLOCK_MONOTONIC).
Fd deadline_timer(Clock::time_point deadline) {
    Fd timer(timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK));
    if (!timer) {
        return timer;
    }
    const auto since_epoch = std::chrono::duration_cast<std::chrono::nanoseconds>(deadline.time_since_epoch());
    itimerspec when{};
    when.it_value.tv_sec = static_cast<time_t>(std::max<std::int64_t>(since_epoch.count(), 1) / 1000000000);
    when.it_value.tv_nsec = static_cast<long>(std::max<std::int64_t>(since_epoch.count(), 1) % 1000000000);
    if (timerfd_settime(timer.get(), TFD_TIMER_ABSTIME, &when, nullptr) != 0) {
        return Fd();
    }
    return timer;
}

bool readable(int fd) {
    pollfd item{fd, POLLIN, 0};
    return poll(&item, 1, 0) > 0;
}

class Supervisor {
public:
    Supervisor(RunProcess& process, RunChannels channels, const Limits& limits, int cancel_fd)
        : m_process(process), m_channels(std::move(channels)), m_limits(limits), m_cancel_fd(cancel_fd) {}

    SpawnResult run() {
        if (!m_channels.pidfd) {
            m_process.kill();
            m_result.spawn_error = "the run has no pidfd: its exit could not be watched";
            return std::move(m_result);
        }
        m_timer = deadline_timer(m_channels.started + m_limits.wall);
        if (!m_timer) {
            m_process.kill();
            m_process.kill_all();
            reap();
            m_result.spawn_error = std::string("cannot arm the run's deadline: ") + std::strerror(errno);
            return std::move(m_result);
        }
        loop();
        if (!m_exited) {
            kill();
        }
        reap();
        m_process.kill_all();  // background processes that outlived the run
        m_result.cause = m_cause.value_or(Cause::exited);
        return std::move(m_result);
    }

private:
    // The first cause wins; later ones are consequences (a killed process
    // exits, a timed-out flood overflows) and change nothing.
    void record(Cause cause) {
        if (!m_cause) {
            m_cause = cause;
        }
    }

    void end_for(Cause cause) {
        record(cause);
        kill();
    }

    void kill() {
        if (!m_killed) {
            m_killed = true;
            m_process.kill();
            m_process.kill_all();
        }
    }

    void loop() {
        bool log_over = false;
        Drain drains[] = {Drain(m_result.stdout_bytes, m_limits.stdout_bytes, m_result.stdout_over),
                          Drain(m_result.stderr_bytes, m_limits.stderr_bytes, m_result.stderr_over),
                          // Room for the runner's marker and record header
                          // (see runner.py) besides the result itself, which
                          // conclude() checks against result_bytes.
                          Drain(m_result.result_bytes, result_channel_bytes(m_limits), m_result.result_over),
                          Drain(m_result.jail_log, 64 * 1024, log_over)};
        Fd* sources[] = {&m_channels.out, &m_channels.err, &m_channels.result, &m_channels.log};
        constexpr Cause k_overflow[] = {Cause::stdout_limit, Cause::stderr_limit, Cause::result_limit};
        for (Fd* fd : sources) {
            if (*fd) {
                fcntl(fd->get(), F_SETFL, O_NONBLOCK);
            }
        }
        const auto cpu_limit_us = static_cast<std::uint64_t>(m_limits.cpu.count()) * 1000;
        enum Source { k_out, k_err, k_result, k_log, k_exit, k_deadline, k_cancel };
        std::optional<Clock::time_point> exited_at;
        // Read each tick, not on every wake-up: output wakes the loop often.
        auto next_cpu_read = Clock::now() + k_cpu_tick;

        for (;;) {
            std::array<pollfd, 7> fds{};
            std::array<int, 7> which{};
            nfds_t count = 0;
            auto watch = [&](int fd, int source) {
                fds[count] = {fd, POLLIN, 0};
                which[count++] = source;
            };
            for (int i = k_out; i <= k_log; ++i) {
                if (*sources[i]) {
                    watch(sources[i]->get(), i);
                }
            }
            const bool running = !m_exited && !m_killed;
            if (!m_exited) {
                watch(m_channels.pidfd.get(), k_exit);
            }
            if (running) {
                watch(m_timer.get(), k_deadline);
                if (m_cancel_fd >= 0) {
                    watch(m_cancel_fd, k_cancel);
                }
            }
            if (m_exited && count == 0) {
                return;
            }
            auto wait = k_cpu_tick;
            if (!m_exited && !m_killed && cpu_limit_us > 0) {
                const auto to_read = std::chrono::ceil<std::chrono::milliseconds>(next_cpu_read - Clock::now());
                wait = std::clamp(to_read, std::chrono::milliseconds(0), k_cpu_tick);
            }
            if (exited_at) {
                const auto left = k_drain_grace - (Clock::now() - *exited_at);
                if (left <= Clock::duration::zero()) {
                    kill();  // something the run started still holds a pipe
                    return;
                }
                wait = std::min(wait, std::chrono::ceil<std::chrono::milliseconds>(left));
            }
            const int ready = poll(fds.data(), count, static_cast<int>(wait.count()));
            if (ready < 0 && errno != EINTR) {
                end_for(Cause::lost);
                return;
            }
            // In the order the evidence arrives: output first (it was written
            // before whatever else this poll reports), then the clocks, the
            // cancel, and last the exit.
            for (nfds_t i = 0; i < count && ready > 0; ++i) {
                const int source = which[i];
                if (!fds[i].revents || source > k_log) {
                    continue;
                }
                if (!drains[source].read_from(sources[source]->get())) {
                    sources[source]->reset();
                }
            }
            const bool* overs[] = {&m_result.stdout_over, &m_result.stderr_over, &m_result.result_over};
            for (int i = 0; i < 3; ++i) {
                if (*overs[i]) {
                    end_for(k_overflow[i]);
                }
            }
            if (running && readable(m_timer.get())) {
                end_for(Cause::wall_timeout);
            }
            if (running && m_cancel_fd >= 0 && readable(m_cancel_fd)) {
                end_for(Cause::cancelled);
            }
            if (!m_exited && readable(m_channels.pidfd.get())) {
                m_exited = true;
                exited_at = Clock::now();
            }
            if (!m_exited && !m_killed && cpu_limit_us > 0 && Clock::now() >= next_cpu_read) {
                next_cpu_read = Clock::now() + k_cpu_tick;
                if (auto used = m_process.cpu_microseconds(); used && *used >= cpu_limit_us) {
                    end_for(Cause::cpu_timeout);
                }
            }
        }
    }

    void reap() {
        rusage usage{};
        int status = 0;
        if (!m_process.reap(status, usage)) {
            m_result.spawn_error = "the run's exit status could not be collected";
        }
        m_result.wait_status = status;
        m_result.wall = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - m_channels.started);
        m_result.cpu = to_ms(usage.ru_utime) + to_ms(usage.ru_stime);
        m_result.max_rss_bytes = static_cast<std::uint64_t>(usage.ru_maxrss) * 1024;
    }

    RunProcess& m_process;
    RunChannels m_channels;
    const Limits& m_limits;
    int m_cancel_fd;
    Fd m_timer;
    SpawnResult m_result;
    std::optional<Cause> m_cause;
    bool m_exited = false;
    bool m_killed = false;
};

}  // namespace

std::string_view cause_name(Cause cause) {
    switch (cause) {
    case Cause::exited: return "exited";
    case Cause::stdout_limit: return "stdout_limit";
    case Cause::stderr_limit: return "stderr_limit";
    case Cause::result_limit: return "result_limit";
    case Cause::wall_timeout: return "wall_timeout";
    case Cause::cpu_timeout: return "cpu_timeout";
    case Cause::cancelled: return "cancelled";
    case Cause::lost: return "lost";
    }
    return "unknown";
}

CancelSignal::CancelSignal() : m_event(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {}

void CancelSignal::fire() const {
    const std::uint64_t one = 1;
    [[maybe_unused]] auto ignored = write(m_event.get(), &one, sizeof one);
}

CancelBoard::Entry::Entry(CancelBoard& board, const CancelSignal& signal) : m_board(board), m_signal(signal) {
    std::lock_guard lock(m_board.m_mutex);
    m_board.m_signals.push_back(&m_signal);
}

CancelBoard::Entry::~Entry() {
    std::lock_guard lock(m_board.m_mutex);
    std::erase(m_board.m_signals, &m_signal);
}

void CancelBoard::fire_all() {
    std::lock_guard lock(m_mutex);
    for (const CancelSignal* signal : m_signals) {
        signal->fire();
    }
}

SpawnResult supervise(RunProcess& process, RunChannels channels, const Limits& limits, int cancel_fd) {
    return Supervisor(process, std::move(channels), limits, cancel_fd).run();
}

}  // namespace safepy

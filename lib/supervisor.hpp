// Supervising one run: one owner for its process (a pidfd), its pipes, a
// cancel eventfd and a timerfd for the wall-clock deadline, polled in one
// loop. The first cause that ends the run is recorded where it is observed
// and never overwritten (sandbox2's final status and reason), and feeds
// classify.
#pragma once

#include "fd.hpp"
#include "safepy/safepy.hpp"

#include <chrono>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <sys/resource.h>
#include <vector>

namespace safepy {

class RunCgroup;

// Bytes of the result channel beyond the result itself: the runner's "S"
// marker and its record header, or an error record's message.
inline constexpr std::uint64_t k_channel_overhead = 64 * 1024;

// The most the result channel may carry: the result, the files returned from
// /tmp/out with their record headers and paths (or reasons), and the overhead.
inline std::uint64_t result_channel_bytes(const Limits& limits) {
    constexpr std::uint64_t k_file_record_bytes = 14 + 1024 + 4096;
    return limits.result_bytes + k_channel_overhead + limits.output_files_bytes +
           static_cast<std::uint64_t>(limits.output_files) * k_file_record_bytes;
}

// Why a run ended: the first of these the supervisor saw.
enum class Cause {
    exited,        // the process ended by itself (and nothing below came first)
    stdout_limit,  // more stdout than the limit: killed
    stderr_limit,
    result_limit,  // more on the result channel than the limit allows
    wall_timeout,  // the deadline's timer fired
    cpu_timeout,   // the run's accounted CPU time passed the limit
    cancelled,     // the cancel eventfd was signalled (Sandbox::cancel_all)
    lost,          // the supervisor could not watch the run (poll failed)
};

// "exited", "stdout_limit", ...
std::string_view cause_name(Cause cause);

// The process side of a run: how to end it and how it ended. A cold run's
// jail process (spawn.hpp) or a warm child (warm_pool.cpp).
class RunProcess {
public:
    virtual ~RunProcess() = default;
    virtual void kill() = 0;  // ends the process and everything it started
    // After exit: the raw wait status, CPU time and peak RSS; false if unknown.
    virtual bool reap(int& status, rusage& usage) = 0;
    // CPU time of every process of the run so far, when accounted (a cgroup).
    virtual std::optional<std::uint64_t> cpu_microseconds() const;
    virtual void kill_all();  // every process of the run; nothing without a cgroup

protected:
    const RunCgroup* m_cgroup = nullptr;  // the run's cgroup, not owned; may be absent
};

// The descriptors a supervisor owns for one run.
struct RunChannels {
    Fd pidfd;  // readable when the process exits; required
    Fd out, err, result, log;
    std::chrono::steady_clock::time_point started;  // the wall clock counts from here
};

struct SpawnResult {
    std::string spawn_error;  // non-empty: nothing ran, or the run could not be watched
    Cause cause = Cause::exited;
    int wait_status = 0;  // raw status of the run's process
    std::string stdout_bytes;
    std::string stderr_bytes;
    std::string result_bytes;
    std::string jail_log;
    bool stdout_over = false;  // truncated (whether or not that ended the run)
    bool stderr_over = false;
    bool result_over = false;
    std::chrono::milliseconds wall{0};
    std::chrono::milliseconds cpu{0};
    std::uint64_t max_rss_bytes = 0;
};

// An eventfd a run's supervisor polls; fire() from any thread cancels it.
class CancelSignal {
public:
    CancelSignal();
    bool valid() const { return static_cast<bool>(m_event); }
    int fd() const { return m_event.get(); }
    void fire() const;

private:
    Fd m_event;
};

// The cancel signals of the runs in progress, so that one call cancels all.
class CancelBoard {
public:
    // Registers `signal` for as long as the entry lives.
    class Entry {
    public:
        Entry(CancelBoard& board, const CancelSignal& signal);
        ~Entry();
        Entry(const Entry&) = delete;
        Entry& operator=(const Entry&) = delete;

    private:
        CancelBoard& m_board;
        const CancelSignal& m_signal;
    };

    void fire_all();  // every run registered now

private:
    std::mutex m_mutex;
    std::vector<const CancelSignal*> m_signals;
};

// Reads every pipe of the run until its process exits or is killed (for a
// limit, the deadline or a cancel), then reaps it. cancel_fd may be -1.
SpawnResult supervise(RunProcess& process, RunChannels channels, const Limits& limits, int cancel_fd);

}  // namespace safepy

// Bounded concurrency for runs: a fixed number of execution slots and a
// bounded first-come-first-served line of requests waiting for one. Nothing
// waits without bound: a full line refuses at once, a long wait gives up.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <mutex>

namespace safepy {

class Admission {
public:
    enum class Result {
        admitted,    // the caller holds a slot and must call leave()
        queue_full,  // every slot busy and the line full: refused without waiting
        timed_out,   // waited max_wait in line without getting a slot
        draining,    // shutting down: no new runs
    };

    // `slots` > 0 runs at once, at most `queue_length` waiting, each for at most `max_wait`.
    Admission(std::size_t slots, std::size_t queue_length, std::chrono::milliseconds max_wait);

    // Takes a slot, queueing in arrival order when none is free; `waited` is the time spent in line.
    Result enter(std::chrono::milliseconds& waited);

    // Frees a slot that enter() gave.
    void leave();

    // Refuses every later enter() and sends everyone in line away with `draining`.
    void drain();

    // Waits until no slot is held or `deadline` passes; true when none is held.
    bool wait_idle(std::chrono::steady_clock::time_point deadline);

    // Slots held now.
    std::size_t running() const;

    // Requests in line now.
    std::size_t waiting() const;

    // The configured capacity.
    std::size_t slots() const { return m_slots; }
    std::size_t queue_length() const { return m_queue_length; }

private:
    // One request in line; leave() hands a freed slot straight to the first
    // one and wakes only it.
    struct Waiter {
        std::condition_variable woken;
        bool admitted = false;
    };

    // Gives free slots to the front of the line. Under m_mutex.
    void hand_over();

    const std::size_t m_slots;
    const std::size_t m_queue_length;
    const std::chrono::milliseconds m_max_wait;
    mutable std::mutex m_mutex;
    std::condition_variable m_idle;  // m_running fell to 0, or draining began
    std::size_t m_running = 0;
    std::deque<Waiter*> m_line;  // oldest first
    bool m_draining = false;
};

}  // namespace safepy

#include "safepy/admission.hpp"

#include <algorithm>

namespace safepy {

Admission::Admission(std::size_t slots, std::size_t queue_length, std::chrono::milliseconds max_wait)
    : m_slots(std::max<std::size_t>(slots, 1)), m_queue_length(queue_length), m_max_wait(max_wait) {}

bool Admission::can_take(std::uint64_t ticket) const {
    return m_running < m_slots && !m_line.empty() && m_line.front() == ticket;
}

Admission::Result Admission::enter(std::chrono::milliseconds& waited) {
    using Clock = std::chrono::steady_clock;
    const auto started = Clock::now();
    waited = std::chrono::milliseconds(0);
    std::unique_lock lock(m_mutex);
    if (m_draining) {
        return Result::draining;
    }
    if (m_running < m_slots && m_line.empty()) {
        ++m_running;
        return Result::admitted;
    }
    if (m_line.size() >= m_queue_length) {
        return Result::queue_full;
    }
    const std::uint64_t ticket = m_next_ticket++;
    m_line.push_back(ticket);
    const auto deadline = started + m_max_wait;
    auto result = Result::timed_out;
    for (;;) {
        if (m_draining) {
            result = Result::draining;
            break;
        }
        if (can_take(ticket)) {
            result = Result::admitted;
            ++m_running;
            break;
        }
        if (m_changed.wait_until(lock, deadline) == std::cv_status::timeout && !can_take(ticket)) {
            break;
        }
    }
    m_line.erase(std::find(m_line.begin(), m_line.end(), ticket));
    // The next in line may now be at the front with a free slot.
    m_changed.notify_all();
    waited = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started);
    return result;
}

void Admission::leave() {
    {
        std::lock_guard lock(m_mutex);
        --m_running;
    }
    m_changed.notify_all();
}

void Admission::drain() {
    {
        std::lock_guard lock(m_mutex);
        m_draining = true;
    }
    m_changed.notify_all();
}

bool Admission::wait_idle(std::chrono::steady_clock::time_point deadline) {
    std::unique_lock lock(m_mutex);
    return m_changed.wait_until(lock, deadline, [this] { return m_running == 0; });
}

std::size_t Admission::running() const {
    std::lock_guard lock(m_mutex);
    return m_running;
}

std::size_t Admission::waiting() const {
    std::lock_guard lock(m_mutex);
    return m_line.size();
}

}  // namespace safepy

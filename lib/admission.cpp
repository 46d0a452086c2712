#include "safepy/admission.hpp"

#include <algorithm>

namespace safepy {

Admission::Admission(std::size_t slots, std::size_t queue_length, std::chrono::milliseconds max_wait)
    : m_slots(std::max<std::size_t>(slots, 1)), m_queue_length(queue_length), m_max_wait(max_wait) {}

void Admission::hand_over() {
    while (m_running < m_slots && !m_line.empty()) {
        Waiter* first = m_line.front();
        m_line.pop_front();
        first->admitted = true;
        ++m_running;
        first->woken.notify_one();
    }
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
    Waiter self;
    m_line.push_back(&self);
    const auto deadline = started + m_max_wait;
    while (!self.admitted && !m_draining) {
        if (self.woken.wait_until(lock, deadline) == std::cv_status::timeout) {
            break;
        }
    }
    waited = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started);
    if (self.admitted) {
        return Result::admitted;  // hand_over took it out of the line
    }
    m_line.erase(std::find(m_line.begin(), m_line.end(), &self));
    return m_draining ? Result::draining : Result::timed_out;
}

void Admission::leave() {
    std::lock_guard lock(m_mutex);
    --m_running;
    if (!m_draining) {
        hand_over();
    }
    if (m_running == 0) {
        m_idle.notify_all();
    }
}

void Admission::drain() {
    std::lock_guard lock(m_mutex);
    m_draining = true;
    for (Waiter* waiter : m_line) {
        waiter->woken.notify_one();
    }
    m_idle.notify_all();
}

bool Admission::wait_idle(std::chrono::steady_clock::time_point deadline) {
    std::unique_lock lock(m_mutex);
    return m_idle.wait_until(lock, deadline, [this] { return m_running == 0; });
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

#include "safepy/admission.hpp"
#include "safepy/metrics.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

namespace safepy::server {
namespace {

using namespace std::chrono_literals;

TEST(Admission, AdmitsUpToTheSlotsThenQueuesThenRefuses) {
    Admission admission(2, 1, 5s);
    std::chrono::milliseconds waited{};
    EXPECT_EQ(admission.enter(waited), Admission::Result::admitted);
    EXPECT_EQ(admission.enter(waited), Admission::Result::admitted);
    EXPECT_EQ(admission.running(), 2u);

    std::atomic<bool> queued_done{false};
    std::thread queued([&] {
        std::chrono::milliseconds in_line{};
        EXPECT_EQ(admission.enter(in_line), Admission::Result::admitted);
        EXPECT_GE(in_line, 40ms);
        queued_done = true;
        admission.leave();
    });
    while (admission.waiting() == 0) {
        std::this_thread::sleep_for(1ms);
    }
    EXPECT_EQ(admission.enter(waited), Admission::Result::queue_full);
    std::this_thread::sleep_for(50ms);
    EXPECT_FALSE(queued_done);
    admission.leave();
    queued.join();
    EXPECT_TRUE(queued_done);
    admission.leave();
    EXPECT_EQ(admission.running(), 0u);
    EXPECT_EQ(admission.waiting(), 0u);
}

TEST(Admission, GivesUpAfterTheLongestWait) {
    Admission admission(1, 4, 100ms);
    std::chrono::milliseconds waited{};
    ASSERT_EQ(admission.enter(waited), Admission::Result::admitted);
    EXPECT_EQ(admission.enter(waited), Admission::Result::timed_out);
    EXPECT_GE(waited, 100ms);
    EXPECT_LT(waited, 2s);
    EXPECT_EQ(admission.waiting(), 0u);
    admission.leave();
}

TEST(Admission, ServesTheLineInArrivalOrder) {
    Admission admission(1, 8, 10s);
    std::chrono::milliseconds waited{};
    ASSERT_EQ(admission.enter(waited), Admission::Result::admitted);
    std::mutex order_mutex;
    std::vector<int> order;
    std::vector<std::thread> waiters;
    for (int i = 0; i < 5; ++i) {
        waiters.emplace_back([&, i] {
            std::chrono::milliseconds in_line{};
            ASSERT_EQ(admission.enter(in_line), Admission::Result::admitted);
            {
                std::lock_guard lock(order_mutex);
                order.push_back(i);
            }
            admission.leave();
        });
        while (admission.waiting() != static_cast<std::size_t>(i + 1)) {
            std::this_thread::sleep_for(1ms);
        }
    }
    admission.leave();
    for (auto& waiter : waiters) {
        waiter.join();
    }
    EXPECT_EQ(order, (std::vector<int>{0, 1, 2, 3, 4}));
}

TEST(Admission, DrainingSendsTheLineAwayAndWaitsForRuns) {
    Admission admission(1, 4, 10s);
    std::chrono::milliseconds waited{};
    ASSERT_EQ(admission.enter(waited), Admission::Result::admitted);
    std::thread queued([&] {
        std::chrono::milliseconds in_line{};
        EXPECT_EQ(admission.enter(in_line), Admission::Result::draining);
    });
    while (admission.waiting() == 0) {
        std::this_thread::sleep_for(1ms);
    }
    admission.drain();
    queued.join();
    EXPECT_EQ(admission.enter(waited), Admission::Result::draining);
    EXPECT_FALSE(admission.wait_idle(std::chrono::steady_clock::now() + 20ms));
    std::thread finisher([&] {
        std::this_thread::sleep_for(50ms);
        admission.leave();
    });
    EXPECT_TRUE(admission.wait_idle(std::chrono::steady_clock::now() + 5s));
    finisher.join();
}

TEST(Metrics, RendersCountersHistogramsAndGauges) {
    Metrics metrics;
    metrics.count_response(200);
    metrics.count_response(200);
    metrics.count_response(429);
    metrics.count_execution(Status::ok);
    metrics.count_execution(Status::timeout);
    metrics.observe_execute(30ms, 0ms);
    metrics.observe_execute(2s, 1500ms);
    Gauges gauges;
    gauges.running = 1;
    gauges.waiting = 3;
    gauges.slots = 2;
    gauges.queue_length = 32;
    gauges.connections = 5;
    const std::string text = metrics.render(gauges);
    for (const char* line : {
             "# TYPE safepy_http_requests_total counter\n",
             "safepy_http_requests_total{code=\"200\"} 2\n",
             "safepy_http_requests_total{code=\"429\"} 1\n",
             "safepy_executions_total{status=\"ok\"} 1\n",
             "safepy_executions_total{status=\"timeout\"} 1\n",
             "safepy_executions_total{status=\"memory_limit\"} 0\n",
             "# TYPE safepy_execute_duration_seconds histogram\n",
             "safepy_execute_duration_seconds_bucket{le=\"0.025\"} 0\n",
             "safepy_execute_duration_seconds_bucket{le=\"0.05\"} 1\n",
             "safepy_execute_duration_seconds_bucket{le=\"2.5\"} 2\n",
             "safepy_execute_duration_seconds_bucket{le=\"+Inf\"} 2\n",
             "safepy_execute_duration_seconds_sum 2.03\n",
             "safepy_execute_duration_seconds_count 2\n",
             "safepy_queue_wait_seconds_bucket{le=\"0.001\"} 1\n",
             "safepy_queue_wait_seconds_count 2\n",
             "safepy_executions_in_flight 1\n",
             "safepy_executions_queued 3\n",
             "safepy_execution_slots 2\n",
             "safepy_queue_capacity 32\n",
             "safepy_connections_open 5\n",
             "safepy_connections_refused_total 0\n",
         }) {
        EXPECT_NE(text.find(line), std::string::npos) << line << "\nin:\n" << text;
    }
}

}  // namespace
}  // namespace safepy::server

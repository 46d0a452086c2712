// The run supervisor with /bin/sh children, no jail: the first cause of the
// end is kept, the deadline and cancel end a run, the caps are enforced.
#include "spawn.hpp"
#include "supervisor.hpp"

#include <gtest/gtest.h>

#include <csignal>
#include <sys/wait.h>
#include <thread>

namespace safepy {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

Limits small_limits() {
    Limits limits;
    limits.wall = 5000ms;
    limits.cpu = 5000ms;
    limits.stdout_bytes = 1000;
    limits.stderr_bytes = 1000;
    limits.result_bytes = 10;
    return limits;
}

// A plain process (no cgroup) whose CPU clock the test sets.
class ShellProcess final : public RunProcess {
public:
    explicit ShellProcess(JailProcess inner) : m_inner(inner) {}
    void kill() override { m_inner.kill(); }
    bool reap(int& status, rusage& usage) override { return m_inner.reap(status, usage); }
    std::optional<std::uint64_t> cpu_microseconds() const override { return m_cpu_us; }
    void kill_all() override { ++m_kill_alls; }

    std::optional<std::uint64_t> m_cpu_us;
    int m_kill_alls = 0;

private:
    JailProcess m_inner;
};

struct ShellRun {
    SpawnResult result;
    std::chrono::milliseconds elapsed{0};
};

ShellRun run_shell(const std::string& command, const Limits& limits, int cancel_fd = -1,
              std::optional<std::uint64_t> cpu_us = std::nullopt) {
    SpawnSpec spec;
    spec.argv = {"/bin/sh", "-c", command};
    spec.environment = {"PATH=/usr/bin:/bin"};
    spec.limits = limits;
    spec.limits.cpu = 60000ms;  // the rlimit must not be what ends these runs
    std::string error;
    Jail jail = start_jail(spec, error);
    EXPECT_GT(jail.process.pid(), 0) << error;
    ShellProcess process(jail.process);
    process.m_cpu_us = cpu_us;
    const auto started = Clock::now();
    ShellRun run;
    run.result = supervise(process, std::move(jail.channels), limits, cancel_fd);
    run.elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started);
    EXPECT_GE(process.m_kill_alls, 1);  // the rest of the run is always ended
    return run;
}

TEST(Supervisor, AnExitIsTheCauseWhenNothingCameFirst) {
    const ShellRun run = run_shell("echo hello; echo oops >&2; printf R >&3; exit 3", small_limits());
    EXPECT_EQ(run.result.spawn_error, "");
    EXPECT_EQ(run.result.cause, Cause::exited) << cause_name(run.result.cause);
    EXPECT_EQ(run.result.stdout_bytes, "hello\n");
    EXPECT_EQ(run.result.stderr_bytes, "oops\n");
    EXPECT_EQ(run.result.result_bytes, "R");
    ASSERT_TRUE(WIFEXITED(run.result.wait_status));
    EXPECT_EQ(WEXITSTATUS(run.result.wait_status), 3);
}

TEST(Supervisor, TheDeadlineEndsARunAndItsExitDoesNotOverwriteIt) {
    Limits limits = small_limits();
    limits.wall = 300ms;
    const ShellRun run = run_shell("sleep 30", limits);
    EXPECT_EQ(run.result.cause, Cause::wall_timeout) << cause_name(run.result.cause);
    // The process exited after the kill: a consequence, not the cause.
    ASSERT_TRUE(WIFSIGNALED(run.result.wait_status));
    EXPECT_EQ(WTERMSIG(run.result.wait_status), SIGKILL);
    EXPECT_GE(run.result.wall, 300ms);  // the wall clock counts from the start of the process
    EXPECT_LT(run.elapsed, 5000ms);
}

TEST(Supervisor, AnOutputCapComesBeforeALaterDeadline) {
    Limits limits = small_limits();
    limits.wall = 3000ms;
    const ShellRun run = run_shell("head -c 100000 /dev/zero; sleep 30", limits);
    EXPECT_EQ(run.result.cause, Cause::stdout_limit) << cause_name(run.result.cause);
    EXPECT_TRUE(run.result.stdout_over);
    EXPECT_EQ(run.result.stdout_bytes.size(), 1000u);
    EXPECT_LT(run.elapsed, 3000ms);  // killed for the cap, not left to time out
}

TEST(Supervisor, AnOverflowAfterATimeoutDoesNotOverwriteIt) {
    Limits limits = small_limits();
    limits.wall = 300ms;
    // The writer escapes the process group, so the timeout's kill misses it
    // and it overflows stdout afterwards, while the pipes drain.
    const ShellRun run = run_shell("setsid sh -c 'sleep 0.5; head -c 100000 /dev/zero' & sleep 30", limits);
    EXPECT_EQ(run.result.cause, Cause::wall_timeout) << cause_name(run.result.cause);
    EXPECT_TRUE(run.result.stdout_over);  // it did overflow, later
}

TEST(Supervisor, EachCapHasItsOwnCause) {
    EXPECT_EQ(run_shell("head -c 100000 /dev/zero >&2; sleep 30", small_limits()).result.cause, Cause::stderr_limit);
    // The result channel allows the runner's overhead and the files from
    // /tmp/out on top of result_bytes.
    Limits limits = small_limits();
    limits.output_files = 1;
    limits.output_files_bytes = 1000;
    const std::string over = std::to_string(result_channel_bytes(limits) + 1);
    EXPECT_EQ(run_shell("head -c " + over + " /dev/zero >&3; sleep 30", limits).result.cause, Cause::result_limit);
}

TEST(Supervisor, ACancelEndsARunInProgress) {
    const CancelSignal cancel;
    ASSERT_TRUE(cancel.valid());
    std::thread canceller([&cancel] {
        std::this_thread::sleep_for(200ms);
        cancel.fire();
    });
    const ShellRun run = run_shell("sleep 30", small_limits(), cancel.fd());
    canceller.join();
    EXPECT_EQ(run.result.cause, Cause::cancelled) << cause_name(run.result.cause);
    EXPECT_GE(run.elapsed, 100ms);  // the canceller's clock started before the shell's
    EXPECT_LT(run.elapsed, 5000ms);
}

TEST(Supervisor, ACancelBoardReachesEveryRegisteredRunAndNoLaterOne) {
    CancelBoard board;
    const CancelSignal early;
    {
        const CancelBoard::Entry entry(board, early);
        board.fire_all();
    }
    const CancelSignal late;
    const CancelBoard::Entry entry(board, late);
    EXPECT_EQ(run_shell("sleep 30", small_limits(), early.fd()).result.cause, Cause::cancelled);
    EXPECT_EQ(run_shell("true", small_limits(), late.fd()).result.cause, Cause::exited);
}

TEST(Supervisor, AccountedCpuTimeEndsARun) {
    Limits limits = small_limits();
    limits.cpu = 1000ms;
    const ShellRun run = run_shell("sleep 30", limits, -1, 1000 * 1000);
    EXPECT_EQ(run.result.cause, Cause::cpu_timeout) << cause_name(run.result.cause);
    EXPECT_LT(run.elapsed, 5000ms);
}

TEST(Supervisor, ARunWithoutAPidfdIsRefused) {
    SpawnSpec spec;
    spec.argv = {"/bin/sh", "-c", "sleep 30"};
    std::string error;
    Jail jail = start_jail(spec, error);
    ASSERT_GT(jail.process.pid(), 0) << error;
    ShellProcess process(jail.process);
    jail.channels.pidfd.reset();
    const SpawnResult result = supervise(process, std::move(jail.channels), small_limits(), -1);
    EXPECT_NE(result.spawn_error, "");
    int status = 0;
    rusage usage{};
    EXPECT_TRUE(process.reap(status, usage));  // it was killed, so this returns
    EXPECT_TRUE(WIFSIGNALED(status));
}

TEST(Supervisor, CauseNamesAreDistinct) {
    EXPECT_EQ(cause_name(Cause::exited), "exited");
    EXPECT_EQ(cause_name(Cause::wall_timeout), "wall_timeout");
    EXPECT_NE(cause_name(Cause::stdout_limit), cause_name(Cause::stderr_limit));
}

}  // namespace
}  // namespace safepy

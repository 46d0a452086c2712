// Real scripts from tests/scripts through the library, under each jail.
#include "jail_fixture.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <dirent.h>
#include <fcntl.h>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <regex>
#include <sstream>
#include <thread>
#include <csignal>
#include <unistd.h>

namespace safepy {
namespace {

using namespace std::chrono_literals;

using namespace jail_testing;

INSTANTIATE_TEST_SUITE_P(Jails, JailTest,
                         all_jail_modes(), print_mode);

// README examples

TEST_P(JailTest, HelloWorldEnvelopeIsExact) {
    const Outcome outcome = run_file("hello.py");
    ASSERT_EQ(outcome.status, Status::ok) << outcome.error << outcome.stderr_bytes << outcome.detail;
    EXPECT_EQ(envelope_json(outcome), R"({"result": {"result": "Hello, World!"}, "stdout": ""})");
    EXPECT_EQ(outcome.jail, jail_name(jail()));
    expect_bounded();
}

TEST_P(JailTest, PrintsAndNumbers) {
    const Outcome outcome = run_file("prints_and_numbers.py");
    ASSERT_EQ(outcome.status, Status::ok) << outcome.error;
    EXPECT_EQ(envelope_json(outcome),
              R"({"result": {"total": 45, "squares": [0, 1, 4, 9], "ratio": 0.5, "ok": true, "none": null}, )"
              R"("stdout": "loading\ntotal is 45\n"})");
}

// JSON edge cases

TEST_P(JailTest, JsonEdgeCasesSurviveExactly) {
    const Outcome outcome = run_file("json_edge_cases.py");
    ASSERT_EQ(outcome.status, Status::ok) << outcome.error << outcome.stderr_bytes;
    EXPECT_TRUE(contains(outcome.result_json, R"("big": 1606938044258990275541962092341162602522202993782792835301376)"))
        << outcome.result_json;
    EXPECT_TRUE(contains(outcome.result_json, "-515377520732011331036461129765621272702107522001")) << outcome.result_json;
    EXPECT_TRUE(contains(outcome.result_json, R"("tuple": [1, 2])"));
    EXPECT_TRUE(contains(outcome.result_json, R"("int_key": {"1": "one"})"));
    EXPECT_TRUE(contains(outcome.result_json, R"("quote": "\"\\\n\t")"));
    EXPECT_TRUE(contains(outcome.result_json, R"(caf\u00e9 \u20ac \ud83d\ude00)"));
}

TEST_P(JailTest, NonJsonResultsAreRejectedWithTheContractText) {
    for (const char* name : {"returns_nan.py", "returns_string.py", "returns_none.py", "returns_set.py",
                             "returns_datetime.py", "returns_bytes.py", "returns_deep.py", "returns_duplicate_keys.py"}) {
        const Outcome outcome = run_file(name);
        EXPECT_EQ(outcome.status, Status::invalid_result) << name << ": " << outcome.error;
        EXPECT_EQ(outcome.error.rfind("Execution did not return valid JSON", 0), 0u) << name << ": " << outcome.error;
        EXPECT_TRUE(outcome.result_json.empty());
    }
    EXPECT_EQ(run_file("returns_none.py").stdout_bytes, "ran\n");
}

TEST_P(JailTest, OversizedResultIsAnOutputLimit) {
    Limits limits;
    limits.result_bytes = 100 * 1024;
    const Outcome outcome = run_file("returns_large.py", limits);
    EXPECT_EQ(outcome.status, Status::output_limit) << outcome.error;
    EXPECT_EQ(run_file("returns_large.py").status, Status::ok);
}

// main detection

TEST_P(JailTest, MissingMainUsesTheContractText) {
    for (const char* name : {"main_in_comment.py", "main_in_string.py", "main_class_method.py", "main_not_callable.py"}) {
        const Outcome outcome = run_file(name);
        EXPECT_EQ(outcome.status, Status::invalid_script) << name;
        EXPECT_EQ(outcome.error, "Script must contain a main() function") << name;
    }
    EXPECT_EQ(run_source("").error, "Script must contain a main() function");
}

TEST_P(JailTest, MainMayBeALambdaOrDefinedInsideAnIf) {
    EXPECT_EQ(run_file("main_lambda.py").result_json, R"({"from": "lambda"})");
    EXPECT_EQ(run_file("main_in_if.py").result_json, R"({"from": "if"})");
}

TEST_P(JailTest, MainThatNeedsArgumentsIsAnInvalidScript) {
    const Outcome outcome = run_file("main_needs_argument.py");
    EXPECT_EQ(outcome.status, Status::invalid_script);
    EXPECT_TRUE(contains(outcome.error, "without arguments")) << outcome.error;
}

TEST_P(JailTest, MainGuardDoesNotCallMainTwice) {
    const Outcome outcome = run_file("main_guard.py");
    ASSERT_EQ(outcome.status, Status::ok) << outcome.error;
    EXPECT_EQ(outcome.result_json, R"({"calls": 1, "name": "script"})");
    EXPECT_EQ(outcome.stdout_bytes, "main called\n");
}

TEST_P(JailTest, ANestingTooDeepToCompileIsAnInvalidScript) {
    const Outcome outcome = run_file("deeply_nested.py");
    EXPECT_EQ(outcome.status, Status::invalid_script) << outcome.error;
    EXPECT_TRUE(contains(outcome.error, "nested too deeply")) << outcome.error;
}

TEST_P(JailTest, TheResultCapCountsOnlyTheResult) {
    Limits limits;
    limits.result_bytes = 16;
    const Outcome exact = run_source("def main():\n    return [11111111111111]\n", limits);  // 16 bytes
    EXPECT_EQ(exact.status, Status::ok) << exact.error;
    const Outcome over = run_source("def main():\n    return [111111111111111]\n", limits);  // 17 bytes
    EXPECT_EQ(over.status, Status::output_limit) << over.error;
    const Outcome raised = run_source("def main():\n    raise ValueError('x' * 100)\n", limits);
    EXPECT_EQ(raised.status, Status::script_error) << raised.error;
}

TEST_P(JailTest, SyntaxErrorNamesTheLine) {
    const Outcome outcome = run_file("syntax_error.py");
    EXPECT_EQ(outcome.status, Status::invalid_script);
    EXPECT_TRUE(contains(outcome.error, "SyntaxError")) << outcome.error;
    EXPECT_TRUE(contains(outcome.error, "line 2")) << outcome.error;
}

// stdout

TEST_P(JailTest, StdoutKeepsEveryWriterInOrderAndStderrApart) {
    const Outcome outcome = run_file("stdout_order.py");
    ASSERT_EQ(outcome.status, Status::ok) << outcome.error << outcome.stderr_bytes;
    EXPECT_EQ(outcome.stdout_bytes, "module level\nin main\nno newline|fd write|child process\nend");
    EXPECT_EQ(outcome.stderr_bytes, "stderr line\n");
}

TEST_P(JailTest, HundredKilobytesOfStdout) {
    const Outcome outcome = run_file("stdout_100k.py");
    ASSERT_EQ(outcome.status, Status::ok) << outcome.error;
    EXPECT_EQ(outcome.stdout_bytes.size(), 100'000u);
    EXPECT_FALSE(outcome.stdout_truncated);
}

TEST_P(JailTest, InvalidUtf8IsReplacedNotDropped) {
    const Outcome outcome = run_file("stdout_invalid_utf8.py");
    ASSERT_EQ(outcome.status, Status::ok) << outcome.error;
    EXPECT_EQ(outcome.stdout_bytes, "ok \xff\xfe bad \xc3");
    EXPECT_EQ(envelope_json(outcome), "{\"result\": {}, \"stdout\": \"ok \xef\xbf\xbd\xef\xbf\xbd bad \xef\xbf\xbd\"}");
}

// errors

TEST_P(JailTest, ExceptionInMainIsAScriptErrorWithTraceback) {
    const Outcome outcome = run_file("raises.py");
    EXPECT_EQ(outcome.status, Status::script_error);
    EXPECT_TRUE(contains(outcome.error, "ValueError: boom")) << outcome.error;
    EXPECT_TRUE(contains(outcome.stderr_bytes, "Traceback")) << outcome.stderr_bytes;
    EXPECT_TRUE(contains(outcome.stderr_bytes, "script.py\", line 3, in main")) << outcome.stderr_bytes;
    EXPECT_EQ(outcome.stdout_bytes, "before\n");
    EXPECT_TRUE(contains(envelope_json(outcome), R"("stderr": "Traceback)"));
}

TEST_P(JailTest, ExceptionAtImportIsAScriptError) {
    const Outcome outcome = run_file("raises_at_import.py");
    EXPECT_EQ(outcome.status, Status::script_error);
    EXPECT_TRUE(contains(outcome.error, "ModuleNotFoundError")) << outcome.error;
    EXPECT_TRUE(contains(outcome.error, "importing")) << outcome.error;
}

TEST_P(JailTest, ExitingBeforeMainReturnsIsAnError) {
    const Outcome sys_exit = run_file("sys_exit.py");
    EXPECT_EQ(sys_exit.status, Status::script_error);
    EXPECT_TRUE(contains(sys_exit.error, "sys.exit(0)")) << sys_exit.error;
    const Outcome os_exit = run_file("os_exit.py");
    EXPECT_EQ(os_exit.status, Status::script_error);
    EXPECT_TRUE(contains(os_exit.error, "before main() returned")) << os_exit.error;
}

TEST_P(JailTest, SegfaultIsAScriptError) {
    const Outcome outcome = run_file("segfault.py");
    EXPECT_EQ(outcome.status, Status::script_error);
    EXPECT_TRUE(contains(outcome.error, "SIGSEGV")) << outcome.error;
}

TEST_P(JailTest, OnlyTheOriginalProcessReportsAResult) {
    const Outcome fork = run_file("fork_in_main.py");
    ASSERT_EQ(fork.status, Status::ok) << fork.error << fork.stderr_bytes;
    EXPECT_EQ(fork.result_json, R"({"who": "parent"})");
    const Outcome raising = run_file("fork_child_raises.py");
    ASSERT_EQ(raising.status, Status::ok) << raising.error;
    EXPECT_EQ(raising.result_json, R"({"parent": "done"})");
    EXPECT_TRUE(contains(raising.stderr_bytes, "ValueError: child failure")) << raising.stderr_bytes;
}

TEST_P(JailTest, NumpyAndPandas) {
    const Outcome outcome = run_file("numpy_pandas.py");
    ASSERT_EQ(outcome.status, Status::ok) << outcome.error << outcome.stderr_bytes;
    EXPECT_EQ(outcome.result_json, R"({"sums": {"0": 166833, "1": 166167, "2": 166500}, "mean": 499.5})");
}

TEST_P(JailTest, ThreadsWork) {
    const Outcome outcome = run_file("threads.py");
    ASSERT_EQ(outcome.status, Status::ok) << outcome.error;
    EXPECT_EQ(outcome.result_json, "[0, 1, 2, 3, 4, 5, 6, 7]");
}

// forgery

TEST_P(JailTest, PatchingModulesOrStdoutCannotForgeTheResult) {
    const Outcome outcome = run_file("forge_patching.py");
    ASSERT_EQ(outcome.status, Status::ok) << outcome.error << outcome.stderr_bytes;
    EXPECT_EQ(outcome.result_json.find("forged"), std::string::npos) << outcome.result_json;
    EXPECT_TRUE(contains(outcome.result_json, "\"real\"")) << outcome.result_json;
    // What it printed is stdout, never the result.
    EXPECT_TRUE(contains(outcome.stdout_bytes, "forged"));
}

TEST_P(JailTest, PrintingAnEnvelopeThenExitingIsAnError) {
    const Outcome outcome = run_file("forge_exit.py");
    EXPECT_EQ(outcome.status, Status::script_error);
    EXPECT_TRUE(outcome.result_json.empty());
}

TEST_P(JailTest, WritingTheProtocolOnTheChannelIsNotASuccess) {
    const Outcome forged = run_file("forge_channel.py");
    EXPECT_NE(forged.status, Status::ok);
    EXPECT_TRUE(forged.result_json.empty());
    const Outcome closed = run_file("close_channel.py");
    EXPECT_EQ(closed.status, Status::script_error) << closed.error;
}

TEST_P(JailTest, ARecordOutOfPhaseIsTamperingNotTheStatusItNames) {
    const Outcome outcome = run_file("forge_syntax_error.py");
    EXPECT_EQ(outcome.status, Status::script_error) << outcome.error;
    EXPECT_TRUE(contains(outcome.error, "The result channel was tampered with")) << outcome.error;
    EXPECT_FALSE(contains(outcome.error, "forged by the script")) << outcome.error;
}

TEST_P(JailTest, ASelfSentSigxcpuIsNotACpuTimeout) {
    const Outcome outcome = run_file("self_sigxcpu.py");
    EXPECT_NE(outcome.status, Status::timeout) << outcome.error;
    EXPECT_LT(outcome.usage.cpu, Limits{}.cpu);
    expect_bounded();
}

// Runs at once: a sandbox for two concurrent runs (warm mode keeps a template,
// and so a host uid, per concurrent run).
class ConcurrentJailTest : public JailTest {
protected:
    std::unique_ptr<Sandbox> two_run_sandbox() {
        Config two = config();
        two.concurrency = 2;
        // What safepy-server does for --concurrency: the maxima shared by two runs.
        two.maxima = host_maxima(default_maxima(), read_host_resources(), two.concurrency, two.warm);
        std::string error;
        auto sandbox = Sandbox::create(two, error);
        EXPECT_NE(sandbox, nullptr) << error;
        if (sandbox) {
            EXPECT_TRUE(sandbox->wait_ready(30s));
        }
        return sandbox;
    }

    static Request request_for(const char* name, const Limits& limits = Limits{}) {
        Request request;
        request.script = read_script(name);
        request.limits = limits;
        return request;
    }
};

INSTANTIATE_TEST_SUITE_P(Jails, ConcurrentJailTest,
                         all_jail_modes(), print_mode);

// Every run has its own CPU share and a quota of cpu_cores: sixty spinning
// processes in one run leave a victim run next to them most of a CPU.
TEST_P(ConcurrentJailTest, ARunGetsItsShareOfCpuNextToASpinner) {
    auto sandbox = two_run_sandbox();
    ASSERT_NE(sandbox, nullptr);
    Limits spinner_limits;
    spinner_limits.processes = 100;
    spinner_limits.wall = 15s;
    const Request spinner = request_for("cpu_spinner.py", spinner_limits);
    const Request victim = request_for("cpu_victim.py");
    Outcome spun;
    std::thread hog([&] { spun = sandbox->run(spinner); });
    std::this_thread::sleep_for(1s);  // the spinners are running
    const Outcome measured = sandbox->run(victim);
    hog.join();
    ASSERT_EQ(spun.status, Status::ok) << spun.error << spun.stderr_bytes;
    ASSERT_EQ(measured.status, Status::ok) << measured.error << measured.stderr_bytes;
    std::smatch share;
    ASSERT_TRUE(std::regex_search(measured.result_json, share, std::regex(R"("cpu_share": ([0-9.e-]+))")))
        << measured.result_json;
    std::cout << "victim's share of a CPU next to a 60-process spinner: " << share[1].str() << "\n";
    EXPECT_GE(std::stod(share[1].str()), 0.4) << measured.result_json;
    // The spinner was held to its quota: one CPU, however many processes.
    EXPECT_LT(spun.usage.cpu, 3s * 1.5 + 1s) << spun.usage.cpu.count();
}

// Only a run cancel_all ended says so: one that timed out by itself keeps its status.
TEST_P(ConcurrentJailTest, CancelAllEndsRunsInProgressAndSaysSo) {
    auto sandbox = two_run_sandbox();
    ASSERT_NE(sandbox, nullptr);
    Limits short_wall;
    short_wall.wall = 300ms;
    Limits long_wall;
    long_wall.wall = 20s;
    auto request = [](const char* name, const Limits& limits) {
        Request r;
        r.script = read_script(name);
        r.limits = limits;
        return r;
    };
    const Request loop = request("infinite_loop.py", short_wall);
    const Request sleep = request("sleep_forever.py", long_wall);
    Outcome timed_out, cancelled;
    std::thread quick([&] { timed_out = sandbox->run(loop); });
    std::thread slow([&] { cancelled = sandbox->run(sleep); });
    quick.join();
    std::this_thread::sleep_for(500ms);
    sandbox->cancel_all();
    slow.join();
    EXPECT_EQ(timed_out.status, Status::timeout) << timed_out.error;
    EXPECT_FALSE(timed_out.cancelled);
    EXPECT_EQ(cancelled.status, Status::sandbox_error) << cancelled.error;
    EXPECT_TRUE(cancelled.cancelled);
    // Later runs are not affected.
    EXPECT_EQ(sandbox->run(request("hello.py", Limits{})).status, Status::ok);
}

// Pipe buffer pages are counted per host uid: with a uid per run, one run's
// pipes never shrink another's.
TEST_P(ConcurrentJailTest, OneRunsPipesDoNotShrinkAnothersPipes) {
    auto sandbox = two_run_sandbox();
    ASSERT_NE(sandbox, nullptr);
    if (geteuid() != 0) {
        GTEST_SKIP() << "not root: every run is this user's uid, so per-uid counters are shared";
    }
    Limits hog_limits;
    hog_limits.open_files = 4096;
    hog_limits.wall = 15s;
    const Request hog_request = request_for("pipe_hog.py", hog_limits);
    const Request probe = request_for("pipe_size.py");
    Outcome hogged;
    std::thread hog([&] { hogged = sandbox->run(hog_request); });
    std::this_thread::sleep_for(1500ms);  // the hog holds its pipes
    const Outcome measured = sandbox->run(probe);
    hog.join();
    ASSERT_EQ(hogged.status, Status::ok) << hogged.error << hogged.stderr_bytes;
    ASSERT_EQ(measured.status, Status::ok) << measured.error << measured.stderr_bytes;
    EXPECT_EQ(measured.result_json, R"({"pipe_bytes": 65536})");
}

// isolation between runs

TEST_P(JailTest, TmpIsFreshForEveryRun) {
    const Outcome first = run_file("tmp_write.py");
    ASSERT_EQ(first.status, Status::ok) << first.error << first.stderr_bytes;
    // Only the empty /tmp/out each run gets for the files it returns.
    EXPECT_EQ(first.result_json, R"({"seen": ["out"], "seen_out": []})");
    const Outcome second = run_file("tmp_write.py");
    EXPECT_EQ(second.result_json, R"({"seen": ["out"], "seen_out": []})");
}

TEST_P(JailTest, HostEnvironmentDoesNotLeak) {
    setenv("SAFEPY_TEST_SECRET", "hunter2-secret", 1);
    const Outcome outcome = run_file("environment.py");
    unsetenv("SAFEPY_TEST_SECRET");
    ASSERT_EQ(outcome.status, Status::ok) << outcome.error;
    EXPECT_FALSE(contains(outcome.result_json, "hunter2")) << outcome.result_json;
    EXPECT_FALSE(contains(outcome.result_json, "SAFEPY_TEST_SECRET"));
    EXPECT_TRUE(contains(outcome.result_json, R"("HOME": "/tmp")")) << outcome.result_json;
}

TEST_P(JailTest, NoProcessOutlivesItsRun) {
    // A duration no other test process uses: tests run in parallel.
    const std::string token = "987" + std::to_string(getpid()) + ".5";
    std::string script = read_script("background_process.py");
    script.replace(script.find("987.654"), 7, token);
    const Outcome outcome = run_source(script);
    ASSERT_EQ(outcome.status, Status::ok) << outcome.error;
    EXPECT_EQ(host_processes_with(token), 0);
}

// the hostile set

TEST_P(JailTest, OnlyStandardDescriptorsAndTheResultChannelAreInherited) {
    // Whatever the calling process holds on low or high descriptors (a file,
    // a client's socket) must not reach the script. Planting them in this
    // process would clobber descriptors the warm pool's thread owns, so the
    // caller here is the CLI, started by a shell with a secret on 5, 6, 7, 9, 40.
    char path[] = "/tmp/safepy-secret-XXXXXX";
    const int secret = mkstemp(path);
    ASSERT_GE(secret, 0);
    ASSERT_EQ(write(secret, "hunter2", 7), 7);
    close(secret);
    const std::string out = std::string(path) + ".out";
    std::string command = std::string(SAFEPY_CLI_PATH) + " run --jail " + std::string(jail_name(jail())) +
                          " --mode " + (GetParam().warm ? "warm" : "cold");
    if (jail() == JailKind::nsjail) {
        command += " --nsjail " + nsjail_path();
    }
    command += " " + std::string(SAFEPY_SCRIPTS_DIR) + "/inherited_fds.py > " + out;
    for (int fd : {5, 6, 7, 9, 40}) {
        command += " " + std::to_string(fd) + "<" + path;
    }
    const int status = std::system(("bash -c '" + command + "'").c_str());
    const std::string envelope = read_proc_file(out);
    unlink(path);
    unlink(out.c_str());
    EXPECT_EQ(WEXITSTATUS(status), 0) << envelope;
    EXPECT_FALSE(contains(envelope, "hunter2")) << envelope;
    // 0, 1, 2, the result channel and the descriptor listdir itself opened.
    EXPECT_EQ(envelope, "{\"result\": {\"open\": [0, 1, 2, 3, 4], \"readable\": {}}, \"stdout\": \"\"}\n");
}

TEST_P(JailTest, NoNetwork) {
    const Outcome outcome = run_file("network.py");
    ASSERT_EQ(outcome.status, Status::ok) << outcome.error << outcome.stderr_bytes;
    EXPECT_FALSE(contains(outcome.result_json, "connected")) << outcome.result_json;
    EXPECT_FALSE(contains(outcome.result_json, "opened")) << outcome.result_json;
    EXPECT_TRUE(contains(outcome.result_json, R"("127.0.0.1": "blocked)")) << outcome.result_json;
    EXPECT_TRUE(contains(outcome.result_json, R"("socketpair": "x")")) << outcome.result_json;
    expect_bounded();
}

TEST_P(JailTest, HostFilesAreAbsentAndNothingOutsideTmpIsWritable) {
    const Outcome outcome = run_file("host_files.py");
    ASSERT_EQ(outcome.status, Status::ok) << outcome.error << outcome.stderr_bytes;
    EXPECT_FALSE(contains(outcome.result_json, "true")) << outcome.result_json;
    EXPECT_FALSE(contains(outcome.result_json, "written")) << outcome.result_json;
    EXPECT_TRUE(contains(outcome.result_json, R"("root": ["bin", "dev", "etc", "lib", "lib64", "proc", "tmp", "usr"])"))
        << outcome.result_json;
}

TEST_P(JailTest, NoPrivilegesAndAnUnprivilegedHostUid) {
    const Outcome outcome = run_file("privileges.py");
    ASSERT_EQ(outcome.status, Status::ok) << outcome.error << outcome.stderr_bytes;
    const std::string& r = outcome.result_json;
    EXPECT_TRUE(contains(r, R"("ptrace": [-1, 1])")) << r;
    EXPECT_TRUE(contains(r, R"("unshare": [-1, 1])")) << r;
    EXPECT_TRUE(contains(r, R"("mount": [-1, 1])")) << r;
    EXPECT_TRUE(contains(r, R"("chroot": [-1, 1])")) << r;
    EXPECT_TRUE(contains(r, R"("CapEff": "0000000000000000")")) << r;
    EXPECT_TRUE(contains(r, R"("CapBnd": "0000000000000000")")) << r;
    EXPECT_TRUE(contains(r, R"("NoNewPrivs": "1")")) << r;
    EXPECT_TRUE(contains(r, R"("Seccomp": "2")")) << r;
    EXPECT_FALSE(contains(r, R"("setuid": "worked")")) << r;
    if (geteuid() == 0) {
        // The sandbox uid maps to one of the run uids on the host, never to root.
        std::smatch match;
        ASSERT_TRUE(std::regex_search(r, match, std::regex(R"re("uid_map": \["(\d+)", "(\d+)", "1"\])re"))) << r;
        const unsigned long uid = std::stoul(match[2].str());
        EXPECT_GE(uid, Config{}.sandbox_uid_base) << r;
        EXPECT_LT(uid, Config{}.sandbox_uid_base + Config{}.sandbox_uid_count) << r;
        EXPECT_TRUE(contains(r, "\"subprocess\": \"" + match[2].str() + "\"")) << r;
    }
}

// The runner is pid 1 of its namespace (no writable jail init beside it) and
// /proc is read-only, under both jails and in warm children.
TEST_P(JailTest, TheRunnerIsPidOneAndProcIsReadOnly) {
    const Outcome outcome = run_file("proc_readonly.py");
    ASSERT_EQ(outcome.status, Status::ok) << outcome.error << outcome.stderr_bytes;
    const std::string& r = outcome.result_json;
    EXPECT_TRUE(contains(r, R"("pid": 1)")) << r;
    EXPECT_TRUE(contains(r, R"("mem": "EROFS")")) << r;
    EXPECT_TRUE(contains(r, R"("comm": "EROFS")")) << r;
    EXPECT_TRUE(contains(r, R"("proc_mount": "ro")")) << r;
}

TEST_P(JailTest, CallsOffTheSeccompAllowListAreRefused) {
    const Outcome outcome = run_file("denied_syscalls.py");
    ASSERT_EQ(outcome.status, Status::ok) << outcome.error << outcome.stderr_bytes;
    // sync, inotify_init1, getpriority and personality succeed in the jail
    // without the allow-list; clone may not make namespaces; clone3 answers
    // ENOSYS so that the C library falls back to clone.
    EXPECT_EQ(outcome.result_json,
              R"({"acct": [-1, "EPERM"], "swapon": [-1, "EPERM"], "syslog": [-1, "EPERM"], "vhangup": [-1, "EPERM"], )"
              R"("pivot_root": [-1, "EPERM"], "sync": [-1, "EPERM"], "inotify_init1": [-1, "EPERM"], )"
              R"("getpriority": [-1, "EPERM"], "personality": [-1, "EPERM"], "clone_newuser": [-1, "EPERM"], )"
              R"("clone3": [-1, "ENOSYS"], "getpid": [true, ""], "socket_inet": "EAFNOSUPPORT"})");
}

TEST_P(JailTest, X32AndI386SystemCallsKillTheCaller) {
    const Outcome outcome = run_file("foreign_abi.py");
    ASSERT_EQ(outcome.status, Status::ok) << outcome.error << outcome.stderr_bytes;
    EXPECT_TRUE(contains(outcome.result_json, R"("x32": "signal 31")")) << outcome.result_json;  // SIGSYS
    // SIGSYS from the filter; a kernel without ia32 emulation faults first (SIGSEGV). Never executed.
    EXPECT_TRUE(contains(outcome.result_json, R"("i386": "signal 31")") ||
                contains(outcome.result_json, R"("i386": "signal 11")"))
        << outcome.result_json;
}

TEST_P(JailTest, MultiprocessingWorksUnderTheAllowList) {
    const Outcome outcome = run_file("multiprocessing_pool.py", roomy_limits());
    ASSERT_EQ(outcome.status, Status::ok) << outcome.error << outcome.stderr_bytes;
    EXPECT_EQ(outcome.result_json,
              R"({"squares": [0, 1, 4, 9, 16, 25], "message": "from child", "counter": 1, "exitcode": 0, )"
              R"("executor": [49, 64], "started": {"spawn": 9, "forkserver": 9}})");
}

TEST_P(JailTest, CommonStandardLibraryUseWorksUnderTheAllowList) {
    const Outcome outcome = run_file("stdlib_tour.py", roomy_limits());
    ASSERT_EQ(outcome.status, Status::ok) << outcome.error << outcome.stderr_bytes;
    EXPECT_EQ(outcome.result_json,
              R"({"time": true, "datetime": "2020-01-02T00:00:00", "random": 20, "hash": "2d711642", "zlib": 1000, )"
              R"("locale": "C.UTF-8", "copytree": ["data.csv", "data.csv.copy"], "coreutils": ["a", "5"], "csv": 6, )"
              R"("mmap": "a", "scandir": ["c.csv", "data.csv", "data.csv.copy", "fifo"], "fifo": true, "stat": true, )"
              R"("sqlite": 3, "numpy": 0.25, "pandas": 24, "select": true, "epoll": 1, "pipe": "p", "signal": true, )"
              R"("rusage": true, "rlimit": true, "thread": 1, "shell": "42", "python": "1", "asyncio": "async", )"
              R"("ids": [true, true, true, true], "cpu": true, "json": "{\"k\": 1}"})");
}

TEST_P(JailTest, InfiniteLoopTimesOut) {
    const Limits limits = short_limits();
    const Outcome outcome = run_file("infinite_loop.py", limits);
    EXPECT_EQ(outcome.status, Status::timeout) << outcome.error;
    EXPECT_TRUE(contains(outcome.error, "2000 ms")) << outcome.error;
    expect_bounded(limits);
}

TEST_P(JailTest, SleepForeverTimesOut) {
    const Limits limits = short_limits();
    const Outcome outcome = run_file("sleep_forever.py", limits);
    EXPECT_EQ(outcome.status, Status::timeout) << outcome.error;
    expect_bounded(limits);
}

TEST_P(JailTest, CpuLimitEndsABusyLoopBeforeTheWallLimit) {
    Limits limits;
    limits.cpu = 1s;
    const Outcome outcome = run_file("infinite_loop.py", limits);
    EXPECT_EQ(outcome.status, Status::timeout) << outcome.error;
    EXPECT_TRUE(contains(outcome.error, "CPU")) << outcome.error;
    EXPECT_LT(m_elapsed, 4s);
}

TEST_P(JailTest, FillingTmpFailsInsideTheScript) {
    Limits limits;
    limits.tmp_bytes = 8 << 20;
    const Outcome outcome = run_file("fill_tmp.py", limits);
    EXPECT_EQ(outcome.status, Status::script_error) << outcome.error;
    EXPECT_TRUE(contains(outcome.error, "No space left on device")) << outcome.error;
    expect_bounded(limits);
}

TEST_P(JailTest, ForkBombIsContained) {
    Limits limits = short_limits();
    limits.processes = 32;
    const Outcome outcome = run_file("fork_bomb.py", limits);
    EXPECT_NE(outcome.status, Status::ok);
    EXPECT_NE(outcome.status, Status::sandbox_error) << outcome.error << outcome.detail;
    expect_bounded(limits);
    // The host is usable straight after: the next run works.
    EXPECT_EQ(run_file("hello.py").status, Status::ok);
}

TEST_P(JailTest, MemoryBombHitsTheMemoryLimit) {
    Limits limits;
    limits.memory_bytes = 256 << 20;
    const Outcome outcome = run_file("memory_bomb.py", limits);
    EXPECT_EQ(outcome.status, Status::memory_limit) << outcome.error << outcome.stderr_bytes;
    expect_bounded(limits);
}

// A warm pool recycles a finished run's cgroup for a later run (cold runs
// get a new one each): nothing of an OOM-killed or CPU-bound run may show in
// the status or the usage of the runs after it.
TEST_P(JailTest, RunsAfterBombsStartFromZero) {
    Limits memory;
    memory.memory_bytes = 256 << 20;
    ASSERT_EQ(run_file("memory_bomb.py", memory).status, Status::memory_limit);
    Limits cpu;
    cpu.cpu = 1500ms;
    ASSERT_EQ(run_file("infinite_loop.py", cpu).status, Status::timeout);
    // The pool keeps a few cgroups: enough runs that every one has been reused.
    for (int i = 0; i < 6; ++i) {
        const Outcome outcome = run_file("hello.py");
        ASSERT_EQ(outcome.status, Status::ok) << "run " << i << ": " << outcome.error;
        EXPECT_LT(outcome.usage.cpu, 1000ms) << "run " << i;
        EXPECT_LT(outcome.usage.peak_memory_bytes, 128u << 20) << "run " << i;
    }
}

TEST_P(JailTest, StdoutFloodHitsTheOutputLimitWhileReading) {
    const Outcome outcome = run_file("stdout_flood.py");
    EXPECT_EQ(outcome.status, Status::output_limit) << outcome.error;
    EXPECT_EQ(outcome.stdout_bytes.size(), Limits{}.stdout_bytes);
    EXPECT_TRUE(outcome.stdout_truncated);
    EXPECT_LT(m_elapsed, 5s);
}

TEST_P(JailTest, InvalidRequestsNeverStartAJail) {
    const Outcome nul = run_source(std::string("def main():\n    return {}\n\0", 27));
    EXPECT_EQ(nul.status, Status::invalid_request);
    EXPECT_FALSE(nul.script_started);
    Limits limits;
    limits.wall = 0ms;
    EXPECT_EQ(run_file("hello.py", limits).status, Status::invalid_request);
    const Outcome huge = run_source(std::string(m_sandbox->config().max_script_bytes + 1, '#'));
    EXPECT_EQ(huge.status, Status::invalid_request);
}

TEST_P(JailTest, AJailThatFailsIsASandboxErrorNotTheScripts) {
    Config config = this->config();
    // A "jail" that exits at once without starting Python.
    (jail() == JailKind::nsjail ? config.nsjail_path : config.bwrap_path) = "/bin/false";
    std::string error;
    auto broken = Sandbox::create(config, error);
    ASSERT_NE(broken, nullptr) << error;
    Request request;
    request.script = read_script("hello.py");
    const Outcome outcome = broken->run(request);
    EXPECT_EQ(outcome.status, Status::sandbox_error);
    EXPECT_TRUE(contains(outcome.error, "not caused by the script")) << outcome.error;
    if (!GetParam().warm) {
        EXPECT_TRUE(contains(outcome.detail, "exited with status 1")) << outcome.detail;
    } else {
        EXPECT_TRUE(contains(outcome.error + outcome.detail, "warm")) << outcome.error << outcome.detail;
    }
    EXPECT_FALSE(outcome.script_started);
}

TEST_P(JailTest, NothingOfOneRunReachesTheNext) {
    const Outcome first = run_file("leak_probe.py");
    ASSERT_EQ(first.status, Status::ok) << first.error << first.stderr_bytes;
    const Outcome second = run_file("leak_probe.py");
    ASSERT_EQ(second.status, Status::ok) << second.error << second.stderr_bytes;
    for (const Outcome* outcome : {&first, &second}) {
        const std::string& r = outcome->result_json;
        EXPECT_TRUE(contains(r, R"("pandas_marker": null, "json_marker": null, "dataframe_patched": false, )"
                                R"("json_dumps_patched": false, "injected_module": false, "builtin_marker": null, "tmp": ["out"])"))
            << r;
        EXPECT_FALSE(contains(r, "leaked")) << r;
    }
    // Random streams are not shared between runs (forked children reseed).
    auto field = [](const std::string& json, const std::string& name) {
        const auto start = json.find("\"" + name + "\": ") + name.size() + 4;
        return json.substr(start, json.find_first_of(",}", start) - start);
    };
    EXPECT_NE(field(first.result_json, "numpy_random"), field(second.result_json, "numpy_random"));
    EXPECT_NE(field(first.result_json, "python_random"), field(second.result_json, "python_random"));
}

TEST_P(JailTest, ARunSeesOnlyItsOwnProcesses) {
    const Outcome outcome = run_file("leak_probe.py", roomy_limits());  // it imports pandas
    ASSERT_EQ(outcome.status, Status::ok) << outcome.error;
    // The script is pid 1 under every jail and mode; nothing else is there.
    EXPECT_TRUE(contains(outcome.result_json, R"("pids": ["1"])")) << outcome.result_json;
    // Its own cgroup namespace: no host path, pid or run counter shows.
    EXPECT_TRUE(contains(outcome.result_json, R"("cgroup_paths": ["/"])")) << outcome.result_json;
}

TEST_P(JailTest, ConcurrentRunsAreAllAnsweredCorrectly) {
    constexpr int k_runs = 8;
    std::vector<Outcome> outcomes(k_runs);
    std::vector<std::thread> threads;
    for (int i = 0; i < k_runs; ++i) {
        threads.emplace_back([this, i, &outcomes] {
            Request request;
            request.script = "def main():\n    print(" + std::to_string(i) + ")\n    return [" + std::to_string(i) + "]\n";
            outcomes[static_cast<std::size_t>(i)] = m_sandbox->run(request);
        });
    }
    for (auto& thread : threads) {
        thread.join();
    }
    for (int i = 0; i < k_runs; ++i) {
        const Outcome& outcome = outcomes[static_cast<std::size_t>(i)];
        ASSERT_EQ(outcome.status, Status::ok) << i << ": " << outcome.error << outcome.detail;
        EXPECT_EQ(outcome.result_json, "[" + std::to_string(i) + "]");
        EXPECT_EQ(outcome.stdout_bytes, std::to_string(i) + "\n");
    }
}

// Host pids of this process's descendants that run Python with `token` on
// their command line and a parent that is not Python (the template, not its
// children), started through a process whose argv[0] ends with `jail`.
std::vector<pid_t> own_descendants_with(const std::string& token, const std::string& jail) {
    auto read = [](const std::string& path) { return read_proc_file(path); };
    auto parent_of = [&read](pid_t pid) {
        const std::string status = read("/proc/" + std::to_string(pid) + "/status");
        const auto at = status.find("PPid:");
        return at == std::string::npos ? 0 : std::atoi(status.c_str() + at + 5);
    };
    std::vector<pid_t> found;
    DIR* proc = opendir("/proc");
    while (dirent* entry = proc ? readdir(proc) : nullptr) {
        auto program_of = [&read](pid_t pid) {
            const std::string cmdline = read("/proc/" + std::to_string(pid) + "/cmdline");
            return cmdline.substr(0, cmdline.find('\0'));
        };
        const pid_t pid = std::atoi(entry->d_name);
        if (pid <= 0 || !contains(read("/proc/" + std::to_string(pid) + "/cmdline"), token) ||
            !program_of(pid).ends_with("python3")) {
            continue;
        }
        const pid_t parent = parent_of(pid);
        if (program_of(parent).ends_with("python3")) {
            continue;  // a child of the template, not the template
        }
        bool through_jail = false;
        for (pid_t up = parent; up > 1; up = parent_of(up)) {
            const std::string cmdline = read("/proc/" + std::to_string(up) + "/cmdline");
            const std::string program = cmdline.substr(0, cmdline.find('\0'));
            through_jail = through_jail || program.ends_with("/" + jail);
            if (up == getpid()) {
                if (through_jail) {
                    found.push_back(pid);
                }
                break;
            }
        }
    }
    if (proc) {
        closedir(proc);
    }
    return found;
}

// Warm mode only: cold runs have no template.
class WarmJailTest : public JailTest {};

INSTANTIATE_TEST_SUITE_P(Jails, WarmJailTest,
                         ::testing::Values(JailMode{JailKind::bwrap, true}, JailMode{JailKind::nsjail, true}),
                         print_mode);

TEST_P(WarmJailTest, ADeadTemplateIsReplacedAndNeverGivesAWrongResult) {
    const std::string jail_program(jail_name(jail()));
    const auto templates = own_descendants_with("_SAFEPY_TEMPLATE", jail_program);
    ASSERT_EQ(templates.size(), 1u);
    kill(templates[0], SIGKILL);
    bool recovered = false;
    const auto deadline = std::chrono::steady_clock::now() + 30s;
    while (!recovered && std::chrono::steady_clock::now() < deadline) {
        const Outcome outcome = run_file("prints_and_numbers.py");
        if (outcome.status == Status::ok) {
            EXPECT_TRUE(contains(outcome.result_json, R"("total": 45)")) << outcome.result_json;
            EXPECT_EQ(outcome.stdout_bytes, "loading\ntotal is 45\n");
            recovered = true;
        } else {
            EXPECT_EQ(outcome.status, Status::sandbox_error) << outcome.error;
            EXPECT_TRUE(outcome.result_json.empty());
        }
    }
    EXPECT_TRUE(recovered);
    EXPECT_EQ(own_descendants_with("_SAFEPY_TEMPLATE", jail_program).size(), 1u);
}

TEST_P(JailTest, UsageIsReported) {
    const Outcome outcome = run_file("numpy_pandas.py");
    ASSERT_EQ(outcome.status, Status::ok);
    EXPECT_GT(outcome.usage.wall.count(), 0);
    EXPECT_GT(outcome.usage.cpu.count(), 0);
    // Warm runs share the template's pages (charged to the template): only
    // what the run adds counts against it.
    EXPECT_GT(outcome.usage.peak_memory_bytes, GetParam().warm ? 1u << 20 : 10u << 20);
    EXPECT_FALSE(outcome.resource_control.empty());
}

}  // namespace
}  // namespace safepy

int main(int argc, char** argv) {
    ::testing::InitGoogleTest(&argc, argv);
    return RUN_ALL_TESTS();
}

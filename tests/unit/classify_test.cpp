#include "classify.hpp"

#include <csignal>
#include <gtest/gtest.h>

namespace safepy {
namespace {

int exited(int code) {
    return code << 8;
}

int signalled(int signal) {
    return signal;
}

Evidence started_with(std::string channel, int wait_status = exited(0)) {
    Evidence evidence;
    evidence.report = parse_runner_report(channel);
    evidence.wait_status = wait_status;
    evidence.jail = "bwrap";
    return evidence;
}

TEST(RunnerReport, ParsesMarkerAndRecord) {
    EXPECT_FALSE(parse_runner_report("").started);
    const auto started = parse_runner_report("S");
    EXPECT_TRUE(started.started);
    EXPECT_FALSE(started.kind);
    const auto ok = parse_runner_report("SCMRok\n{\"a\": 1}");
    ASSERT_TRUE(ok.kind);
    EXPECT_EQ(*ok.kind, "ok");
    EXPECT_EQ(ok.body, "{\"a\": 1}");
    EXPECT_TRUE(parse_runner_report("X").malformed);
    EXPECT_TRUE(parse_runner_report("SRforged\nx").malformed);
    EXPECT_TRUE(parse_runner_report("Sgarbage").malformed);
    EXPECT_TRUE(parse_runner_report("SRok").malformed);
}

TEST(Classify, Success) {
    const Verdict verdict = classify(started_with("SCMRok\n[1]"));
    EXPECT_EQ(verdict.status, Status::ok);
    EXPECT_EQ(verdict.error, "");
}

TEST(Classify, ContractTexts) {
    EXPECT_EQ(classify(started_with("SCRno_main\nx")).error, "Script must contain a main() function");
    EXPECT_EQ(classify(started_with("SCRno_main\nx")).status, Status::invalid_script);
    const Verdict invalid = classify(started_with("SCMRinvalid_result\nmain() returned str, not a dict or a list"));
    EXPECT_EQ(invalid.status, Status::invalid_result);
    EXPECT_EQ(invalid.error.rfind("Execution did not return valid JSON", 0), 0u);
    Evidence rejected = started_with("SCMRok\nNaN");
    rejected.result_error = "bad";
    EXPECT_EQ(classify(rejected).status, Status::invalid_result);
    EXPECT_EQ(classify(rejected).error, "Execution did not return valid JSON: bad");
}

TEST(Classify, ScriptFailures) {
    EXPECT_EQ(classify(started_with("SCMRexception\nValueError: x")).status, Status::script_error);
    EXPECT_EQ(classify(started_with("SCRexit\nScript called sys.exit(0)")).status, Status::script_error);
    EXPECT_EQ(classify(started_with("SRsyntax_error\nSyntaxError")).status, Status::invalid_script);
    EXPECT_EQ(classify(started_with("SCRbad_main\nx")).status, Status::invalid_script);
    EXPECT_EQ(classify(started_with("SCMRmemory\nMemoryError")).status, Status::memory_limit);
    const Verdict early = classify(started_with("S", exited(0)));
    EXPECT_EQ(early.status, Status::script_error);
    EXPECT_NE(early.error.find("before main() returned"), std::string::npos);
    const Verdict segv = classify(started_with("S", exited(128 + SIGSEGV)));
    EXPECT_EQ(segv.status, Status::script_error);
    EXPECT_NE(segv.error.find("SIGSEGV"), std::string::npos);
}

TEST(Classify, ARecordIsOnlyASuccessWhenTheProcessExitedCleanly) {
    EXPECT_EQ(classify(started_with("SCMRok\n[1]", exited(3))).status, Status::script_error);
    EXPECT_EQ(classify(started_with("SCMRok\n[1]", signalled(SIGKILL))).status, Status::script_error);
}

TEST(Classify, ForgedOrCorruptChannelIsTheScriptsFault) {
    const Verdict verdict = classify(started_with("SCMRnot_a_kind\n[1]"));
    EXPECT_EQ(verdict.status, Status::script_error);
    EXPECT_NE(verdict.error.find("tampered"), std::string::npos) << verdict.error;
}

TEST(RunnerReport, PhasesComeInOrderAndOnce) {
    const auto report = parse_runner_report("SCMRok\n[1]");
    EXPECT_TRUE(report.compiled);
    EXPECT_TRUE(report.main_found);
    EXPECT_FALSE(report.malformed);
    EXPECT_TRUE(parse_runner_report("SMCRok\n[1]").malformed);
    EXPECT_TRUE(parse_runner_report("SCCMRok\n[1]").malformed);
    EXPECT_TRUE(parse_runner_report("SCMMRok\n[1]").malformed);
    EXPECT_TRUE(parse_runner_report("SSCMRok\n[1]").malformed);
    // Check mode never calls main: no "M".
    EXPECT_FALSE(parse_runner_report("SCRok\n{}", Mode::check).malformed);
    EXPECT_TRUE(parse_runner_report("SCMRok\n{}", Mode::check).malformed);
}

// A record the runner sends in one phase, written by the script in a later
// one, is tampering: never the status it names.
TEST(Classify, RecordsOutOfPhaseAreTampering) {
    for (const char* forged : {"SCRsyntax_error\nSyntaxError: fake (line 1)", "SCMRsyntax_error\nSyntaxError: fake",
                               "SCMRno_main\nx", "SCMRbad_main\nx", "SRno_main\nx", "SRok\n[1]", "SCRok\n[1]",
                               "SCRinvalid_result\nx", "SRexception\nx"}) {
        const Verdict verdict = classify(started_with(forged));
        EXPECT_EQ(verdict.status, Status::script_error) << forged;
        EXPECT_NE(verdict.error.find("The result channel was tampered with"), std::string::npos) << forged;
    }
    // Check mode: no script code ran, ok and no_main follow "C".
    Evidence check = started_with("");
    check.report = parse_runner_report("SCRno_main\n{}", Mode::check);
    EXPECT_EQ(classify(check).status, Status::invalid_script);
    check.report = parse_runner_report("SRsyntax_error\nSyntaxError: x", Mode::check);
    EXPECT_EQ(classify(check).status, Status::invalid_script);
    check.report = parse_runner_report("SCRsyntax_error\nSyntaxError: x", Mode::check);
    EXPECT_EQ(classify(check).status, Status::script_error);
}

TEST(Classify, ABadMainKeepsTheRunnersTextNotTheRecords) {
    const Verdict verdict = classify(started_with("SCRbad_main\nanything the script wants"));
    EXPECT_EQ(verdict.status, Status::invalid_script);
    EXPECT_EQ(verdict.error, "main() must be callable without arguments");
}

// SIGXCPU or SIGKILL is a CPU timeout only with the CPU time to show for it.
TEST(Classify, ACpuSignalNeedsCpuEvidence) {
    for (int signal : {SIGXCPU, SIGKILL}) {
        Evidence self_sent = started_with("SCM", signalled(signal));
        self_sent.cpu = std::chrono::milliseconds(26);
        EXPECT_EQ(classify(self_sent).status, Status::script_error) << signal;
        Evidence spent = started_with("SCM", signalled(signal));
        spent.cpu = spent.limits.cpu;
        EXPECT_EQ(classify(spent).status, Status::timeout) << signal;
    }
}

TEST(Classify, JailFailureBeforeTheScriptStartedIsOurs) {
    Evidence evidence = started_with("", exited(255));
    evidence.jail_log = "mount failed";
    const Verdict verdict = classify(evidence);
    EXPECT_EQ(verdict.status, Status::sandbox_error);
    EXPECT_NE(verdict.error.find("not caused by the script"), std::string::npos);
    EXPECT_NE(verdict.detail.find("mount failed"), std::string::npos);
    Evidence spawn;
    spawn.spawn_error = "execve: ENOENT";
    EXPECT_EQ(classify(spawn).status, Status::sandbox_error);
}

// The same exit code 137 means different things depending on the evidence.
TEST(Classify, EvidenceOrderDecidesNotTheExitCode) {
    Evidence timeout = started_with("S", exited(137));
    timeout.wall_timeout = true;
    timeout.oom_kills = 1;
    EXPECT_EQ(classify(timeout).status, Status::timeout);

    Evidence oom = started_with("S", exited(137));
    oom.oom_kills = 1;
    EXPECT_EQ(classify(oom).status, Status::memory_limit);

    Evidence output = started_with("S", exited(137));
    output.stdout_over = true;
    output.wall_timeout = true;
    EXPECT_EQ(classify(output).status, Status::output_limit);

    Evidence killed = started_with("S", exited(137));
    EXPECT_EQ(classify(killed).status, Status::script_error);

    Evidence cpu = started_with("S", exited(128 + SIGXCPU));
    cpu.cpu = cpu.limits.cpu;
    EXPECT_EQ(classify(cpu).status, Status::timeout);

    Evidence cpu_accounting = started_with("S", signalled(SIGKILL));
    cpu_accounting.cpu_timeout = true;
    EXPECT_EQ(classify(cpu_accounting).status, Status::timeout);

    Evidence result_cap = started_with("S", signalled(SIGKILL));
    result_cap.result_over = true;
    EXPECT_EQ(classify(result_cap).status, Status::output_limit);

    Evidence stderr_cap = started_with("SCMRok\n[]");
    stderr_cap.stderr_over = true;
    EXPECT_EQ(classify(stderr_cap).status, Status::output_limit);
}

TEST(Classify, SignalNames) {
    EXPECT_EQ(signal_name(SIGSEGV), "SIGSEGV");
    EXPECT_EQ(signal_name(SIGKILL), "SIGKILL");
    EXPECT_EQ(signal_name(200), "signal 200");
}

}  // namespace
}  // namespace safepy

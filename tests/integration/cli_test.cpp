// The safepy binary as a user runs it: envelope on stdout, documented exit codes.
#include "cli_runner.hpp"

#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

namespace {

using namespace safepy::cli_testing;

TEST(Cli, RunPrintsTheEnvelopeAndExitsZero) {
    const CliResult result = run_cli("run --jail bwrap hello.py");
    EXPECT_EQ(result.exit_code, 0) << result.err;
    EXPECT_EQ(result.out, "{\"result\": {\"result\": \"Hello, World!\"}, \"stdout\": \"\"}\n");
}

TEST(Cli, RunReadsStdinForAShellPipeline) {
    const CliResult result = run_cli("run --jail bwrap -", "def main():\n    print('piped')\n    return [1]\n");
    EXPECT_EQ(result.exit_code, 0) << result.err;
    EXPECT_EQ(result.out, "{\"result\": [1], \"stdout\": \"piped\\n\"}\n");
}

TEST(Cli, ScriptFailuresExitOne) {
    const CliResult no_main = run_cli("run --jail bwrap main_in_comment.py");
    EXPECT_EQ(no_main.exit_code, 1);
    EXPECT_NE(no_main.out.find("\"error\": \"Script must contain a main() function\""), std::string::npos) << no_main.out;
    const CliResult raises = run_cli("run --jail bwrap raises.py");
    EXPECT_EQ(raises.exit_code, 1);
    const CliResult timeout = run_cli("run --jail bwrap --wall-ms 1000 sleep_forever.py");
    EXPECT_EQ(timeout.exit_code, 1);
    EXPECT_NE(timeout.out.find("\"status\": \"timeout\""), std::string::npos) << timeout.out;
}

TEST(Cli, LimitFlagsAcceptSuffixesAndDetailsAddUsage) {
    const CliResult result = run_cli("run --jail bwrap --memory-bytes 256M --details hello.py");
    EXPECT_EQ(result.exit_code, 0) << result.err;
    EXPECT_NE(result.out.find("\"status\": \"ok\", \"usage\": {"), std::string::npos) << result.out;
}

TEST(Cli, UsageErrorsExitTwo) {
    EXPECT_EQ(run_cli("").exit_code, 2);
    EXPECT_EQ(run_cli("run").exit_code, 2);
    EXPECT_EQ(run_cli("run --no-such-flag hello.py").exit_code, 2);
    EXPECT_EQ(run_cli("run --jail docker hello.py").exit_code, 2);
    EXPECT_EQ(run_cli("run /no/such/file.py").exit_code, 2);
    const CliResult zero = run_cli("run --wall-ms 0 hello.py");
    EXPECT_EQ(zero.exit_code, 2);
    EXPECT_NE(zero.err.find("wall_ms"), std::string::npos) << zero.err;
    EXPECT_EQ(run_cli("run --memory-bytes lots hello.py").exit_code, 2);
}

TEST(Cli, InvalidRequestExitsTwo) {
    const CliResult result = run_cli("run --jail bwrap -", std::string("def main():\n\0", 13));
    EXPECT_EQ(result.exit_code, 2);
    EXPECT_NE(result.out.find("\"status\": \"invalid_request\""), std::string::npos) << result.out;
}

TEST(Cli, SandboxFailureExitsThree) {
    const CliResult result = run_cli("run --jail nsjail --nsjail /no/such/nsjail hello.py");
    EXPECT_EQ(result.exit_code, 3);
    EXPECT_NE(result.err.find("nsjail not found"), std::string::npos) << result.err;
    const CliResult python = run_cli("run --jail bwrap --python /no/such/python hello.py");
    EXPECT_EQ(python.exit_code, 3);
}

TEST(Cli, CheckVetsScriptsWithoutRunningThem) {
    const CliResult good = run_cli("check --jail bwrap hello.py main_lambda.py main_in_if.py sleep_forever.py");
    EXPECT_EQ(good.exit_code, 0) << good.out << good.err;
    EXPECT_NE(good.out.find("hello.py: ok"), std::string::npos) << good.out;
    EXPECT_NE(good.out.find("sleep_forever.py: ok"), std::string::npos) << good.out;  // checked, not run

    const CliResult bad = run_cli("check --jail bwrap hello.py syntax_error.py main_in_comment.py");
    EXPECT_EQ(bad.exit_code, 1);
    EXPECT_NE(bad.out.find("syntax_error.py: invalid_script: SyntaxError"), std::string::npos) << bad.out;
    EXPECT_NE(bad.out.find("line 2"), std::string::npos) << bad.out;
    EXPECT_NE(bad.out.find("main_in_comment.py: invalid_script: Script must contain a main() function"),
              std::string::npos)
        << bad.out;
}

TEST(Cli, CheckDoesNotExecuteTheScript) {
    // Executing this would print and fail; checking only parses it.
    const CliResult result = run_cli("check --jail bwrap -", "print('executed')\nraise SystemExit(5)\ndef main():\n    pass\n");
    EXPECT_EQ(result.exit_code, 0) << result.out << result.err;
    EXPECT_EQ(result.out.find("executed"), std::string::npos);
}

// Without root there is no cgroup to create. By default safepy then refuses
// to run, with the reason; with --resource-control rlimits memory is limited
// by RLIMIT_AS, and the outcome says so.
TEST(Cli, WithoutACgroupRlimitsStillEnforceMemory) {
    if (geteuid() != 0) {
        GTEST_SKIP() << "needs root to switch to an unprivileged uid for this test";
    }
    // The build tree may not be reachable by uid 65534 (a checkout under
    // /root): run a copy of the binary and the scripts from a world-readable place.
    char dir_template[] = "/tmp/safepy-nobody-XXXXXX";
    const std::string dir = mkdtemp(dir_template);
    chmod(dir.c_str(), 0755);
    const std::string copy = "cp " + std::string(SAFEPY_CLI_PATH) + " " + SAFEPY_SCRIPTS_DIR + "/memory_bomb.py " + dir + " && chmod -R a+rX " + dir;
    ASSERT_EQ(std::system(copy.c_str()), 0);
    auto run_as_nobody = [&dir](const std::string& args) {
        return run_shell("cd " + dir + " && setpriv --reuid=65534 --regid=65534 --clear-groups ./safepy " + args +
                             " < /dev/null",
                         dir);
    };
    const CliResult refused = run_as_nobody("run --jail bwrap memory_bomb.py");
    EXPECT_EQ(refused.exit_code, 3) << refused.out << refused.err;
    EXPECT_EQ(refused.out, "");
    EXPECT_NE(refused.err.find("Per-run cgroups are required"), std::string::npos) << refused.err;
    EXPECT_NE(refused.err.find("--resource-control rlimits"), std::string::npos) << refused.err;
    EXPECT_NE(refused.err.find("systemd-run --scope -p Delegate=yes"), std::string::npos) << refused.err;
    const CliResult refused_doctor = run_as_nobody("doctor --jail bwrap");
    EXPECT_EQ(refused_doctor.exit_code, 3) << refused_doctor.out << refused_doctor.err;

    // Generous limits for the probe run (pandas): the test also runs in an emulated guest (scripts/vm-test).
    const CliResult doctor =
        run_as_nobody("doctor --jail bwrap --resource-control rlimits --wall-ms 60000 --cpu-ms 60000");
    EXPECT_EQ(doctor.exit_code, 0) << doctor.out << doctor.err;
    EXPECT_NE(doctor.out.find("resource control: rlimits-only"), std::string::npos) << doctor.out;
    EXPECT_NE(doctor.out.find("resource reason:  chosen by the operator (--resource-control rlimits)"),
              std::string::npos)
        << doctor.out;
    const CliResult memory =
        run_as_nobody("run --jail bwrap --resource-control rlimits --details --memory-bytes 256M --wall-ms 60000 "
                      "--cpu-ms 60000 memory_bomb.py");
    EXPECT_EQ(memory.exit_code, 1) << memory.err;
    EXPECT_NE(memory.out.find("\"status\": \"memory_limit\""), std::string::npos) << memory.out.substr(0, 300);
    EXPECT_NE(memory.out.find("\"resource_control\": \"rlimits-only\""), std::string::npos) << memory.out.substr(0, 300);
    // No fork bomb here: without a cgroup, RLIMIT_NPROC is one budget for
    // every process of uid 65534 on the host (the README's known limitations),
    // so a bomb would starve the other tests' sandboxes.
    std::system(("rm -rf " + dir).c_str());
}

TEST(Cli, DoctorReportsJailCgroupsAndVersions) {
    const CliResult result = run_cli("doctor --jail bwrap --wall-ms 60000 --cpu-ms 60000");
    EXPECT_EQ(result.exit_code, 0) << result.out << result.err;
    EXPECT_NE(result.out.find("jail:             bwrap"), std::string::npos) << result.out;
    EXPECT_NE(result.out.find("resource control: cgroup-v"), std::string::npos) << result.out;
    EXPECT_NE(result.out.find("resource reason:  per-run cgroups in /sys/fs/cgroup/"), std::string::npos) << result.out;
    EXPECT_NE(result.out.find("numpy version:    1."), std::string::npos) << result.out;
    EXPECT_NE(result.out.find("pandas version:   "), std::string::npos) << result.out;
    EXPECT_NE(result.out.find("wall_ms: 60000 / 300000"), std::string::npos) << result.out;
    // Hardening: the CPU share, the uid range and where the maxima come from.
    EXPECT_NE(result.out.find("cpu:              per-run cgroup: equal cpu."), std::string::npos) << result.out;
    if (geteuid() == 0) {
        EXPECT_NE(result.out.find("sandbox uids:     100000-101023, one per concurrent run"), std::string::npos)
            << result.out;
    }
    EXPECT_NE(result.out.find("maxima from:      "), std::string::npos) << result.out;
    EXPECT_NE(result.out.find("cpu_cores: 1 / "), std::string::npos) << result.out;
}

TEST(Cli, TheSandboxUidRangeIsConfigurable) {
    if (geteuid() != 0) {
        GTEST_SKIP() << "not root: runs are this user's uid, no range applies";
    }
    const CliResult result = run_cli("run --jail bwrap --uid-base 150000 --uid-count 5 privileges.py");
    EXPECT_EQ(result.exit_code, 0) << result.err;
    EXPECT_NE(result.out.find(R"("uid_map": ["15000)"), std::string::npos) << result.out;
    const CliResult bad = run_cli("run --jail bwrap --uid-base 0 privileges.py");
    EXPECT_EQ(bad.exit_code, 2) << bad.err;
}

// Concurrency x the memory maximum must fit the host: the server refuses to
// start rather than let one request take the instance down.
TEST(ServerStart, MaximaThatCannotAllFitAreRefused) {
    char dir_template[] = "/tmp/safepy-server-start-XXXXXX";
    const std::string dir = mkdtemp(dir_template);
    const CliResult refused = run_shell(std::string(SAFEPY_SERVER_PATH) +
                                            " --port 0 --jail bwrap --mode cold --concurrency 4096 --max-memory-bytes 8G",
                                        dir);
    EXPECT_EQ(refused.exit_code, 3) << refused.err;
    EXPECT_NE(refused.err.find("The maxima do not fit this host: 4096 concurrent runs"), std::string::npos)
        << refused.err;
    // A cpu_cores maximum above the host's CPUs is refused as well.
    const CliResult cores = run_shell(std::string(SAFEPY_SERVER_PATH) +
                                          " --port 0 --jail bwrap --mode cold --max-cpu-cores 100000",
                                      dir);
    EXPECT_EQ(cores.exit_code, 3) << cores.err;
    EXPECT_NE(cores.err.find("cpu_cores maximum 100000"), std::string::npos) << cores.err;
    std::system(("rm -rf " + dir).c_str());
}

}  // namespace

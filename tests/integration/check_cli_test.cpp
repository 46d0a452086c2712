// `safepy check` as a CI step: a directory with a syntax error, a missing
// main and (with --run) a bad result, in each format; -j, globs, --version.
#include "cli_runner.hpp"

#include <gtest/gtest.h>

namespace {

using namespace safepy::cli_testing;

// Relative to tests/scripts, where run_cli starts.
const std::string k_ok = "check/ok.py", k_no_main = "check/no_main.py", k_bad_result = "check/bad_result.py",
                  k_syntax = "check/sub/syntax_error.py";

bool contains(const std::string& text, const std::string& part) {
    return text.find(part) != std::string::npos;
}

// python3's own XML parser on the report: testcases, failures and their types.
std::string parsed_junit(const std::string& xml) {
    char name[] = "/tmp/safepy-junit-XXXXXX";
    const std::string dir = mkdtemp(name);
    std::ofstream(dir + "/report.xml") << xml;
    const CliResult parsed = run_shell(
        "/usr/bin/python3 -c \"import sys, xml.etree.ElementTree as E; s = E.parse(sys.argv[1]).getroot().find('testsuite'); "
        "print(s.get('tests'), s.get('failures'), s.get('errors')); "
        "[print(c.get('name'), *[f.get('type') for f in c]) for c in s.iter('testcase')]\" " + dir + "/report.xml",
        dir);
    std::system(("rm -rf " + dir).c_str());
    EXPECT_EQ(parsed.exit_code, 0) << parsed.err;
    return parsed.out;
}

TEST(CheckCli, ADirectoryInEachFormat) {
    const CliResult text = run_cli("check --jail bwrap check");
    EXPECT_EQ(text.exit_code, 1);
    EXPECT_EQ(text.out, k_bad_result + ": ok\n" + k_no_main + ": invalid_script: Script must contain a main() function\n" +
                            k_ok + ": ok\n" + k_syntax + ": invalid_script: SyntaxError: invalid syntax (line 3)\n");

    const CliResult json = run_cli("check --jail bwrap --format json check/");
    EXPECT_EQ(json.exit_code, 1);
    EXPECT_TRUE(contains(json.out, "{\"path\": \"check/sub/syntax_error.py\", \"status\": \"invalid_script\", "
                                   "\"error\": \"SyntaxError: invalid syntax (line 3)\", \"line\": 3}"))
        << json.out;
    EXPECT_TRUE(contains(json.out, "\"checked\": 4, \"failed\": 2, \"exit_code\": 1}\n")) << json.out;

    const CliResult github = run_cli("check --jail bwrap --format github check");
    EXPECT_EQ(github.exit_code, 1);
    EXPECT_EQ(github.out, "::error file=check/no_main.py,title=safepy invalid_script::Script must contain a main() function\n"
                          "::error file=check/sub/syntax_error.py,line=3,title=safepy invalid_script::SyntaxError: "
                          "invalid syntax (line 3)\nsafepy check: 4 checked, 2 failed\n");

    const CliResult junit = run_cli("check --jail bwrap --format junit check");
    EXPECT_EQ(junit.exit_code, 1);
    EXPECT_EQ(parsed_junit(junit.out), "4 2 0\n" + k_bad_result + "\n" + k_no_main + " invalid_script\n" + k_ok + "\n" +
                                           k_syntax + " invalid_script\n");
}

TEST(CheckCli, RunAlsoRunsEachScriptAndJobsKeepTheOrder) {
    const CliResult serial = run_cli("check --jail bwrap --run --format junit check");
    EXPECT_EQ(serial.exit_code, 1);
    EXPECT_EQ(parsed_junit(serial.out), "4 3 0\n" + k_bad_result + " invalid_result\n" + k_no_main + " invalid_script\n" +
                                            k_ok + "\n" + k_syntax + " invalid_script\n");
    const CliResult parallel = run_cli("check --jail bwrap --run -j 3 --format junit check");
    EXPECT_EQ(parallel.out, serial.out);
    const CliResult text = run_cli("check --jail bwrap --run --format github check");
    EXPECT_TRUE(contains(text.out, "::error file=check/bad_result.py,title=safepy invalid_result::Execution did not "
                                   "return valid JSON: main() returned str, not a dict or a list\n"))
        << text.out;
    EXPECT_EQ(run_cli("check --jail bwrap --run " + k_ok).exit_code, 0);
}

TEST(CheckCli, GlobsAndEmptyInputs) {
    const CliResult glob = run_cli("check --jail bwrap 'check/*.py'");
    EXPECT_EQ(glob.out, k_bad_result + ": ok\n" + k_no_main + ": invalid_script: Script must contain a main() function\n" +
                            k_ok + ": ok\n");
    const CliResult nothing = run_cli("check --jail bwrap 'check/*.nothing'");
    EXPECT_EQ(nothing.exit_code, 2);
    EXPECT_TRUE(contains(nothing.err, "matches no file")) << nothing.err;
    const CliResult directories = run_cli("check --jail bwrap 'chec[k]'");
    EXPECT_EQ(directories.exit_code, 2);
    EXPECT_TRUE(contains(directories.err, "matches no file (only directories)")) << directories.err;
    char name[] = "/tmp/safepy-empty-XXXXXX";
    const std::string dir = mkdtemp(name);
    const CliResult empty = run_cli("check --jail bwrap " + dir);
    std::system(("rm -rf " + dir).c_str());
    EXPECT_EQ(empty.exit_code, 2);
    EXPECT_TRUE(contains(empty.err, "no *.py files in this directory")) << empty.err;
    EXPECT_EQ(run_cli("check --jail bwrap /no/such/dir").exit_code, 2);
}

TEST(CheckCli, BothBinariesTellTheirVersion) {
    const CliResult cli = run_cli("--version");
    EXPECT_EQ(cli.exit_code, 0);
    EXPECT_EQ(cli.out, std::string("safepy ") + SAFEPY_PROJECT_VERSION + "\n");
    char name[] = "/tmp/safepy-version-XXXXXX";
    const std::string dir = mkdtemp(name);
    const CliResult server = run_shell(std::string(SAFEPY_SERVER_PATH) + " --version", dir);
    std::system(("rm -rf " + dir).c_str());
    EXPECT_EQ(server.exit_code, 0);
    EXPECT_EQ(server.out, std::string("safepy-server ") + SAFEPY_PROJECT_VERSION + "\n");
}

}  // namespace

// Running the safepy and safepy-server binaries as a user does, for the CLI tests.
#pragma once

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <sys/wait.h>
#include <unistd.h>

namespace safepy::cli_testing {

struct CliResult {
    int exit_code = -1;
    std::string out;
    std::string err;
};

inline std::string slurp(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream buffer;
    buffer << in.rdbuf();
    return buffer.str();
}

// Runs a shell command with its stdout and stderr in DIR/out and DIR/err.
inline CliResult run_shell(const std::string& command, const std::string& dir) {
    const int status = std::system((command + " > " + dir + "/out 2> " + dir + "/err").c_str());
    CliResult result;
    result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    result.out = slurp(dir + "/out");
    result.err = slurp(dir + "/err");
    return result;
}

// Runs `safepy ARGS` through the shell with `input` on stdin.
inline CliResult run_cli(const std::string& args, const std::string& input = "") {
    char dir_template[] = "/tmp/safepy-cli-test-XXXXXX";
    const std::string dir = mkdtemp(dir_template);
    std::ofstream(dir + "/in", std::ios::binary) << input;
    const CliResult result = run_shell(std::string("cd ") + SAFEPY_SCRIPTS_DIR + " && " + SAFEPY_CLI_PATH + " " +
                                           args + " < " + dir + "/in",
                                       dir);
    std::system(("rm -rf " + dir).c_str());
    return result;
}

}  // namespace safepy::cli_testing

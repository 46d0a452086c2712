// `safepy run` in pipelines: --args, stdin, --file, --output-dir and
// --result-only, as a shell user types them.
#include "cli_runner.hpp"

#include <gtest/gtest.h>

#include <sys/stat.h>

namespace {

using namespace safepy::cli_testing;

class CliIo : public ::testing::Test {
protected:
    void SetUp() override {
        char name[] = "/tmp/safepy-cli-io-XXXXXX";
        m_dir = mkdtemp(name);
    }
    void TearDown() override { std::system(("rm -rf " + m_dir).c_str()); }

    void write(const std::string& name, const std::string& content) {
        std::ofstream(m_dir + "/" + name, std::ios::binary) << content;
    }

    std::string m_dir;
};

TEST_F(CliIo, ArgsAndArgsFileCallMainWithKeywords) {
    const CliResult inline_args = run_cli("run --jail bwrap --no-stdin io/args.py --args '{\"n\": 4, \"name\": \"cli\"}'");
    EXPECT_EQ(inline_args.exit_code, 0) << inline_args.err;
    EXPECT_EQ(inline_args.out, "{\"result\": {\"n\": 4, \"name\": \"cli\"}, \"stdout\": \"\"}\n");
    write("args.json", "{\"n\": 5, \"scale\": 10}");
    const CliResult from_file = run_cli("run --jail bwrap io/args.py --args-file " + m_dir + "/args.json");
    EXPECT_EQ(from_file.exit_code, 0) << from_file.err;
    EXPECT_EQ(from_file.out, "{\"result\": {\"n\": 50, \"name\": \"nobody\"}, \"stdout\": \"\"}\n");
    const CliResult not_object = run_cli("run --jail bwrap io/args.py --args '[1, 2]'");
    EXPECT_EQ(not_object.exit_code, 2);
    EXPECT_NE(not_object.out.find("args must be a JSON object"), std::string::npos) << not_object.out;
    const CliResult unknown = run_cli("run --jail bwrap io/args.py --args '{\"n\": 1, \"m\": 2}'");
    EXPECT_EQ(unknown.exit_code, 1);
    EXPECT_NE(unknown.out.find("main() does not accept the argument(s) 'm'"), std::string::npos) << unknown.out;
    EXPECT_EQ(run_cli("run --jail bwrap io/args.py --args '{}' --args-file " + m_dir + "/args.json").exit_code, 2);
    write("star.py", "def main(*args):\n    return list(args)\n");
    const CliResult star = run_cli("run --jail bwrap --no-stdin " + m_dir + "/star.py --args '{\"n\": 3}'");
    EXPECT_EQ(star.exit_code, 1);
    EXPECT_NE(star.out.find("main() does not accept the argument(s) 'n'"), std::string::npos) << star.out;
}

TEST_F(CliIo, APipelinesStdinReachesTheScript) {
    const CliResult piped = run_cli("run --jail bwrap io/stdin_echo.py", "id,value\n1,2\n");
    EXPECT_EQ(piped.exit_code, 0) << piped.err;
    EXPECT_NE(piped.out.find("\"bytes\": 13"), std::string::npos) << piped.out;
    EXPECT_NE(piped.out.find("\"head\": \"id,value\\n1,2\\n\""), std::string::npos) << piped.out;
    const CliResult ignored = run_cli("run --jail bwrap --no-stdin io/stdin_echo.py", "ignored");
    EXPECT_NE(ignored.out.find("\"bytes\": 0"), std::string::npos) << ignored.out;
    write("input.txt", "from a file");
    const CliResult file = run_cli("run --jail bwrap --stdin-file " + m_dir + "/input.txt io/stdin_echo.py", "not this");
    EXPECT_NE(file.out.find("\"bytes\": 11"), std::string::npos) << file.out;
    const CliResult over = run_cli("run --jail bwrap --stdin-bytes 4 io/stdin_echo.py", "12345");
    EXPECT_EQ(over.exit_code, 2);
    EXPECT_NE(over.out.find("stdin is larger than the limit of 4 bytes (stdin_bytes)"), std::string::npos) << over.out;
}

TEST_F(CliIo, FilesGoInByBaseNameOrByName) {
    write("data.csv", "a,b\n1,2\n");
    write("blob", std::string("\x89PNG\0\1", 6));
    const CliResult result = run_cli("run --jail bwrap --no-stdin io/files_in.py --file " + m_dir +
                                     "/data.csv --file nested/deep/blob.bin=" + m_dir + "/blob");
    EXPECT_EQ(result.exit_code, 0) << result.err << result.out;
    EXPECT_NE(result.out.find("\"data.csv\": {\"size\": 8"), std::string::npos) << result.out;
    EXPECT_NE(result.out.find("\"nested/deep/blob.bin\": {\"size\": 6, \"first\": \"89504e47\""), std::string::npos)
        << result.out;
    const CliResult traversal = run_cli("run --jail bwrap io/files_in.py --file ../../x=" + m_dir + "/blob");
    EXPECT_EQ(traversal.exit_code, 2);
    EXPECT_NE(traversal.out.find("\\\"..\\\" component"), std::string::npos) << traversal.out;
    EXPECT_EQ(run_cli("run --jail bwrap io/files_in.py --file " + m_dir + "/missing").exit_code, 2);
    // Files over the total are refused, however many there are.
    const CliResult over = run_cli("run --jail bwrap --no-stdin --input-files-bytes 10 io/files_in.py --file a=" + m_dir +
                                   "/data.csv --file b=" + m_dir + "/blob");
    EXPECT_EQ(over.exit_code, 2);
    EXPECT_NE(over.out.find("(input_files_bytes)"), std::string::npos) << over.out;
}

TEST_F(CliIo, OutputDirGetsTheFilesAndNeverOverwritesWithoutForce) {
    const std::string out = m_dir + "/results";
    const CliResult first = run_cli("run --jail bwrap --no-stdin io/files_out.py --output-dir " + out);
    EXPECT_EQ(first.exit_code, 0) << first.err;
    // The envelope lists the files without their content.
    EXPECT_EQ(first.out, "{\"result\": {\"written\": 3}, \"stdout\": \"\", \"files\": [{\"path\": \"empty\", \"size\": 0}, "
                         "{\"path\": \"report.txt\", \"size\": 10}, {\"path\": \"sub/deeper/bytes.bin\", \"size\": 256}]}\n");
    EXPECT_EQ(slurp(out + "/report.txt"), "total: 42\n");
    EXPECT_EQ(slurp(out + "/sub/deeper/bytes.bin").size(), 256u);
    write("results/report.txt", "mine");
    const CliResult again = run_cli("run --jail bwrap --no-stdin io/files_out.py --output-dir " + out);
    EXPECT_EQ(again.exit_code, 2);
    EXPECT_NE(again.err.find("exists (--force replaces it)"), std::string::npos) << again.err;
    EXPECT_EQ(slurp(out + "/report.txt"), "mine");
    const CliResult forced = run_cli("run --jail bwrap --no-stdin io/files_out.py --output-dir " + out + " --force");
    EXPECT_EQ(forced.exit_code, 0) << forced.err;
    EXPECT_EQ(slurp(out + "/report.txt"), "total: 42\n");
}

TEST_F(CliIo, OutputDirNeverFollowsALinkOut) {
    const std::string out = m_dir + "/results", elsewhere = m_dir + "/elsewhere";
    ASSERT_EQ(mkdir(out.c_str(), 0755), 0);
    ASSERT_EQ(mkdir(elsewhere.c_str(), 0755), 0);
    ASSERT_EQ(symlink(elsewhere.c_str(), (out + "/sub").c_str()), 0);
    const CliResult result = run_cli("run --jail bwrap --no-stdin io/files_out.py --force --output-dir " + out);
    EXPECT_EQ(result.exit_code, 2);
    EXPECT_NE(result.err.find("is a link or not a directory: refusing to follow it"), std::string::npos) << result.err;
    EXPECT_EQ(access((elsewhere + "/deeper").c_str(), F_OK), -1);
    EXPECT_EQ(access((out + "/report.txt").c_str(), F_OK), -1);  // nothing half-written
}

TEST_F(CliIo, HostileTmpOutNeverReachesTheOutputDir) {
    const std::string out = m_dir + "/results";
    const CliResult links = run_cli("run --jail bwrap --no-stdin io/links_out.py --output-dir " + out);
    EXPECT_EQ(links.exit_code, 0) << links.err;
    EXPECT_NE(links.out.find("\"files_skipped\": [\"fifo: not a regular file\", \"passwd: a symbolic link"),
              std::string::npos)
        << links.out;
    EXPECT_EQ(slurp(out + "/plain.txt"), "plain");
    for (const char* name : {"passwd", "root", "secret-link", "secret-hard", "fifo"}) {
        struct stat info {};
        EXPECT_NE(lstat((out + "/" + name).c_str(), &info), 0) << name;
    }
    const CliResult many = run_cli("run --jail bwrap --no-stdin --wall-ms 60000 --cpu-ms 60000 io/many_files_out.py "
                                   "--output-dir " + m_dir + "/many");
    EXPECT_EQ(many.exit_code, 1);
    EXPECT_NE(many.out.find("\"status\": \"output_limit\""), std::string::npos) << many.out;
    const CliResult huge = run_cli("run --jail bwrap --no-stdin --wall-ms 60000 --cpu-ms 60000 io/huge_file_out.py "
                                   "--output-dir " + m_dir + "/huge");
    EXPECT_EQ(huge.exit_code, 1);
    EXPECT_NE(huge.out.find("(output_files_bytes)"), std::string::npos) << huge.out;
    // Nothing of a failed run is written.
    EXPECT_EQ(access((m_dir + "/many").c_str(), F_OK), -1);
    EXPECT_EQ(access((m_dir + "/huge").c_str(), F_OK), -1);
}

TEST_F(CliIo, ResultOnlyPrintsJustTheResultForJq) {
    const CliResult ok = run_cli("run --jail bwrap --no-stdin --result-only prints_and_numbers.py");
    EXPECT_EQ(ok.exit_code, 0) << ok.err;
    EXPECT_EQ(ok.out, "{\"total\": 45, \"squares\": [0, 1, 4, 9], \"ratio\": 0.5, \"ok\": true, \"none\": null}\n");
    const CliResult failed = run_cli("run --jail bwrap --no-stdin --result-only raises.py");
    EXPECT_EQ(failed.exit_code, 1);
    EXPECT_EQ(failed.out, "");
    EXPECT_NE(failed.err.find("\"status\": \"script_error\""), std::string::npos) << failed.err;
}

TEST_F(CliIo, TheEnvelopeIsSpacedTheSameThroughout) {
    const CliResult result = run_cli("run --jail bwrap --no-stdin --details hello.py");
    EXPECT_EQ(result.exit_code, 0) << result.err;
    EXPECT_EQ(result.out.find("\":\""), std::string::npos) << result.out;
    EXPECT_EQ(result.out.find("\",\""), std::string::npos) << result.out;
    EXPECT_NE(result.out.find("\"usage\": {\"wall_ms\": "), std::string::npos) << result.out;
    EXPECT_NE(result.out.find(", \"jail\": \"bwrap\", \"resource_control\": \""), std::string::npos) << result.out;
}

}  // namespace

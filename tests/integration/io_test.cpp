// What a run is handed (main's arguments, stdin, files in) and what it hands
// back (files out of /tmp/out), under each jail, cold and warm, with the
// hostile cases: links out of /tmp/out, 10,000 files, a 1 GiB file, a
// process still writing after main() returned, a forged file record.
#include "jail_fixture.hpp"

namespace safepy {
namespace {

using namespace jail_testing;

class IoTest : public JailTest {
protected:
    Outcome run_request(Request request) {
        const auto started = std::chrono::steady_clock::now();
        Outcome outcome = m_sandbox->run(request);
        m_elapsed = std::chrono::steady_clock::now() - started;
        return outcome;
    }

    Request request_for(const std::string& name, const Limits& limits = Limits{}) {
        Request request;
        request.script = read_script("io/" + name);
        request.limits = limits;
        return request;
    }
};

INSTANTIATE_TEST_SUITE_P(Jails, IoTest, all_jail_modes(), print_mode);

const std::string k_bad_main = "main() must be callable without arguments";

TEST_P(IoTest, ArgsAreMainsKeywordArguments) {
    Request request = request_for("args.py");
    request.args_json = R"({"n": 21, "name": "caf\u00e9", "scale": 2})";
    const Outcome outcome = run_request(request);
    ASSERT_EQ(outcome.status, Status::ok) << outcome.error << outcome.stderr_bytes;
    EXPECT_EQ(outcome.result_json, R"({"n": 42, "name": "caf\u00e9"})");
    request.args_json = R"({"n": 1})";
    EXPECT_EQ(run_request(request).result_json, R"({"n": 1, "name": "nobody"})");
}

TEST_P(IoTest, ArgsMainDoesNotAcceptAreNamed) {
    Request request = request_for("args.py");
    request.args_json = R"({"n": 1, "colour": "red", "size": 3})";
    Outcome outcome = run_request(request);
    EXPECT_EQ(outcome.status, Status::invalid_script);
    EXPECT_EQ(outcome.error, "main() does not accept the argument(s) 'colour', 'size'");
    request.args_json = R"({"name": "x"})";
    outcome = run_request(request);
    EXPECT_EQ(outcome.status, Status::invalid_script);
    EXPECT_EQ(outcome.error, "main() needs the argument(s) 'n', which were not given");
    // Without args, a main that needs one gets the seed's message, word for word.
    request.args_json.reset();
    outcome = run_request(request);
    EXPECT_EQ(outcome.status, Status::invalid_script);
    EXPECT_EQ(outcome.error, k_bad_main);
}

TEST_P(IoTest, AMainTakingOnlyStarArgsAcceptsNoNames) {
    Request request;
    request.script = "def main(*args):\n    return list(args)\n";
    Outcome outcome = run_request(request);
    ASSERT_EQ(outcome.status, Status::ok) << outcome.error;
    EXPECT_EQ(outcome.result_json, "[]");
    request.args_json = R"({"n": 3})";
    outcome = run_request(request);
    EXPECT_EQ(outcome.status, Status::invalid_script);
    EXPECT_EQ(outcome.error, "main() does not accept the argument(s) 'n'");
    request.script = "def main(**named):\n    return named\n";
    request.args_json = R"({"n": 3, "x y": [1]})";
    outcome = run_request(request);
    ASSERT_EQ(outcome.status, Status::ok) << outcome.error;
    EXPECT_EQ(outcome.result_json, R"({"n": 3, "x y": [1]})");
}

TEST_P(IoTest, ArgsThatAreNotAnObjectAreAnInvalidRequest) {
    Request request = request_for("args.py");
    for (const char* args : {"[1]", "3", "{\"n\": 1, \"n\": 2}", "{\"n\": "}) {
        request.args_json = args;
        const Outcome outcome = run_request(request);
        EXPECT_EQ(outcome.status, Status::invalid_request) << args;
        EXPECT_FALSE(outcome.script_started) << args;
    }
}

TEST_P(IoTest, StdinReachesTheScriptByteForByte) {
    Request request = request_for("stdin_echo.py");
    request.stdin_bytes = std::string("id,value\n\0\xff", 11) + std::string(3u << 20, 'z');
    const Outcome outcome = run_request(request);
    ASSERT_EQ(outcome.status, Status::ok) << outcome.error << outcome.stderr_bytes;
    EXPECT_TRUE(contains(outcome.result_json, "\"bytes\": " + std::to_string(request.stdin_bytes.size())))
        << outcome.result_json;
    EXPECT_TRUE(contains(outcome.result_json, R"("head": "id,value\n\u0000\u00ffzzzzzzzzz")")) << outcome.result_json;
    // Without stdin the script reads nothing, as before.
    EXPECT_TRUE(contains(run_request(request_for("stdin_echo.py")).result_json, "\"bytes\": 0"));
}

TEST_P(IoTest, StdinOverTheCapNeverRuns) {
    Request request = request_for("stdin_echo.py");
    request.limits.stdin_bytes = 1000;
    request.stdin_bytes = std::string(1001, 'x');
    const Outcome outcome = run_request(request);
    EXPECT_EQ(outcome.status, Status::invalid_request);
    EXPECT_EQ(outcome.error, "stdin is larger than the limit of 1000 bytes (stdin_bytes)");
}

TEST_P(IoTest, FilesInAreReadOnlyInTheWorkingDirectory) {
    Request request = request_for("files_in.py");
    request.files = {{"data.csv", "a,b\n1,2\n"}, {"nested/deep/blob.bin", std::string("\x89PNG\0\1", 6)}};
    const Outcome outcome = run_request(request);
    ASSERT_EQ(outcome.status, Status::ok) << outcome.error << outcome.stderr_bytes;
    EXPECT_EQ(outcome.result_json,
              R"({"cwd": "/tmp", "files": {"data.csv": {"size": 8, "first": "612c620a", "mode": "0o444", "writable": false}, )"
              R"("nested/deep/blob.bin": {"size": 6, "first": "89504e47", "mode": "0o444", "writable": false}}})");
    // Handed-in files are not handed back.
    EXPECT_TRUE(outcome.files.empty());
}

// The files handed in live in the run's /tmp: their pages are the run's memory.
TEST_P(IoTest, FilesInCountAgainstTheRunsMemory) {
    Request request;
    request.script = "def main():\n    block = bytearray(70 << 20)\n    return {'allocated': len(block)}\n";
    request.limits = roomy_limits();
    request.limits.memory_bytes = 128u << 20;
    request.limits.tmp_bytes = 100u << 20;
    request.limits.input_files_bytes = 80u << 20;
    const Outcome alone = run_request(request);
    ASSERT_EQ(alone.status, Status::ok) << alone.error << alone.stderr_bytes;
    request.files = {{"big.bin", std::string(64u << 20, 'x')}};
    const Outcome with_file = run_request(request);
    EXPECT_EQ(with_file.status, Status::memory_limit) << with_file.error << with_file.stderr_bytes;
}

TEST_P(IoTest, FilesInThatEscapeNeverRun) {
    for (const char* path : {"../../etc/cron.d/x", "/etc/passwd", "a/../../b", "out/forged.txt", ""}) {
        Request request = request_for("files_in.py");
        request.files = {{path, "x"}};
        const Outcome outcome = run_request(request);
        EXPECT_EQ(outcome.status, Status::invalid_request) << path;
        EXPECT_FALSE(outcome.script_started) << path;
    }
    Request too_many = request_for("files_in.py");
    too_many.limits.input_files = 2;
    too_many.files = {{"a", ""}, {"b", ""}, {"c", ""}};
    EXPECT_EQ(run_request(too_many).status, Status::invalid_request);
}

TEST_P(IoTest, FilesLeftInTmpOutComeBack) {
    const Outcome outcome = run_request(request_for("files_out.py"));
    ASSERT_EQ(outcome.status, Status::ok) << outcome.error << outcome.stderr_bytes;
    std::string bytes;
    for (int i = 0; i < 256; ++i) {
        bytes += static_cast<char>(i);
    }
    EXPECT_EQ(outcome.files, (std::vector<File>{{"empty", ""}, {"report.txt", "total: 42\n"},
                                                {"sub/deeper/bytes.bin", bytes}}));
    EXPECT_TRUE(outcome.skipped_files.empty());
    EXPECT_TRUE(contains(envelope_json(outcome), R"("files": [{"path": "empty", "size": 0, "content_base64": ""}, )"))
        << envelope_json(outcome);
}

TEST_P(IoTest, LinksOutOfTmpOutAreNeverFollowed) {
    const Outcome outcome = run_request(request_for("links_out.py"));
    ASSERT_EQ(outcome.status, Status::ok) << outcome.error << outcome.stderr_bytes;
    EXPECT_EQ(outcome.files, (std::vector<File>{{"plain.txt", "plain"}}));
    EXPECT_EQ(outcome.skipped_files,
              (std::vector<std::string>{"fifo: not a regular file", "passwd: a symbolic link (never followed)",
                                        "root: a symbolic link (never followed)",
                                        "secret-hard: a hard link (the file has other names)",
                                        "secret-link: a symbolic link (never followed)"}));
    const std::string envelope = envelope_json(outcome);
    EXPECT_FALSE(contains(envelope, "root:x:0:0")) << envelope;  // no line of /etc/passwd
    EXPECT_FALSE(contains(envelope, "cnVuLXByaXZhdGU")) << envelope;  // "run-private" in base64
}

TEST_P(IoTest, TenThousandOutputFilesAreAnOutputLimit) {
    const Outcome outcome = run_request(request_for("many_files_out.py", roomy_limits()));
    EXPECT_EQ(outcome.status, Status::output_limit) << outcome.error << outcome.stderr_bytes;
    EXPECT_EQ(outcome.error, "Output limit exceeded: /tmp/out holds more than 100 entries (output_files)");
    EXPECT_TRUE(outcome.files.empty());
}

TEST_P(IoTest, AGigabyteOutputFileIsStoppedAndNeverReturned) {
    const Limits limits = roomy_limits();
    const Outcome outcome = run_request(request_for("huge_file_out.py", limits));
    // The file size limit (or /tmp's size) stops the write; what was written is over the cap.
    EXPECT_EQ(outcome.status, Status::output_limit) << outcome.error << outcome.stderr_bytes;
    EXPECT_EQ(outcome.error, "Output limit exceeded: the files in /tmp/out hold more than 16777216 bytes "
                             "(output_files_bytes)");
    EXPECT_TRUE(outcome.files.empty());
    // Raised caps return exactly what the file size limit let through.
    Request raised = request_for("huge_file_out.py", limits);
    raised.limits.file_bytes = 4u << 20;
    raised.limits.output_files_bytes = 5u << 20;
    const Outcome returned = run_request(raised);
    ASSERT_EQ(returned.status, Status::ok) << returned.error;
    EXPECT_EQ(returned.result_json, R"({"written": 4194304, "stopped_by": "OSError"})");
    ASSERT_EQ(returned.files.size(), 1u);
    EXPECT_EQ(returned.files[0].content.size(), 4u << 20);
}

TEST_P(IoTest, NothingChangesTmpOutAfterMainReturned) {
    const Outcome outcome = run_request(request_for("background_writer.py"));
    ASSERT_EQ(outcome.status, Status::ok) << outcome.error << outcome.stderr_bytes;
    ASSERT_FALSE(outcome.files.empty());
    EXPECT_LE(outcome.files.size(), 51u);
    for (const auto& file : outcome.files) {
        EXPECT_TRUE(file.path == "result.txt" || file.path.rfind("late-", 0) == 0) << file.path;
    }
    expect_bounded();
}

TEST_P(IoTest, AForgedFileRecordIsTampering) {
    const Outcome outcome = run_request(request_for("forge_file_record.py"));
    EXPECT_EQ(outcome.status, Status::script_error);
    EXPECT_TRUE(contains(outcome.error, "tampered")) << outcome.error;
    EXPECT_TRUE(outcome.files.empty());
}

TEST_P(IoTest, MatplotlibPlotComesBackAsPng) {
    const Outcome outcome = run_request(request_for("plot.py", roomy_limits()));
    ASSERT_EQ(outcome.status, Status::ok) << outcome.error << outcome.stderr_bytes;
    EXPECT_EQ(outcome.result_json, R"({"backend": "agg"})");
    ASSERT_EQ(outcome.files.size(), 1u);
    EXPECT_EQ(outcome.files[0].path, "plot.png");
    EXPECT_EQ(outcome.files[0].content.rfind("\x89PNG\r\n\x1a\n", 0), 0u);
}

TEST_P(IoTest, NoOutputDirectoryWhenFilesOutAreOff) {
    Request request;
    request.script = "import os\ndef main():\n    return {'out': os.path.exists('/tmp/out')}\n";
    request.limits.output_files = 0;
    EXPECT_EQ(run_request(request).result_json, R"({"out": false})");
}

}  // namespace
}  // namespace safepy

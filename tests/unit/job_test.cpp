// The inputs a run is handed and the files it hands back: the request checks,
// the job's layout, the F records, base64 and writing files out. Pure logic,
// except write_output_files, which works in a temporary directory.
#include "base64.hpp"
#include "classify.hpp"
#include "job.hpp"

#include <fcntl.h>
#include <fstream>
#include <gtest/gtest.h>
#include <sstream>
#include <sys/stat.h>
#include <unistd.h>

namespace safepy {
namespace {

Request with_files(std::vector<File> files) {
    Request request;
    request.script = "def main(): return {}";
    request.files = std::move(files);
    return request;
}

std::optional<std::string> checked(const Request& request) {
    return check_inputs(request, 1u << 20);
}

TEST(FilePath, AcceptsRelativePathsAndRefusesEscapes) {
    EXPECT_EQ(check_file_path("data.csv"), std::nullopt);
    EXPECT_EQ(check_file_path("a/b/c.txt"), std::nullopt);
    EXPECT_EQ(check_file_path(".hidden"), std::nullopt);
    EXPECT_NE(check_file_path(""), std::nullopt);
    EXPECT_NE(check_file_path("/etc/passwd"), std::nullopt);
    EXPECT_NE(check_file_path("../x"), std::nullopt);
    EXPECT_NE(check_file_path("a/../../x"), std::nullopt);
    EXPECT_NE(check_file_path("a/./b"), std::nullopt);
    EXPECT_NE(check_file_path("a//b"), std::nullopt);
    EXPECT_NE(check_file_path("a/"), std::nullopt);
    EXPECT_NE(check_file_path(std::string("a\0b", 3)), std::nullopt);
    EXPECT_NE(check_file_path("\xff.txt"), std::nullopt);
    EXPECT_NE(check_file_path(std::string(256, 'a')), std::nullopt);
    EXPECT_NE(check_file_path(std::string(2000, 'a')), std::nullopt);
}

TEST(Inputs, RefusesTraversalAbsolutePathsAndClashes) {
    EXPECT_EQ(checked(with_files({{"data.csv", "a,b\n"}, {"sub/x.txt", "x"}})), std::nullopt);
    EXPECT_NE(checked(with_files({{"../../etc/cron.d/x", "x"}}))->find("\"..\" component"), std::string::npos);
    EXPECT_NE(checked(with_files({{"/etc/passwd", "x"}}))->find("absolute"), std::string::npos);
    EXPECT_NE(checked(with_files({{"a.txt", "1"}, {"a.txt", "2"}}))->find("given twice"), std::string::npos);
    EXPECT_NE(checked(with_files({{"a", "1"}, {"a/b", "2"}}))->find("also a directory"), std::string::npos);
    EXPECT_NE(checked(with_files({{"out/forged.png", "x"}}))->find("reserved"), std::string::npos);
    EXPECT_NE(checked(with_files({{"out", "x"}}))->find("reserved"), std::string::npos);
}

TEST(Inputs, CountsFilesBytesAndTheirPagesInTmp) {
    Request many = with_files({});
    for (int i = 0; i < 101; ++i) {
        many.files.push_back({"f" + std::to_string(i), ""});
    }
    EXPECT_NE(checked(many)->find("(input_files)"), std::string::npos);
    Request big = with_files({{"big", std::string(1000, 'x')}});
    big.limits.input_files_bytes = 999;
    EXPECT_NE(checked(big)->find("(input_files_bytes)"), std::string::npos);
    // 20 one-byte files take 20 pages of tmpfs.
    Request pages = with_files({});
    for (int i = 0; i < 20; ++i) {
        pages.files.push_back({"p" + std::to_string(i), "x"});
    }
    pages.limits.tmp_bytes = 19 * 4096;
    EXPECT_NE(checked(pages)->find("tmp_bytes"), std::string::npos);
    pages.limits.tmp_bytes = 20 * 4096;
    EXPECT_EQ(checked(pages), std::nullopt);
    EXPECT_EQ(input_footprint_bytes({{"a/b/c", "x"}, {"a/d", std::string(4097, 'y')}}), 4096 + 8192 + 2 * 4096);
}

TEST(Inputs, ArgsMustBeAStrictJsonObject) {
    Request request = with_files({});
    request.args_json = R"({"n": 3, "names": ["a", "b"], "deep": {"x": null}})";
    EXPECT_EQ(checked(request), std::nullopt);
    for (const char* bad : {"[1, 2]", "3", "\"text\"", "null", "{", "{\"a\": 1} {}", "{\"a\": 1, \"a\": 2}", "{\"a\": NaN}"}) {
        request.args_json = bad;
        EXPECT_NE(checked(request), std::nullopt) << bad;
    }
    request.args_json = std::string(70, '[') + std::string(70, ']');
    EXPECT_NE(checked(request), std::nullopt);
    request.args_json = "{\"a\": \"" + std::string(2u << 20, 'x') + "\"}";
    EXPECT_NE(checked(request)->find("the limit is"), std::string::npos);
}

TEST(Inputs, StdinIsCappedAndChecksTakeNoInputs) {
    Request request = with_files({});
    request.limits.stdin_bytes = 10;
    request.stdin_bytes = std::string(10, 'x');
    EXPECT_EQ(checked(request), std::nullopt);
    request.stdin_bytes += 'x';
    EXPECT_NE(checked(request)->find("(stdin_bytes)"), std::string::npos);
    Request check = with_files({{"a", "b"}});
    check.mode = Mode::check;
    EXPECT_NE(checked(check), std::nullopt);
}

std::uint64_t le(const std::string& bytes, std::size_t at, int width) {
    std::uint64_t value = 0;
    for (int i = width - 1; i >= 0; --i) {
        value = (value << 8) | static_cast<unsigned char>(bytes[at + i]);
    }
    return value;
}

using Record = std::tuple<char, std::string, std::string>;

std::vector<Record> job_records(const std::string& job) {
    std::vector<Record> records;
    EXPECT_EQ(job.rfind(std::string(k_job_magic), 0), 0u);
    for (std::size_t at = k_job_magic.size(); at < job.size();) {
        const auto name_bytes = le(job, at + 1, 4), data_bytes = le(job, at + 5, 8);
        records.emplace_back(job[at], job.substr(at + 13, name_bytes), job.substr(at + 13 + name_bytes, data_bytes));
        at += 13 + name_bytes + data_bytes;
    }
    return records;
}

TEST(Job, HoldsEachPartAsATaggedRecord) {
    Request request = with_files({{"in/data.csv", "1,2"}});
    request.script = "S";
    request.args_json = "{}";
    request.stdin_bytes = std::string("a\0b", 3);
    request.limits.output_files = 7;
    request.limits.output_files_bytes = 99;
    EXPECT_EQ(job_records(encode_job(request)),
              (std::vector<Record>{Record{'s', "", "S"}, Record{'a', "", "{}"}, Record{'i', "", std::string("a\0b", 3)},
                                   Record{'f', "in/data.csv", "1,2"}, Record{'o', "", "7 99"}}));
    // Without args no 'a' record: main() is called without arguments.
    Request plain = with_files({});
    plain.script = "P";
    EXPECT_EQ(job_records(encode_job(plain)), (std::vector<Record>{Record{'s', "", "P"}, Record{'o', "", "100 16777216"}}));
}

std::string file_record(char tag, const std::string& path, const std::string& data) {
    std::string out = "F";
    out += tag;
    for (int i = 0; i < 4; ++i) out += static_cast<char>((path.size() >> (8 * i)) & 0xFF);
    for (int i = 0; i < 8; ++i) out += static_cast<char>((data.size() >> (8 * i)) & 0xFF);
    return out + path + data;
}

TEST(RunnerReport, TakesFileRecordsAfterMainReturned) {
    const auto report = parse_runner_report("SCM" + file_record('f', "plot.png", std::string("\x89PNG\0", 5)) +
                                            file_record('k', "link", "a symbolic link") + "Rok\n{}");
    ASSERT_FALSE(report.malformed);
    ASSERT_EQ(report.files.size(), 1u);
    EXPECT_EQ(report.files[0], (File{"plot.png", std::string("\x89PNG\0", 5)}));
    EXPECT_EQ(report.file_bytes, 5u);
    EXPECT_EQ(report.skipped_files, std::vector<std::string>{"link: a symbolic link"});
    EXPECT_EQ(*report.kind, "ok");
}

TEST(RunnerReport, RefusesForgedFileRecords) {
    // Before main() was found, a path that escapes, a duplicate, lengths past the end, an unknown tag.
    EXPECT_TRUE(parse_runner_report("SC" + file_record('f', "a", "x") + "Rok\n{}").malformed);
    EXPECT_TRUE(parse_runner_report("SCM" + file_record('f', "../../etc/passwd", "x") + "Rok\n{}").malformed);
    EXPECT_TRUE(parse_runner_report("SCM" + file_record('f', "/etc/passwd", "x") + "Rok\n{}").malformed);
    EXPECT_TRUE(parse_runner_report("SCM" + file_record('f', "a", "1") + file_record('f', "a", "2") + "Rok\n{}").malformed);
    EXPECT_TRUE(parse_runner_report("SCM" + file_record('x', "a", "1") + "Rok\n{}").malformed);
    std::string cut = file_record('f', "a", "12345");
    cut.resize(cut.size() - 2);
    EXPECT_TRUE(parse_runner_report("SCM" + cut).malformed);
    std::string huge = file_record('f', "a", "");
    huge[6 + 7] = '\x7f';  // a data length near 2^63
    EXPECT_TRUE(parse_runner_report("SCM" + huge + "Rok\n{}").malformed);
    EXPECT_TRUE(parse_runner_report("SCMF").malformed);
}

TEST(Classify, FilesOverTheCapsAreAnOutputLimit) {
    Evidence evidence;
    evidence.report = parse_runner_report("SCMRok\n{}");
    evidence.files_over = true;
    const Verdict verdict = classify(evidence);
    EXPECT_EQ(verdict.status, Status::output_limit);
    EXPECT_NE(verdict.error.find("/tmp/out"), std::string::npos);
    evidence.files_over = false;
    evidence.report = parse_runner_report("SCMRoutput_files\nOutput limit exceeded: too many");
    EXPECT_EQ(classify(evidence).status, Status::output_limit);
    evidence.report = parse_runner_report("SCRbad_args\nmain() does not accept the argument(s) 'n'");
    EXPECT_EQ(classify(evidence).status, Status::invalid_script);
    EXPECT_EQ(classify(evidence).error, "main() does not accept the argument(s) 'n'");
    // A bad_args record after main() was called is the script's forgery.
    evidence.report = parse_runner_report("SCMRbad_args\nx");
    EXPECT_EQ(classify(evidence).status, Status::script_error);
}

TEST(Base64, RoundTripsAndRefusesNonCanonicalText) {
    for (const std::string bytes : {std::string(), std::string("f"), std::string("fo"), std::string("foo"),
                                    std::string("\0\xff\x80 binary", 10)}) {
        EXPECT_EQ(base64_decode(base64_encode(bytes)), bytes);
    }
    EXPECT_EQ(base64_encode("foobar"), "Zm9vYmFy");
    EXPECT_EQ(base64_encode("fo"), "Zm8=");
    for (const char* bad : {"Zm8", "Zm8=\n", "Zm 8=", "Z===", "=Zm8", "Zm9=", "Zm8=Zm8=", "Zm-_"}) {
        EXPECT_EQ(base64_decode(bad), std::nullopt) << bad;
    }
}

class OutputDir : public ::testing::Test {
protected:
    void SetUp() override {
        char name[] = "/tmp/safepy-output-test-XXXXXX";
        m_dir = mkdtemp(name);
    }
    void TearDown() override { std::system(("rm -rf " + m_dir).c_str()); }

    std::string read(const std::string& path) const {
        std::ifstream in(path, std::ios::binary);
        std::stringstream buffer;
        buffer << in.rdbuf();
        return buffer.str();
    }

    std::string m_dir;
};

TEST_F(OutputDir, WritesFilesAndRefusesToOverwriteWithoutForce) {
    const std::string out = m_dir + "/out";
    EXPECT_EQ(write_output_files(out, {{"plot.png", "png"}, {"sub/deep/x.csv", "1,2"}}, false), std::nullopt);
    EXPECT_EQ(read(out + "/plot.png"), "png");
    EXPECT_EQ(read(out + "/sub/deep/x.csv"), "1,2");
    // Nothing is written when one path is refused.
    const auto refused = write_output_files(out, {{"new.txt", "n"}, {"plot.png", "again"}}, false);
    ASSERT_NE(refused, std::nullopt);
    EXPECT_NE(refused->find("--force"), std::string::npos);
    EXPECT_EQ(access((out + "/new.txt").c_str(), F_OK), -1);
    EXPECT_EQ(write_output_files(out, {{"plot.png", "again"}}, true), std::nullopt);
    EXPECT_EQ(read(out + "/plot.png"), "again");
}

TEST_F(OutputDir, NeverFollowsALinkOutOfTheDirectory) {
    const std::string out = m_dir + "/out", elsewhere = m_dir + "/elsewhere";
    ASSERT_EQ(mkdir(out.c_str(), 0755), 0);
    ASSERT_EQ(mkdir(elsewhere.c_str(), 0755), 0);
    ASSERT_EQ(symlink(elsewhere.c_str(), (out + "/sub").c_str()), 0);
    ASSERT_EQ(symlink((elsewhere + "/target").c_str(), (out + "/file.txt").c_str()), 0);
    for (const bool force : {false, true}) {
        EXPECT_NE(write_output_files(out, {{"sub/x.txt", "x"}}, force), std::nullopt);
        EXPECT_NE(write_output_files(out, {{"file.txt", "x"}}, force), std::nullopt);
    }
    EXPECT_EQ(access((elsewhere + "/x.txt").c_str(), F_OK), -1);
    EXPECT_EQ(access((elsewhere + "/target").c_str(), F_OK), -1);
    // A hard link is replaced, never written through.
    std::ofstream(elsewhere + "/precious") << "keep";
    ASSERT_EQ(link((elsewhere + "/precious").c_str(), (out + "/hard.txt").c_str()), 0);
    EXPECT_EQ(write_output_files(out, {{"hard.txt", "new"}}, true), std::nullopt);
    EXPECT_EQ(read(elsewhere + "/precious"), "keep");
    EXPECT_EQ(read(out + "/hard.txt"), "new");
    // Paths that escape are refused before anything is opened.
    EXPECT_NE(write_output_files(out, {{"../escape.txt", "x"}}, true), std::nullopt);
    EXPECT_EQ(access((m_dir + "/escape.txt").c_str(), F_OK), -1);
}

}  // namespace
}  // namespace safepy

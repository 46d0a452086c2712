#include "envelope.hpp"

#include "safepy/safepy.hpp"

#include <gtest/gtest.h>

namespace safepy {
namespace {

TEST(ResultJson, AcceptsObjectsAndArrays) {
    EXPECT_EQ(validate_result_json(R"({"a": [1, 2.5, "x", null, true]})"), std::nullopt);
    EXPECT_EQ(validate_result_json("[]"), std::nullopt);
    EXPECT_EQ(validate_result_json("  {}\n"), std::nullopt);
}

TEST(ResultJson, KeepsBigIntegersAsText) {
    const std::string big = "[123456789012345678901234567890123456789012345678901234567890]";
    EXPECT_EQ(validate_result_json(big), std::nullopt);
    const std::string huge = "[1" + std::string(400, '0') + "]";
    EXPECT_EQ(validate_result_json(huge), std::nullopt);
}

TEST(ResultJson, RejectsScalarsAndNonStrictJson) {
    EXPECT_NE(validate_result_json("\"text\""), std::nullopt);
    EXPECT_NE(validate_result_json("42"), std::nullopt);
    EXPECT_NE(validate_result_json("null"), std::nullopt);
    EXPECT_NE(validate_result_json("[NaN]"), std::nullopt);
    EXPECT_NE(validate_result_json("[Infinity]"), std::nullopt);
    EXPECT_NE(validate_result_json("{'a': 1}"), std::nullopt);
    EXPECT_NE(validate_result_json("[1,]"), std::nullopt);
    EXPECT_NE(validate_result_json("[1] [2]"), std::nullopt);
    EXPECT_NE(validate_result_json("[1] x"), std::nullopt);
    EXPECT_NE(validate_result_json("[/* c */ 1]"), std::nullopt);
    EXPECT_NE(validate_result_json(""), std::nullopt);
    EXPECT_NE(validate_result_json("[\"\xff\"]"), std::nullopt);  // invalid UTF-8 in a string
}

TEST(ResultJson, RejectsDuplicateKeysInAnyObject) {
    // Python serialises {1: "a", "1": "b"} with two "1" keys.
    const auto top = validate_result_json(R"({"1": "a", "1": "b"})");
    ASSERT_NE(top, std::nullopt);
    EXPECT_NE(top->find("duplicate key \"1\""), std::string::npos) << *top;
    EXPECT_NE(validate_result_json(R"([{"x": 1}, {"a": {"k": 1, "j": 2, "k": 3}}])"), std::nullopt);
    // Escapes are compared decoded: "\u0061" is "a".
    EXPECT_NE(validate_result_json(R"({"a": 1, "\u0061": 2})"), std::nullopt);
    // The same key in sibling or nested objects is fine.
    EXPECT_EQ(validate_result_json(R"([{"a": 1}, {"a": 2}, {"a": {"a": 3}}])"), std::nullopt);
    EXPECT_EQ(validate_result_json(R"({"a": 1, "A": 2, "a ": 3})"), std::nullopt);
}

TEST(ResultJson, EnforcesTheDepthLimit) {
    const auto nested = [](int depth) { return std::string(depth, '[') + std::string(depth, ']'); };
    EXPECT_EQ(validate_result_json(nested(200)), std::nullopt);
    EXPECT_NE(validate_result_json(nested(k_result_max_depth + 1)), std::nullopt);
    EXPECT_NE(validate_result_json(nested(100000)), std::nullopt);
}

TEST(Utf8, KeepsValidTextAndReplacesInvalidBytes) {
    EXPECT_EQ(repair_utf8("plain ascii"), "plain ascii");
    EXPECT_EQ(repair_utf8("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"), "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80");
    EXPECT_EQ(repair_utf8("a\xffz"), "a\xef\xbf\xbdz");
    EXPECT_EQ(repair_utf8("\xc3"), "\xef\xbf\xbd");              // truncated sequence
    EXPECT_EQ(repair_utf8("\xed\xa0\x80"), "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");  // surrogate
    EXPECT_EQ(repair_utf8("\xc0\xaf"), "\xef\xbf\xbd\xef\xbf\xbd");  // overlong
    EXPECT_EQ(repair_utf8(std::string("a\0b", 3)), std::string("a\0b", 3));
}

Outcome success(std::string result, std::string out) {
    Outcome outcome;
    outcome.status = Status::ok;
    outcome.result_json = std::move(result);
    outcome.stdout_bytes = std::move(out);
    outcome.script_started = true;
    return outcome;
}

TEST(Envelope, SuccessIsExactlyResultAndStdout) {
    EXPECT_EQ(envelope_json(success(R"({"result": "Hello, World!"})", "")),
              R"({"result": {"result": "Hello, World!"}, "stdout": ""})");
    EXPECT_EQ(envelope_json(success("[1]", "line\n\"q\"\t")), R"({"result": [1], "stdout": "line\n\"q\"\t"})");
}

TEST(Envelope, ReplacesInvalidUtf8AndEscapesControlCharacters) {
    const std::string envelope = envelope_json(success("[]", std::string("a\xff\x01\0z", 5)));
    EXPECT_EQ(envelope, "{\"result\": [], \"stdout\": \"a\xef\xbf\xbd\\u0001\\u0000z\"}");
}

TEST(Envelope, ErrorsCarryStatusAndOutputOnlyWhenTheScriptRan) {
    Outcome outcome;
    outcome.status = Status::invalid_request;
    outcome.error = "Script contains a NUL byte";
    EXPECT_EQ(envelope_json(outcome), R"({"error": "Script contains a NUL byte", "status": "invalid_request"})");
    outcome.status = Status::invalid_script;
    outcome.error = "Script must contain a main() function";
    outcome.script_started = true;
    outcome.stdout_bytes = "hi\n";
    outcome.stderr_bytes = "warn\n";
    EXPECT_EQ(envelope_json(outcome), R"({"error": "Script must contain a main() function", "status": "invalid_script", )"
                                      R"("stdout": "hi\n", "stderr": "warn\n"})");
}

TEST(Envelope, DetailsAddStatusAndUsage) {
    Outcome outcome = success("{}", "");
    outcome.usage.wall = std::chrono::milliseconds(42);
    outcome.jail = "bwrap";
    const std::string envelope = envelope_json(outcome, true);
    EXPECT_EQ(envelope.rfind(R"({"result": {}, "stdout": "", "status": "ok", "usage": {)", 0), 0u) << envelope;
    EXPECT_NE(envelope.find(R"("wall_ms": 42)"), std::string::npos) << envelope;
    EXPECT_NE(envelope.find(R"("jail": "bwrap")"), std::string::npos) << envelope;
}

TEST(StringList, ParsesOnlyArraysOfStrings) {
    EXPECT_EQ(parse_string_list(R"(["3.11", "1.24"])"), (std::vector<std::string>{"3.11", "1.24"}));
    EXPECT_TRUE(parse_string_list(R"(["a", 1])").empty());
    EXPECT_TRUE(parse_string_list("{").empty());
}

}  // namespace
}  // namespace safepy

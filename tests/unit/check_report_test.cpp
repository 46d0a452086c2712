#include "safepy/check.hpp"

#include <gtest/gtest.h>

namespace safepy {
namespace {

TEST(CheckReport, GithubAnnotationsEscapeWhatWouldEndThem) {
    const std::vector<CheckedFile> files = {{"a,b:c.py", Status::invalid_script, "100% bad\nline two (line 7)"},
                                            {"ok.py", Status::ok, ""}};
    EXPECT_EQ(check_report(files, CheckFormat::github),
              "::error file=a%2Cb%3Ac.py,line=7,title=safepy invalid_script::100%25 bad%0Aline two (line 7)\n"
              "safepy check: 2 checked, 1 failed\n");
}

TEST(CheckReport, JunitEscapesMarkupAndDropsWhatXmlCannotHold) {
    const std::vector<CheckedFile> files = {{"<x>&\"'.py", Status::script_error, std::string("a\x01z \xff <b>", 9)},
                                            {"s.py", Status::sandbox_error, "jail failed"}};
    const std::string xml = check_report(files, CheckFormat::junit);
    EXPECT_NE(xml.find("name=\"&lt;x&gt;&amp;&quot;&apos;.py\""), std::string::npos) << xml;
    EXPECT_NE(xml.find("message=\"a\xEF\xBF\xBDz \xEF\xBF\xBD &lt;b&gt;\""), std::string::npos) << xml;
    EXPECT_NE(xml.find("tests=\"2\" failures=\"1\" errors=\"1\""), std::string::npos) << xml;
    EXPECT_NE(xml.find("<error type=\"sandbox_error\""), std::string::npos) << xml;
    EXPECT_EQ(xml.find('\x01'), std::string::npos);
}

TEST(CheckReport, ExitCodeIsTheWorstAndLinesAreFound) {
    EXPECT_EQ(check_exit_code({}), 0);
    EXPECT_EQ(check_exit_code({{"a", Status::ok, ""}, {"b", Status::invalid_script, ""}, {"c", Status::sandbox_error, ""}}), 3);
    EXPECT_EQ(error_line("SyntaxError: invalid syntax (line 12)"), 12);
    EXPECT_EQ(error_line("no line"), std::nullopt);
    EXPECT_EQ(error_line("(line x)"), std::nullopt);
    EXPECT_EQ(parse_check_format("junit"), CheckFormat::junit);
    EXPECT_EQ(parse_check_format("xml"), std::nullopt);
}

}  // namespace
}  // namespace safepy

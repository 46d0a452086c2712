#include "safepy/safepy.hpp"

#include <gtest/gtest.h>

namespace safepy {
namespace {

TEST(Limits, DefaultsAreWithinDefaultMaxima) {
    EXPECT_EQ(check_limits(Limits{}, default_maxima()), std::nullopt);
}

TEST(Limits, DefaultsMatchTheDocumentedValues) {
    const Limits limits;
    EXPECT_EQ(limits.wall, std::chrono::seconds(10));
    EXPECT_EQ(limits.memory_bytes, 512u << 20);
    EXPECT_EQ(limits.stdout_bytes, 1u << 20);
    EXPECT_EQ(limits.stderr_bytes, 1u << 20);
}

TEST(Limits, SetLimitByName) {
    Limits limits;
    EXPECT_EQ(set_limit(limits, "wall_ms", 2500, default_maxima()), std::nullopt);
    EXPECT_EQ(limits.wall, std::chrono::milliseconds(2500));
    EXPECT_EQ(set_limit(limits, "memory_bytes", 64u << 20, default_maxima()), std::nullopt);
    EXPECT_EQ(limits.memory_bytes, 64u << 20);
    EXPECT_EQ(set_limit(limits, "processes", 16, default_maxima()), std::nullopt);
    EXPECT_EQ(limits.processes, 16u);
    EXPECT_EQ(get_limit(limits, "processes"), 16u);
}

TEST(Limits, RejectsUnknownNamesZeroAndValuesAboveTheMaxima) {
    Limits limits;
    const Limits before = limits;
    EXPECT_NE(set_limit(limits, "no_such_limit", 1, default_maxima()), std::nullopt);
    EXPECT_NE(set_limit(limits, "wall_ms", 0, default_maxima()), std::nullopt);
    Limits maxima = default_maxima();
    maxima.wall = std::chrono::seconds(20);
    const auto error = set_limit(limits, "wall_ms", 20'001, maxima);
    ASSERT_NE(error, std::nullopt);
    EXPECT_NE(error->find("20000"), std::string::npos) << *error;
    EXPECT_EQ(limits, before);  // a rejected value changes nothing
    EXPECT_EQ(set_limit(limits, "wall_ms", 20'000, maxima), std::nullopt);
}

TEST(Limits, MinimumsKeepTheJailAbleToStart) {
    Limits limits;
    EXPECT_NE(set_limit(limits, "processes", 1, default_maxima()), std::nullopt);
    EXPECT_NE(set_limit(limits, "memory_bytes", 1024, default_maxima()), std::nullopt);
}

TEST(Limits, CheckLimitsFindsAnyFieldOverTheMaxima) {
    Limits limits;
    limits.stdout_bytes = default_maxima().stdout_bytes + 1;
    const auto error = check_limits(limits, default_maxima());
    ASSERT_NE(error, std::nullopt);
    EXPECT_NE(error->find("stdout_bytes"), std::string::npos);
    Limits negative;
    negative.wall = std::chrono::milliseconds(-5);
    EXPECT_NE(check_limits(negative, default_maxima()), std::nullopt);
}

TEST(Limits, EveryFieldHasANameAndSummary) {
    EXPECT_EQ(limit_fields().size(), 16u);
    for (const auto& field : limit_fields()) {
        EXPECT_FALSE(field.summary.empty()) << field.name;
        EXPECT_TRUE(get_limit(Limits{}, field.name).has_value()) << field.name;
    }
}

TEST(Quantity, ParsesDigitsAndBinarySuffixes) {
    EXPECT_EQ(parse_quantity("0"), 0u);
    EXPECT_EQ(parse_quantity("1500"), 1500u);
    EXPECT_EQ(parse_quantity("64K"), 64u << 10);
    EXPECT_EQ(parse_quantity("512M"), 512u << 20);
    EXPECT_EQ(parse_quantity("2g"), 2ull << 30);
}

TEST(Quantity, RejectsMalformedAndOverflowingInput) {
    for (const char* text : {"", "M", "-1", "1.5", "12x", " 1", "1 ", "99999999999999999999", "17179869184G"}) {
        EXPECT_EQ(parse_quantity(text), std::nullopt) << text;
    }
}

TEST(Status, NamesRoundTripAndExitCodesAreDocumented) {
    for (auto status : {Status::ok, Status::invalid_request, Status::invalid_script, Status::script_error,
                        Status::invalid_result, Status::timeout, Status::memory_limit, Status::output_limit,
                        Status::sandbox_error}) {
        EXPECT_EQ(parse_status(status_name(status)), status);
    }
    EXPECT_EQ(status_name(Status::memory_limit), "memory_limit");
    EXPECT_EQ(exit_code(Status::ok), 0);
    EXPECT_EQ(exit_code(Status::script_error), 1);
    EXPECT_EQ(exit_code(Status::timeout), 1);
    EXPECT_EQ(exit_code(Status::invalid_script), 1);
    EXPECT_EQ(exit_code(Status::invalid_request), 2);
    EXPECT_EQ(exit_code(Status::sandbox_error), 3);
    EXPECT_EQ(parse_status("nope"), std::nullopt);
}

TEST(Jail, NamesParse) {
    EXPECT_EQ(parse_jail("auto"), JailKind::automatic);
    EXPECT_EQ(parse_jail("nsjail"), JailKind::nsjail);
    EXPECT_EQ(parse_jail("bwrap"), JailKind::bwrap);
    EXPECT_EQ(parse_jail("docker"), std::nullopt);
}


// The Cloud Run recipe: 2 GiB, 2 CPUs, concurrency 2, warm mode.
HostResources small_host() {
    HostResources host;
    host.cpus = 2;
    host.cpus_source = "test";
    host.memory_bytes = 2ull << 30;
    host.memory_source = "test";
    return host;
}

TEST(HostMaxima, AnEvenShareOfMemoryAfterTheReserve) {
    const Limits maxima = host_maxima(default_maxima(), small_host(), 2, true);
    const std::uint64_t reserve = memory_reserve_bytes(2, true);
    EXPECT_EQ(maxima.memory_bytes, ((2ull << 30) - reserve) / 16 * 15 / 2);
    EXPECT_EQ(maxima.tmp_bytes, maxima.memory_bytes);  // /tmp is memory
    EXPECT_EQ(maxima.cpu_cores, 2u);
    EXPECT_EQ(maxima.wall, default_maxima().wall);
    // Two runs at their maxima, and safepy itself, fit.
    EXPECT_EQ(check_fits(maxima, small_host(), 2, true), std::nullopt);
    // A big host is held to the absolute ceilings.
    HostResources big = small_host();
    big.memory_bytes = 1ull << 40;
    big.cpus = 4096;
    EXPECT_EQ(host_maxima(default_maxima(), big, 1, false).memory_bytes, default_maxima().memory_bytes);
    EXPECT_EQ(host_maxima(default_maxima(), big, 1, false).cpu_cores, default_maxima().cpu_cores);
}

TEST(HostMaxima, MaximaThatCannotAllFitAreRefused) {
    Limits maxima = default_maxima();  // 8 GiB a run
    maxima.cpu_cores = 2;
    const auto error = check_fits(maxima, small_host(), 2, true);
    ASSERT_NE(error, std::nullopt);
    EXPECT_NE(error->find("2 concurrent runs"), std::string::npos) << *error;
    EXPECT_NE(error->find("test"), std::string::npos) << *error;  // where the figure came from
    // A product that wraps around is refused, never taken as small.
    Limits huge = default_maxima();
    huge.memory_bytes = 1ull << 62;
    huge.cpu_cores = 1;
    EXPECT_NE(check_fits(huge, small_host(), 8, false), std::nullopt);
    maxima = host_maxima(default_maxima(), small_host(), 2, true);
    maxima.cpu_cores = 3;
    EXPECT_NE(check_fits(maxima, small_host(), 2, true), std::nullopt);
}

TEST(HostMaxima, DefaultsAreLoweredToFit) {
    Limits maxima = default_maxima();
    maxima.memory_bytes = 256u << 20;
    const Limits fitted = fit_defaults(Limits{}, maxima);
    EXPECT_EQ(fitted.memory_bytes, 256u << 20);
    EXPECT_EQ(fitted.wall, Limits{}.wall);
    EXPECT_EQ(check_limits(fitted, maxima), std::nullopt);
}

TEST(HostMaxima, TheHostIsRead) {
    const HostResources host = read_host_resources();
    EXPECT_GE(host.cpus, 1u);
    EXPECT_GT(host.memory_bytes, 0u);
    EXPECT_FALSE(host.memory_source.empty());
    EXPECT_FALSE(host.cpus_source.empty());
}

}  // namespace
}  // namespace safepy

#include "safepy/options.hpp"

namespace safepy {
namespace {

TEST(TypedLimits, ParseQuantitiesAndNameTheFlag) {
    Limits limits;
    EXPECT_EQ(apply_typed_limits({{"memory_bytes", "64M"}, {"wall_ms", "2000"}}, "--", limits, default_maxima()),
              std::nullopt);
    EXPECT_EQ(limits.memory_bytes, 64u << 20);
    EXPECT_EQ(limits.wall, std::chrono::milliseconds(2000));
    EXPECT_EQ(apply_typed_limits({{"wall_ms", "soon"}}, "--max-", limits, default_maxima()),
              "--max-wall-ms: not a number: soon");
    const auto error = apply_typed_limits({{"wall_ms", "999999999"}}, "--", limits, default_maxima());
    ASSERT_TRUE(error);
    EXPECT_EQ(error->rfind("--wall-ms: ", 0), 0u) << *error;
    EXPECT_EQ(limit_flag("stdout_bytes"), "stdout-bytes");
}

}  // namespace
}  // namespace safepy

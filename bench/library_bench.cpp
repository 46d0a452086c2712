// Google Benchmark for libsafepy: full Sandbox::run() under each available jail,
// and the pure parts (envelope serialisation, result validation, classification).
// nsjail is taken from SAFEPY_NSJAIL, else PATH; a jail whose probe run fails is skipped.
#include "classify.hpp"
#include "envelope.hpp"
#include "safepy/safepy.hpp"

#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <iterator>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#ifndef SAFEPY_BENCH_SCRIPTS_DIR
#error "SAFEPY_BENCH_SCRIPTS_DIR must name bench/scripts"
#endif

namespace {

struct Script {
    std::string name;
    safepy::Request request;
};

struct Jail {
    std::string name;
    std::unique_ptr<safepy::Sandbox> sandbox;
};

std::string read_text(const std::string& path) {
    std::ifstream file(path, std::ios::binary);
    if (!file) {
        throw std::runtime_error("cannot read " + path);
    }
    return {std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>()};
}

// A jail is benchmarked only when a probe run succeeds, so that a missing or
// unprivileged jail shows up as a note rather than as a row of errors.
std::optional<Jail> open_jail(safepy::JailKind kind, bool warm, const std::string& nsjail_path, std::string& why) {
    constexpr auto k_warm_start_timeout = std::chrono::seconds(60);
    safepy::Config config;
    config.jail = kind;
    config.nsjail_path = nsjail_path;
    config.warm = warm;
    auto sandbox = safepy::Sandbox::create(config, why);
    if (!sandbox) {
        return std::nullopt;
    }
    if (!sandbox->wait_ready(k_warm_start_timeout)) {
        why = "not ready after 60 s";
        for (const auto& note : sandbox->diagnostics(false).notes) {
            why += "; " + note;
        }
        return std::nullopt;
    }
    safepy::Request probe;
    probe.script = "def main():\n    return {}\n";
    const safepy::Outcome outcome = sandbox->run(probe);
    if (outcome.status != safepy::Status::ok) {
        why = "probe run failed: " + outcome.error + " " + outcome.detail;
        return std::nullopt;
    }
    return Jail{std::string(safepy::jail_name(kind)) + (warm ? "/warm" : "/cold"), std::move(sandbox)};
}

void bm_sandbox_run(benchmark::State& state, const safepy::Sandbox* sandbox, const safepy::Request* request) {
    std::uint64_t peak_memory_bytes = 0;
    for (auto _ : state) {
        safepy::Outcome outcome = sandbox->run(*request);
        if (outcome.status != safepy::Status::ok) {
            state.SkipWithError(("run failed: " + outcome.error + " " + outcome.detail).c_str());
            break;
        }
        peak_memory_bytes = std::max(peak_memory_bytes, outcome.usage.peak_memory_bytes);
        benchmark::DoNotOptimize(outcome);
    }
    state.counters["peak_memory_MiB"] = static_cast<double>(peak_memory_bytes) / (1 << 20);
}

// A JSON array of small objects, about `bytes` long: the shape of a typical large result.
std::string make_result_json(std::size_t bytes) {
    std::string json = "[";
    for (std::size_t i = 0; json.size() < bytes; ++i) {
        if (i > 0) {
            json += ", ";
        }
        json += R"({"id": )" + std::to_string(i) + R"(, "name": "row \u00e9 )" + std::to_string(i) +
                R"(", "value": )" + std::to_string(i * 0.25) + "}";
    }
    return json + "]";
}

// Printed text with quotes, tabs, multi-byte UTF-8 and one invalid byte per line,
// so that escaping and UTF-8 repair both do work.
std::string make_stdout(std::size_t bytes) {
    std::string text;
    for (std::size_t i = 0; text.size() < bytes; ++i) {
        text += "line " + std::to_string(i) + "\t\"quoted\" caf\xc3\xa9 \xe2\x82\xac \xff\n";
    }
    text.resize(bytes);
    return text;
}

void bm_envelope_json(benchmark::State& state) {
    safepy::Outcome outcome;
    outcome.status = safepy::Status::ok;
    outcome.script_started = true;
    outcome.result_json = make_result_json(static_cast<std::size_t>(state.range(0)));
    outcome.stdout_bytes = make_stdout(safepy::Limits{}.stdout_bytes);
    for (auto _ : state) {
        std::string envelope = safepy::envelope_json(outcome);
        benchmark::DoNotOptimize(envelope);
    }
    state.SetBytesProcessed(state.iterations() *
                            static_cast<std::int64_t>(outcome.result_json.size() + outcome.stdout_bytes.size()));
}

void bm_validate_result_json(benchmark::State& state) {
    const std::string json = make_result_json(static_cast<std::size_t>(state.range(0)));
    for (auto _ : state) {
        auto error = safepy::validate_result_json(json);
        if (error) {
            state.SkipWithError(error->c_str());
            break;
        }
        benchmark::DoNotOptimize(error);
    }
    state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(json.size()));
}

safepy::Evidence evidence_for(const std::string& channel, int wait_status) {
    safepy::Evidence evidence;
    evidence.report = safepy::parse_runner_report(channel);
    evidence.wait_status = wait_status;
    evidence.jail = "bwrap";
    return evidence;
}

void bm_classify(benchmark::State& state, const safepy::Evidence* evidence, safepy::Status expected) {
    for (auto _ : state) {
        safepy::Verdict verdict = safepy::classify(*evidence);
        if (verdict.status != expected) {
            state.SkipWithError("unexpected verdict");
            break;
        }
        benchmark::DoNotOptimize(verdict);
    }
}

void bm_parse_runner_report(benchmark::State& state, const std::string* channel) {
    for (auto _ : state) {
        safepy::RunnerReport report = safepy::parse_runner_report(*channel);
        benchmark::DoNotOptimize(report);
    }
    state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(channel->size()));
}

}  // namespace

int main(int argc, char** argv) {
    // --pure-only: no sandbox is created (CI's smoke run needs no jail and no warm template).
    bool pure_only = false;
    for (int i = 1; i < argc; ++i) {
        if (std::string_view(argv[i]) == "--pure-only") {
            pure_only = true;
            std::copy(argv + i + 1, argv + argc, argv + i);
            --argc;
            break;
        }
    }
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) {
        return 2;
    }

    std::vector<Script> scripts;
    try {
        for (const char* name : {"hello", "pandas_groupby"}) {
            Script script{name, {}};
            script.request.script = read_text(std::string(SAFEPY_BENCH_SCRIPTS_DIR) + "/" + name + ".py");
            scripts.push_back(std::move(script));
        }
    } catch (const std::exception& error) {
        std::cerr << "library_bench: " << error.what() << "\n";
        return 2;
    }

    std::vector<Jail> jails;
    const char* nsjail_env = std::getenv("SAFEPY_NSJAIL");
    const std::string nsjail_path = nsjail_env ? nsjail_env : "";
    for (auto kind : {safepy::JailKind::bwrap, safepy::JailKind::nsjail}) {
        for (bool warm : {false, true}) {
            if (pure_only) {
                break;
            }
            std::string why;
            if (auto jail = open_jail(kind, warm, nsjail_path, why)) {
                jails.push_back(std::move(*jail));
            } else {
                std::cerr << "library_bench: skipping " << safepy::jail_name(kind) << (warm ? " warm" : " cold")
                          << ": " << why
                          << (kind == safepy::JailKind::nsjail ? " (set SAFEPY_NSJAIL=/path/to/nsjail)" : "") << "\n";
            }
        }
    }

    for (const auto& jail : jails) {
        for (const auto& script : scripts) {
            const std::string name = "sandbox_run/" + script.name + "/" + jail.name;
            benchmark::RegisterBenchmark(name.c_str(), bm_sandbox_run, jail.sandbox.get(), &script.request)
                ->UseRealTime()
                ->Unit(benchmark::kMillisecond);
        }
    }

    const auto result_cap = static_cast<std::int64_t>(safepy::Limits{}.result_bytes);
    benchmark::RegisterBenchmark("envelope_json/ok", bm_envelope_json)
        ->Arg(64 << 10)
        ->Arg(1 << 20)
        ->Arg(result_cap)
        ->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark("validate_result_json", bm_validate_result_json)
        ->Arg(64 << 10)
        ->Arg(1 << 20)
        ->Arg(result_cap)
        ->Unit(benchmark::kMicrosecond);

    const std::string ok_channel = "SRok\n" + make_result_json(1 << 10);
    const safepy::Evidence ok = evidence_for(ok_channel, 0);
    const safepy::Evidence exception = evidence_for("SRexception\nZeroDivisionError: division by zero", 1 << 8);
    safepy::Evidence not_started = evidence_for("", 1 << 8);
    not_started.jail_log = std::string(64 << 10, 'x');
    safepy::Evidence timeout = evidence_for("S", 9);
    timeout.wall_timeout = true;
    benchmark::RegisterBenchmark("classify/ok", bm_classify, &ok, safepy::Status::ok);
    benchmark::RegisterBenchmark("classify/script_error", bm_classify, &exception, safepy::Status::script_error);
    benchmark::RegisterBenchmark("classify/timeout", bm_classify, &timeout, safepy::Status::timeout);
    benchmark::RegisterBenchmark("classify/sandbox_error", bm_classify, &not_started, safepy::Status::sandbox_error);
    benchmark::RegisterBenchmark("parse_runner_report/ok", bm_parse_runner_report, &ok_channel);

    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}

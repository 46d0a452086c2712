// The fixture for real scripts through the library under each jail and
// mode: one Sandbox per (jail, mode), shared by every test of the binary.
// bubblewrap must be present (these tests fail without it); nsjail runs when
// SAFEPY_NSJAIL names a binary or nsjail is on PATH, and is skipped otherwise.
#pragma once

#include "safepy/safepy.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <dirent.h>
#include <fcntl.h>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>
#include <unistd.h>

namespace safepy::jail_testing {

using namespace std::chrono_literals;

inline std::string read_script(const std::string& name) {
    std::ifstream in(std::string(SAFEPY_SCRIPTS_DIR) + "/" + name, std::ios::binary);
    EXPECT_TRUE(in) << "missing test script " << name;
    std::stringstream buffer;
    buffer << in.rdbuf();
    return buffer.str();
}

inline bool contains(const std::string& haystack, const std::string& needle) {
    return haystack.find(needle) != std::string::npos;
}

// A /proc file's contents; empty when the process is gone (reads of a dying
// process fail with ESRCH, which std::ifstream turns into an exception).
inline std::string read_proc_file(const std::string& path) {
    std::string text;
    const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return text;
    }
    char buffer[4096];
    ssize_t n;
    while ((n = read(fd, buffer, sizeof buffer)) > 0) {
        text.append(buffer, static_cast<std::size_t>(n));
    }
    close(fd);
    return text;
}

// Every process on the host whose command line contains `token`.
inline int host_processes_with(const std::string& token) {
    int count = 0;
    DIR* proc = opendir("/proc");
    while (dirent* entry = proc ? readdir(proc) : nullptr) {
        if (entry->d_name[0] < '0' || entry->d_name[0] > '9') {
            continue;
        }
        count += contains(read_proc_file(std::string("/proc/") + entry->d_name + "/cmdline"), token) ? 1 : 0;
    }
    if (proc) {
        closedir(proc);
    }
    return count;
}

inline std::string nsjail_path() {
    const char* configured = std::getenv("SAFEPY_NSJAIL");
    if (configured && *configured) {
        return configured;
    }
    for (const char* candidate : {"/usr/local/bin/nsjail", "/usr/bin/nsjail"}) {
        if (access(candidate, X_OK) == 0) {
            return candidate;
        }
    }
    return "";
}

struct JailMode {
    JailKind jail;
    bool warm;
};

class JailTest : public ::testing::TestWithParam<JailMode> {
protected:
    void SetUp() override {
        if (jail() == JailKind::nsjail && nsjail_path().empty()) {
            GTEST_SKIP() << "nsjail not found: set SAFEPY_NSJAIL=/path/to/nsjail to run the nsjail tests";
        }
        m_sandbox = sandbox_for(GetParam());
        ASSERT_NE(m_sandbox, nullptr) << "the jail must work here: " << m_create_error;
        ASSERT_TRUE(m_sandbox->wait_ready(30s)) << "the warm pool did not start";
    }

    JailKind jail() const { return GetParam().jail; }

    Config config() const {
        Config config;
        config.jail = jail();
        config.nsjail_path = nsjail_path();
        config.warm = GetParam().warm;
        return config;
    }

    Outcome run_file(const std::string& name, const Limits& limits = Limits{}) {
        return run_source(read_script(name), limits);
    }

    Outcome run_source(const std::string& script, const Limits& limits = Limits{}) {
        Request request;
        request.script = script;
        request.limits = limits;
        const auto started = std::chrono::steady_clock::now();
        Outcome outcome = m_sandbox->run(request);
        m_elapsed = std::chrono::steady_clock::now() - started;
        return outcome;
    }

    // Every run must end within its wall limit plus a margin for start-up and clean-up.
    void expect_bounded(const Limits& limits = Limits{}) {
        EXPECT_LT(m_elapsed, limits.wall + 3s);
    }

    static Limits short_limits() {
        Limits limits;
        limits.wall = 2s;
        return limits;
    }

    // For tests of what works, not of how fast: room for a slow host (the
    // emulated cgroup v2 guest of scripts/vm-test runs several times slower).
    static Limits roomy_limits() {
        Limits limits;
        limits.wall = 60s;
        limits.cpu = 60s;
        return limits;
    }

    Sandbox* m_sandbox = nullptr;
    std::chrono::steady_clock::duration m_elapsed{};
    std::string m_create_error;

private:
    Sandbox* sandbox_for(JailMode mode) {
        static std::mutex mutex;
        static std::map<std::pair<JailKind, bool>, std::unique_ptr<Sandbox>> sandboxes;
        std::lock_guard lock(mutex);
        auto& slot = sandboxes[{mode.jail, mode.warm}];
        if (!slot) {
            slot = Sandbox::create(config(), m_create_error);
        }
        return slot.get();
    }
};

inline std::string print_mode(const ::testing::TestParamInfo<JailMode>& info) {
    return std::string(jail_name(info.param.jail)) + (info.param.warm ? "_warm" : "_cold");
}

// The jails and modes every JailTest runs under.
inline auto all_jail_modes() {
    return ::testing::Values(JailMode{JailKind::bwrap, false}, JailMode{JailKind::bwrap, true},
                             JailMode{JailKind::nsjail, false}, JailMode{JailKind::nsjail, true});
}

}  // namespace safepy::jail_testing

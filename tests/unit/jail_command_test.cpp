#include "jail_command.hpp"

#include <gtest/gtest.h>

namespace safepy {
namespace {

JailPlan plan_for(JailKind kind) {
    JailPlan plan;
    plan.kind = kind;
    plan.jail_path = kind == JailKind::nsjail ? "/usr/local/bin/nsjail" : "/usr/bin/bwrap";
    plan.python_path = "/usr/bin/python3";
    plan.limits.tmp_bytes = 1 << 20;
    plan.mounts = default_mounts(HostLayout{});
    plan.seccomp_kafel = "KAFEL";
    plan.runner_source = "RUNNER";
    return plan;
}

const std::vector<std::string> k_environment_bwrap = {
    "--setenv", "PATH", "/usr/local/bin:/usr/bin:/bin", "--setenv", "HOME", "/tmp", "--setenv", "TMPDIR", "/tmp",
    "--setenv", "LANG", "C.UTF-8", "--setenv", "LC_ALL", "C.UTF-8", "--setenv", "OPENBLAS_NUM_THREADS", "1",
    "--setenv", "OMP_NUM_THREADS", "1", "--setenv", "MKL_NUM_THREADS", "1", "--setenv", "MPLBACKEND", "Agg",
    "--setenv", "MATPLOTLIBRC", "/usr/share/matplotlib/mpl-data/matplotlibrc"};

TEST(JailCommand, BwrapGolden) {
    std::vector<std::string> expected = {
        "/usr/bin/bwrap", "--unshare-all", "--unshare-user", "--disable-userns", "--as-pid-1", "--die-with-parent",
        "--new-session", "--cap-drop", "ALL", "--uid", "65534", "--gid", "65534", "--hostname", "safepy",
        "--ro-bind", "/usr", "/usr", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
        "--symlink", "usr/bin", "/bin", "--ro-bind", "/etc/alternatives", "/etc/alternatives",
        "--ro-bind", "/etc/ld.so.cache", "/etc/ld.so.cache", "--dev-bind", "/dev/null", "/dev/null",
        "--dev-bind", "/dev/zero", "/dev/zero", "--dev-bind", "/dev/urandom", "/dev/urandom",
        "--symlink", "/tmp", "/dev/shm", "--proc", "/proc", "--remount-ro", "/proc", "--size", "1048576", "--tmpfs", "/tmp",
        "--chdir", "/tmp", "--remount-ro", "/", "--clearenv"};
    expected.insert(expected.end(), k_environment_bwrap.begin(), k_environment_bwrap.end());
    for (const char* word : {"--seccomp", "5", "--", "/usr/bin/python3", "-I", "-B", "-u", "-c", "RUNNER", "run", "3", "4"}) {
        expected.push_back(word);
    }
    EXPECT_EQ(jail_argv(plan_for(JailKind::bwrap)), expected);
}

TEST(JailCommand, NsjailGolden) {
    JailPlan plan = plan_for(JailKind::nsjail);
    plan.mode = Mode::check;
    plan.uid = 1000;
    plan.gid = 1001;
    std::vector<std::string> expected = {
        "/usr/local/bin/nsjail", "--config", "/proc/self/fd/5", "--log_fd", "6", "--user", "1000:1000:1",
        "--group", "1001:1001:1", "--bindmount_ro", "/usr:/usr", "--symlink", "usr/lib:/lib",
        "--symlink", "usr/lib64:/lib64", "--symlink", "usr/bin:/bin", "--bindmount_ro",
        "/etc/alternatives:/etc/alternatives", "--bindmount_ro", "/etc/ld.so.cache:/etc/ld.so.cache",
        "--bindmount", "/dev/null:/dev/null", "--bindmount", "/dev/zero:/dev/zero", "--bindmount",
        "/dev/urandom:/dev/urandom", "--symlink", "/tmp:/dev/shm", "--mount", "none:/tmp:tmpfs:size=1048576",
        "--cwd", "/tmp"};
    for (const auto& entry : sandbox_environment()) {
        expected.push_back("--env");
        expected.push_back(entry);
    }
    for (const char* word : {"--pass_fd", "3", "--pass_fd", "4", "--seccomp_string", "KAFEL", "--",
                             "/usr/bin/python3", "-I", "-B", "-u", "-c", "RUNNER", "check", "3", "4"}) {
        expected.push_back(word);
    }
    EXPECT_EQ(jail_argv(plan), expected);
}

TEST(JailCommand, NonMergedHostsBindDirectoriesInsteadOfLinks) {
    HostLayout host;
    host.lib_is_link = false;
    host.bin_is_link = false;
    host.lib64_exists = false;
    host.has_ld_cache = false;
    const auto mounts = default_mounts(host);
    ASSERT_GE(mounts.size(), 3u);
    EXPECT_EQ(mounts[1].kind, MountEntry::Kind::read_only);
    EXPECT_EQ(mounts[1].source, "/lib");
    EXPECT_EQ(mounts[2].source, "/bin");
    for (const auto& mount : mounts) {
        EXPECT_NE(mount.target, "/lib64");
        EXPECT_NE(mount.target, "/etc/ld.so.cache");
    }
}

TEST(JailCommand, NothingWritableIsMountedFromTheHost) {
    for (const auto& mount : default_mounts(HostLayout{})) {
        if (mount.kind == MountEntry::Kind::device) {
            EXPECT_EQ(mount.source.rfind("/dev/", 0), 0u) << mount.source;
        }
        EXPECT_NE(mount.source, "/");
        EXPECT_NE(mount.source, "/etc");
        EXPECT_NE(mount.source, "/home");
    }
}

TEST(JailCommand, EnvironmentIsAFixedAllowList) {
    setenv("SAFEPY_TEST_SECRET", "hunter2", 1);
    for (const auto& entry : sandbox_environment()) {
        EXPECT_EQ(entry.find("SAFEPY_TEST_SECRET"), std::string::npos);
        EXPECT_NE(entry.find('='), std::string::npos);
    }
    unsetenv("SAFEPY_TEST_SECRET");
}

TEST(JailCommand, TmpSizeFollowsTheLimit) {
    JailPlan plan = plan_for(JailKind::bwrap);
    plan.limits.tmp_bytes = 12345;
    const auto argv = jail_argv(plan);
    const auto size = std::find(argv.begin(), argv.end(), "--size");
    ASSERT_NE(size, argv.end());
    EXPECT_EQ(*(size + 1), "12345");
}

}  // namespace
}  // namespace safepy

// The pure half of the cgroup set-up: reading /proc/self/cgroup and deciding
// the cgroup v2 leaf move, or why there can be no per-run cgroup.
#include "cgroup.hpp"

#include <gtest/gtest.h>

namespace safepy {
namespace {

const char k_hybrid[] =
    "13:misc:/\n"
    "12:pids:/user.slice/user-0.slice/session-3.scope\n"
    "5:cpu,cpuacct:/user.slice\n"
    "4:memory:/user.slice/user-0.slice/session-3.scope\n"
    "1:name=systemd:/user.slice/user-0.slice/session-3.scope\n"
    "0::/user.slice/user-0.slice/session-3.scope\n";

TEST(CgroupPath, ReadsTheV2EntryAndEachV1Controller) {
    EXPECT_EQ(cgroup_path_for("0::/system.slice/safepy.service\n", ""), "/system.slice/safepy.service");
    EXPECT_EQ(cgroup_path_for(k_hybrid, ""), "/user.slice/user-0.slice/session-3.scope");
    EXPECT_EQ(cgroup_path_for(k_hybrid, "memory"), "/user.slice/user-0.slice/session-3.scope");
    EXPECT_EQ(cgroup_path_for(k_hybrid, "cpuacct"), "/user.slice");
    EXPECT_EQ(cgroup_path_for(k_hybrid, "misc"), "/");
}

TEST(CgroupPath, ANamedV1HierarchyIsNotTheV2Entry) {
    EXPECT_EQ(cgroup_path_for("1:name=systemd:/a\n", ""), "/");
    EXPECT_EQ(cgroup_path_for("1:name=systemd:/a\n", "name=systemd"), "/a");
}

TEST(CgroupPath, MissingOrMalformedLinesGiveTheRoot) {
    EXPECT_EQ(cgroup_path_for("", ""), "/");
    EXPECT_EQ(cgroup_path_for("garbage\n0:\n", ""), "/");
    EXPECT_EQ(cgroup_path_for("0::\n", ""), "/");
    EXPECT_EQ(cgroup_path_for("12:pids:/x\n", "memory"), "/");
    // A cgroup namespace's root, as a container's PID 1 sees itself.
    EXPECT_EQ(cgroup_path_for("0::/\n", ""), "/");
}

TEST(CgroupHome, TheLeavesOfAnEarlierSetUpLeadBackToTheirParent) {
    EXPECT_EQ(v2_home_path("/system.slice/x.service"), "/system.slice/x.service");
    EXPECT_EQ(v2_home_path("/system.slice/x.service/safepy-server"), "/system.slice/x.service");
    EXPECT_EQ(v2_home_path("/user.slice/session-1.scope/safepy-other"), "/user.slice/session-1.scope");
    EXPECT_EQ(v2_home_path("/safepy-server"), "/");
    EXPECT_EQ(v2_home_path("/"), "/");
    // Only the exact names: a unit called safepy-server.service is a home of its own.
    EXPECT_EQ(v2_home_path("/system.slice/safepy-server.service"), "/system.slice/safepy-server.service");
    EXPECT_EQ(v2_home_path("/a/safepy"), "/a/safepy");
}

V2Observation delegated_service() {
    V2Observation observed;
    observed.home_dir = "/sys/fs/cgroup/system.slice/safepy.service";
    observed.self_listed = true;
    observed.writable = true;
    observed.controllers = "cpuset cpu io memory pids\n";
    observed.subtree_control = "\n";
    observed.self = 700;
    observed.home_pids = {700};
    return observed;
}

TEST(CgroupPlan, AloneInADelegatedCgroupSafepyMovesToALeafAndRunsGoBesideIt) {
    const V2Plan plan = plan_v2(delegated_service());
    EXPECT_EQ(plan.refusal, "");
    EXPECT_EQ(plan.server_leaf, "/sys/fs/cgroup/system.slice/safepy.service/safepy-server");
    EXPECT_TRUE(plan.other_pids.empty());
    EXPECT_EQ(plan.other_leaf, "");
    EXPECT_EQ(plan.enable, "+memory +pids");
    EXPECT_EQ(plan.optional_enable, "+cpu");
    EXPECT_EQ(plan.runs_dir, "/sys/fs/cgroup/system.slice/safepy.service/safepy");
    EXPECT_EQ(plan.runs_enable, "+memory +pids");
    EXPECT_EQ(plan.runs_optional_enable, "+cpu");
}

TEST(CgroupPlan, ProcessesSharingTheCgroupMoveToTheirOwnLeaf) {
    // A shell that stays (ExecStart=/bin/sh -c ...), a login shell, a
    // container's other processes: all would keep the controllers off.
    V2Observation observed = delegated_service();
    observed.home_pids = {650, 700, 701};
    const V2Plan plan = plan_v2(observed);
    EXPECT_EQ(plan.refusal, "");
    EXPECT_EQ(plan.server_leaf, "/sys/fs/cgroup/system.slice/safepy.service/safepy-server");
    EXPECT_EQ(plan.other_pids, (std::vector<pid_t>{650, 701}));
    EXPECT_EQ(plan.other_leaf, "/sys/fs/cgroup/system.slice/safepy.service/safepy-other");
    EXPECT_EQ(plan.enable, "+memory +pids");
}

TEST(CgroupPlan, AnEarlierSetUpIsReusedWithoutEnablingAgain) {
    // A second CLI run from the shell that the first one moved to safepy-other.
    V2Observation observed = delegated_service();
    observed.subtree_control = "cpu memory pids\n";
    observed.home_pids = {};
    const V2Plan plan = plan_v2(observed);
    EXPECT_EQ(plan.refusal, "");
    EXPECT_EQ(plan.enable, "");
    EXPECT_EQ(plan.optional_enable, "");
    EXPECT_EQ(plan.server_leaf, "/sys/fs/cgroup/system.slice/safepy.service/safepy-server");
    EXPECT_TRUE(plan.other_pids.empty());
}

TEST(CgroupPlan, TheRootCgroupNeedsNoMove) {
    V2Observation observed = delegated_service();
    observed.home_dir = "/sys/fs/cgroup";
    observed.home_is_root = true;
    observed.home_pids = {1, 700, 42};
    const V2Plan plan = plan_v2(observed);
    EXPECT_EQ(plan.refusal, "");
    EXPECT_EQ(plan.server_leaf, "");
    EXPECT_TRUE(plan.other_pids.empty());
    EXPECT_EQ(plan.runs_dir, "/sys/fs/cgroup/safepy");
}

TEST(CgroupPlan, WithoutCpuOnlyMemoryAndPidsAreEnabled) {
    V2Observation observed = delegated_service();
    observed.controllers = "memory pids";
    const V2Plan plan = plan_v2(observed);
    EXPECT_EQ(plan.refusal, "");
    EXPECT_EQ(plan.optional_enable, "");
    EXPECT_EQ(plan.runs_optional_enable, "");
}

TEST(CgroupPlan, RefusesWithoutTheMemoryOrPidsController) {
    V2Observation observed = delegated_service();
    observed.controllers = "cpu pids\n";
    V2Plan plan = plan_v2(observed);
    EXPECT_NE(plan.refusal.find("has no memory controller"), std::string::npos) << plan.refusal;
    EXPECT_NE(plan.refusal.find("Delegate=yes"), std::string::npos) << plan.refusal;
    EXPECT_EQ(plan.server_leaf, "");
    EXPECT_EQ(plan.runs_dir, "");

    observed.controllers = "memory";  // "memory" must not match "pids" by substring either
    plan = plan_v2(observed);
    EXPECT_NE(plan.refusal.find("has no pids controller"), std::string::npos) << plan.refusal;

    observed.controllers = "hugetlb memoryx pidsy";
    plan = plan_v2(observed);
    EXPECT_NE(plan.refusal.find("has no memory controller"), std::string::npos) << plan.refusal;
}

TEST(CgroupPlan, RefusesAReadOnlyOrUndelegatedCgroupAndSaysWhich) {
    V2Observation observed = delegated_service();
    observed.writable = false;
    observed.not_writable_errno = EROFS;
    V2Plan plan = plan_v2(observed);
    EXPECT_NE(plan.refusal.find("is not writable"), std::string::npos) << plan.refusal;
    EXPECT_NE(plan.refusal.find("mounted read-only"), std::string::npos) << plan.refusal;
    EXPECT_EQ(plan.server_leaf, "");

    observed.not_writable_errno = EACCES;
    plan = plan_v2(observed);
    EXPECT_NE(plan.refusal.find("Permission denied"), std::string::npos) << plan.refusal;
    EXPECT_EQ(plan.refusal.find("read-only"), std::string::npos) << plan.refusal;
}

TEST(CgroupPlan, RefusesProcessesItCannotSeeAndMovesNothing) {
    // cgroup.procs lists processes outside our PID namespace as 0.
    V2Observation observed = delegated_service();
    observed.home_pids = {0, 700, 12};
    const V2Plan plan = plan_v2(observed);
    EXPECT_NE(plan.refusal.find("outside safepy's PID namespace"), std::string::npos) << plan.refusal;
    EXPECT_EQ(plan.server_leaf, "");
    EXPECT_TRUE(plan.other_pids.empty());
    EXPECT_EQ(plan.enable, "");
}

TEST(CgroupPlan, RefusesAMountThatDoesNotShowItsOwnCgroup) {
    V2Observation observed = delegated_service();
    observed.self_listed = false;
    const V2Plan plan = plan_v2(observed);
    EXPECT_NE(plan.refusal.find("does not list this process"), std::string::npos) << plan.refusal;
}

TEST(ResourceControl, NamesRoundTrip) {
    EXPECT_EQ(parse_resource_control("cgroup"), ResourceControl::cgroup);
    EXPECT_EQ(parse_resource_control("rlimits"), ResourceControl::rlimits);
    EXPECT_EQ(parse_resource_control("auto"), std::nullopt);
    EXPECT_EQ(parse_resource_control(""), std::nullopt);
    EXPECT_EQ(resource_control_name(ResourceControl::rlimits), "rlimits");
    EXPECT_EQ(resource_control_name(ResourceControl::cgroup), "cgroup");
}

}  // namespace
}  // namespace safepy

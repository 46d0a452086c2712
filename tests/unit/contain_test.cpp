#include "contain.hpp"
#include "template_loop.hpp"
#include "embedded.hpp"
#include "spawn.hpp"
#include "warm_pool.hpp"

#include <gtest/gtest.h>

#include <cerrno>
#include <dlfcn.h>
#include <linux/filter.h>
#include <sched.h>
#include <string>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>
#include <vector>

namespace safepy {
namespace {

using contain::StepKind;

sock_filter k_allow_all[] = {BPF_STMT(BPF_RET | BPF_K, 0x7fff0000u)};

safepy_contain_request request_for(std::uint32_t stage) {
    safepy_contain_request request{};
    request.size = sizeof request;
    request.stage = stage;
    Limits limits;
    limits.tmp_bytes = 64ull << 20;
    limits.cpu = std::chrono::milliseconds(2500);
    limits.file_bytes = 1 << 20;
    limits.open_files = 77;
    limits.memory_bytes = 256ull << 20;
    limits.processes = 9;
    request.limits = run_limits(limits, Mode::check, false, false);
    request.stdout_fd = 11;
    request.stderr_fd = 12;
    request.result_fd = 13;
    request.script_fd = 14;
    request.bpf = k_allow_all;
    request.bpf_bytes = sizeof k_allow_all;
    return request;
}

std::vector<StepKind> kinds(const contain::Plan& plan) {
    std::vector<StepKind> out;
    for (std::size_t i = 0; i < plan.count; ++i) {
        out.push_back(plan.steps[i].kind);
    }
    return out;
}

contain::Plan plan_for(const safepy_contain_request& request) {
    contain::Plan plan;
    const char* why = nullptr;
    EXPECT_TRUE(contain::make_plan(request, 1234, 567, plan, why)) << (why ? why : "");
    return plan;
}

TEST(Contain, TheTemplateGivesItsNextChildAFreshPidNamespaceOnly) {
    const contain::Plan plan = plan_for(request_for(SAFEPY_STAGE_FORK));
    EXPECT_EQ(kinds(plan), std::vector<StepKind>{StepKind::fresh_pid_namespace});
}

TEST(Contain, APreparedChildUnsharesTheOtherNamespacesAndMountsItsOwnProc) {
    const contain::Plan plan = plan_for(request_for(SAFEPY_STAGE_PREPARE));
    EXPECT_EQ(kinds(plan), (std::vector<StepKind>{StepKind::unshare_namespaces, StepKind::make_mounts_private,
                                                  StepKind::mount_proc}));
    EXPECT_EQ(plan.namespaces,
              static_cast<unsigned long>(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS));
}

TEST(Contain, TheRunStageEndsWithNoNewPrivsThenSeccomp) {
    const contain::Plan plan = plan_for(request_for(SAFEPY_STAGE_RUN));
    const std::vector<StepKind> expected = {
        StepKind::arrange_descriptors, StepKind::mount_tmp,       StepKind::chdir_tmp,
        StepKind::unshare_cgroup,      StepKind::user_namespace,  StepKind::unshare_mount,
        StepKind::proc_read_only,      StepKind::drop_capabilities, StepKind::set_rlimits,
        StepKind::no_new_privs,        StepKind::seccomp};
    EXPECT_EQ(kinds(plan), expected);
    for (std::size_t i = 0; i < plan.count; ++i) {
        EXPECT_EQ(plan.steps[i].stage, SAFEPY_STAGE_RUN);
        EXPECT_NE(std::string(plan.steps[i].name), "");
    }
}

TEST(Contain, TheRunStageCarriesItsParameters) {
    const contain::Plan plan = plan_for(request_for(SAFEPY_STAGE_RUN));
    EXPECT_STREQ(plan.tmp_options, "size=67108864,mode=0755,uid=1234,gid=567");
    EXPECT_STREQ(plan.uid_map, "1234 1234 1");
    EXPECT_STREQ(plan.gid_map, "567 567 1");
    EXPECT_EQ(plan.descriptors[0], -1);  // /dev/null
    EXPECT_EQ(plan.descriptors[1], 11);
    EXPECT_EQ(plan.descriptors[2], 12);
    EXPECT_EQ(plan.descriptors[3], 13);
    EXPECT_EQ(plan.descriptors[4], 14);
    EXPECT_EQ(plan.bpf, static_cast<const void*>(k_allow_all));
    EXPECT_EQ(plan.bpf_bytes, sizeof k_allow_all);
    EXPECT_EQ(plan.rlimits.count, 4u);  // with a cgroup: no AS, no NPROC
}

TEST(Contain, MalformedRequestsAreRefused) {
    contain::Plan plan;
    const char* why = nullptr;
    auto refused = [&](safepy_contain_request request) {
        why = nullptr;
        return !contain::make_plan(request, 1, 1, plan, why) && why != nullptr;
    };
    auto request = request_for(SAFEPY_STAGE_RUN);
    request.size -= 1;
    EXPECT_TRUE(refused(request));
    request = request_for(7);
    EXPECT_TRUE(refused(request));
    request = request_for(SAFEPY_STAGE_RUN);
    request.limits.magic = 0;
    EXPECT_TRUE(refused(request));
    request = request_for(SAFEPY_STAGE_RUN);
    request.script_fd = -1;
    EXPECT_TRUE(refused(request));
    request = request_for(SAFEPY_STAGE_RUN);
    request.bpf = nullptr;
    EXPECT_TRUE(refused(request));
    request = request_for(SAFEPY_STAGE_RUN);
    request.bpf_bytes = 7;
    EXPECT_TRUE(refused(request));
    request = request_for(SAFEPY_STAGE_RUN);
    request.limits.tmp_bytes = ~0ull;  // still fits: 20 digits
    EXPECT_FALSE(refused(request));
}

TEST(Contain, RlimitsWithACgroupLeaveMemoryToIt) {
    Limits limits;
    limits.cpu = std::chrono::milliseconds(2001);
    limits.file_bytes = 100;
    limits.open_files = 20;
    const auto plan = contain::rlimit_plan(run_limits(limits, Mode::run, false, false));
    ASSERT_EQ(plan.count, 4u);
    // The library's CPU accounting ends the run at the limit; the rlimit is a
    // backstop a second later, and its hard limit one more.
    EXPECT_EQ(plan.entries[0].resource, RLIMIT_CPU);
    EXPECT_EQ(plan.entries[0].soft, 4u);
    EXPECT_EQ(plan.entries[0].hard, 5u);
    EXPECT_EQ(plan.entries[1].resource, RLIMIT_FSIZE);
    EXPECT_EQ(plan.entries[1].soft, 100u);
    EXPECT_EQ(plan.entries[2].resource, RLIMIT_NOFILE);
    EXPECT_EQ(plan.entries[2].hard, 20u);
    EXPECT_EQ(plan.entries[3].resource, RLIMIT_CORE);
    EXPECT_EQ(plan.entries[3].hard, 0u);
}

TEST(Contain, RlimitsWithoutACgroupStandInForIt) {
    Limits limits;
    limits.cpu = std::chrono::milliseconds(2001);
    limits.memory_bytes = 1 << 30;
    limits.processes = 12;
    const auto plan = contain::rlimit_plan(run_limits(limits, Mode::run, true, false));
    ASSERT_EQ(plan.count, 6u);
    EXPECT_EQ(plan.entries[0].soft, 3u);  // the rlimit is the limit
    EXPECT_EQ(plan.entries[4].resource, RLIMIT_AS);
    EXPECT_EQ(plan.entries[4].soft, 1u << 30);
    EXPECT_EQ(plan.entries[5].resource, RLIMIT_NPROC);
    EXPECT_EQ(plan.entries[5].hard, 12u);
}

TEST(Contain, ALongLivedProcessHasNoCpuLimit) {
    const auto plan = contain::rlimit_plan(run_limits(Limits{}, Mode::run, false, true));
    EXPECT_EQ(plan.entries[0].resource, RLIMIT_CPU);
    EXPECT_EQ(plan.entries[0].soft, RLIM_INFINITY);
    EXPECT_EQ(plan.entries[0].hard, RLIM_INFINITY);
}

TEST(Contain, TheTemplatePayloadFramesTheLibraryThenTheFilter) {
    const std::string payload = template_payload("LIBRARY", "BPF!");
    ASSERT_EQ(payload.size(), 8u + 7 + 4);
    EXPECT_EQ(payload.substr(0, 8), std::string("\x07\0\0\0\0\0\0\0", 8));
    EXPECT_EQ(payload.substr(8), "LIBRARYBPF!");
}

// The library the template loads is the one built from contain.cpp, loadable
// from memory as the template loads it, and it checks what it is given.
TEST(Contain, TheEmbeddedLibraryLoadsFromMemoryAndRefusesBadRequests) {
    const std::string_view library = embedded_contain_library();
    ASSERT_GT(library.size(), 1000u);
    EXPECT_EQ(library.substr(0, 4), "\x7f" "ELF");
    const int fd = memfd_create("safepy-contain-test", MFD_CLOEXEC);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(write(fd, library.data(), library.size()), static_cast<ssize_t>(library.size()));
    void* handle = dlopen(("/proc/self/fd/" + std::to_string(fd)).c_str(), RTLD_NOW | RTLD_LOCAL);
    close(fd);
    ASSERT_NE(handle, nullptr) << dlerror();
    using Entry = int (*)(const safepy_contain_request*, char*, size_t);
    auto entry = reinterpret_cast<Entry>(dlsym(handle, "safepy_contain"));
    ASSERT_NE(entry, nullptr);
    auto request = request_for(SAFEPY_STAGE_RUN);
    request.limits.magic = 1;
    char error[128] = "";
    EXPECT_EQ(entry(&request, error, sizeof error), EINVAL);
    EXPECT_NE(std::string(error).find("safepy_run_limits"), std::string::npos) << error;
    // The template's loop refuses to serve without its control socket and filter.
    using Serve = int (*)(int, const void*, uint64_t, const safepy_reseed*, uint32_t, char*, size_t);
    auto serve = reinterpret_cast<Serve>(dlsym(handle, "safepy_template_serve"));
    ASSERT_NE(serve, nullptr);
    EXPECT_EQ(serve(-1, nullptr, 0, nullptr, 0, error, sizeof error), -EINVAL);
    EXPECT_NE(std::string(error).find("control socket"), std::string::npos) << error;
    const char filter[8] = {};
    const safepy_reseed keyless{nullptr, 8, nullptr, 0, 0};
    EXPECT_EQ(serve(0, filter, sizeof filter, &keyless, 1, error, sizeof error), -EINVAL);
    EXPECT_NE(std::string(error).find("no key"), std::string::npos) << error;
    // Only the entry points are exported.
    EXPECT_EQ(dlsym(handle, "_ZN6safepy7contain7executeERKNS0_4PlanE"), nullptr);
    dlclose(handle);
}

}  // namespace
}  // namespace safepy

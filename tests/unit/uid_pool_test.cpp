#include "uid_pool.hpp"

#include <gtest/gtest.h>

#include <cstdlib>
#include <set>
#include <stdlib.h>
#include <string>
#include <sys/wait.h>
#include <unistd.h>

namespace safepy {
namespace {

TEST(UidPool, EachLeaseIsUniqueUntilReleased) {
    UidPool pool(200000, 3, "");
    std::string error;
    auto a = pool.acquire(error);
    auto b = pool.acquire(error);
    auto c = pool.acquire(error);
    ASSERT_TRUE(a && b && c) << error;
    EXPECT_EQ((std::set<std::uint32_t>{a->uid(), b->uid(), c->uid()}), (std::set<std::uint32_t>{200000, 200001, 200002}));
    EXPECT_FALSE(pool.acquire(error));
    EXPECT_NE(error.find("in use"), std::string::npos) << error;
    const std::uint32_t freed = b->uid();
    b.reset();
    auto again = pool.acquire(error);
    ASSERT_TRUE(again) << error;
    EXPECT_EQ(again->uid(), freed);
}

// Another process holding a uid's lock file keeps it from this one.
TEST(UidPool, LocksAreSharedAcrossProcesses) {
    char dir_template[] = "/tmp/safepy-uids-XXXXXX";
    ASSERT_NE(mkdtemp(dir_template), nullptr);
    const std::string dir = std::string(dir_template) + "/locks";
    int ready[2], done[2];
    ASSERT_EQ(pipe(ready), 0);
    ASSERT_EQ(pipe(done), 0);
    const pid_t child = fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
        UidPool pool(300000, 2, dir);
        std::string error;
        auto held = pool.acquire(error);
        const char byte = held ? static_cast<char>(held->uid() - 300000) : 'x';
        [[maybe_unused]] auto w = write(ready[1], &byte, 1);
        char wait;
        [[maybe_unused]] auto r = read(done[0], &wait, 1);
        _exit(0);
    }
    char held_index = 0;
    ASSERT_EQ(read(ready[0], &held_index, 1), 1);
    ASSERT_NE(held_index, 'x');
    UidPool pool(300000, 2, dir);
    std::string error;
    auto mine = pool.acquire(error);
    ASSERT_TRUE(mine) << error;
    EXPECT_NE(mine->uid(), 300000u + static_cast<unsigned>(held_index));
    EXPECT_FALSE(pool.acquire(error));  // the other one is the child's
    [[maybe_unused]] auto w = write(done[1], "x", 1);
    int status = 0;
    waitpid(child, &status, 0);
    auto freed = pool.acquire(error);  // the child is gone, and so is its lock
    ASSERT_TRUE(freed) << error;
    EXPECT_EQ(freed->uid(), 300000u + static_cast<unsigned>(held_index));
    EXPECT_NE(pool.lock_note().find(dir), std::string::npos);
    EXPECT_EQ(std::system(("rm -rf " + std::string(dir_template)).c_str()), 0);
}

}  // namespace
}  // namespace safepy

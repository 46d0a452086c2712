// Host uids for runs: each concurrent run gets one of its own, so that the
// kernel's per-uid counters (pipe buffer pages, descriptors in flight in unix
// sockets, inotify instances, mqueue bytes, RLIMIT_NPROC) are never shared
// between runs. A lock file per uid keeps two safepy processes on one host
// from handing out the same uid.
#pragma once

#include "fd.hpp"

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace safepy {

class UidPool;

// One uid (gid: the same number) held until destroyed.
class UidLease {
public:
    UidLease(UidLease&& other) noexcept
        : m_pool(std::exchange(other.m_pool, nullptr)), m_uid(other.m_uid), m_lock(std::move(other.m_lock)) {}
    UidLease& operator=(UidLease&& other) noexcept {
        std::swap(m_pool, other.m_pool);
        std::swap(m_uid, other.m_uid);
        std::swap(m_lock, other.m_lock);
        return *this;
    }
    ~UidLease();
    std::uint32_t uid() const { return m_uid; }

private:
    friend class UidPool;
    UidLease(UidPool* pool, std::uint32_t uid, Fd lock) : m_pool(pool), m_uid(uid), m_lock(std::move(lock)) {}
    UidPool* m_pool;  // not owned: takes the uid back
    std::uint32_t m_uid;
    Fd m_lock;
};

class UidPool {
public:
    // Uids [base, base + count); lock files in `lock_dir` (created 0700 when
    // missing; empty: this process only).
    UidPool(std::uint32_t base, std::uint32_t count, std::string lock_dir);
    UidPool(const UidPool&) = delete;
    UidPool& operator=(const UidPool&) = delete;

    // A uid no other run holds, in this process or another; empty with `error` when all are taken.
    std::optional<UidLease> acquire(std::string& error);

    std::uint32_t base() const { return m_base; }
    std::uint32_t count() const { return m_count; }
    // Where the cross-process locks live, or why there are none.
    const std::string& lock_note() const { return m_lock_note; }

private:
    friend class UidLease;
    void release(std::uint32_t uid);

    std::uint32_t m_base;
    std::uint32_t m_count;
    std::string m_lock_dir;
    std::string m_lock_note;
    std::mutex m_mutex;
    std::vector<bool> m_taken;
    std::uint32_t m_next = 0;  // where the next search starts: uids rotate, so a freed one rests
};

}  // namespace safepy

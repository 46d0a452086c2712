#include "uid_pool.hpp"

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

namespace safepy {

UidLease::~UidLease() {
    if (m_pool) {
        m_lock.reset();  // other processes may take it from now on
        m_pool->release(m_uid);
    }
}

UidPool::UidPool(std::uint32_t base, std::uint32_t count, std::string lock_dir)
    : m_base(base), m_count(count), m_lock_dir(std::move(lock_dir)), m_taken(count, false) {
    if (m_lock_dir.empty()) {
        m_lock_note = "uids are unique within this process only";
        return;
    }
    const auto parent = m_lock_dir.substr(0, m_lock_dir.rfind('/'));
    mkdir(parent.c_str(), 0755);
    if (mkdir(m_lock_dir.c_str(), 0700) != 0 && errno != EEXIST) {
        m_lock_note = "cannot create " + m_lock_dir + " (" + std::strerror(errno) +
                      "): uids are unique within this process only";
        m_lock_dir.clear();
        return;
    }
    m_lock_note = "locked across processes in " + m_lock_dir;
}

std::optional<UidLease> UidPool::acquire(std::string& error) {
    std::lock_guard lock(m_mutex);
    for (std::uint32_t tried = 0; tried < m_count; ++tried) {
        const std::uint32_t index = (m_next + tried) % m_count;
        if (m_taken[index]) {
            continue;
        }
        const std::uint32_t uid = m_base + index;
        Fd file;
        if (!m_lock_dir.empty()) {
            const std::string path = m_lock_dir + "/" + std::to_string(uid);
            file.reset(open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
            if (!file) {
                error = "cannot open " + path + ": " + std::strerror(errno);
                return std::nullopt;
            }
            if (flock(file.get(), LOCK_EX | LOCK_NB) != 0) {
                continue;  // another safepy process holds it
            }
        }
        m_taken[index] = true;
        m_next = (index + 1) % m_count;
        return UidLease(this, uid, std::move(file));
    }
    error = "all " + std::to_string(m_count) + " sandbox uids from " + std::to_string(m_base) + " are in use";
    return std::nullopt;
}

void UidPool::release(std::uint32_t uid) {
    std::lock_guard lock(m_mutex);
    m_taken[uid - m_base] = false;
}

}  // namespace safepy

// The warm template's protocol: fixed binary messages on SOCK_SEQPACKET
// sockets, one struct per message, native byte order (both ends are on this
// machine). lib/template.py mirrors every struct here as a ctypes.Structure;
// each side checks a message's size, magic and kind before using it.
//
//   host -> template (control socket)  safepy_message SPAWN + the slot socket
//   child -> host (slot socket)        safepy_message READY + SCM_CREDENTIALS
//   host -> child                      safepy_run_message + stdout, stderr, result, script
//   template -> host                   safepy_exit_message once it has reaped the child
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

extern "C" {

#define SAFEPY_PROTOCOL_MAGIC 0x73707931u /* "spy1" */

#define SAFEPY_MESSAGE_SPAWN 1u
#define SAFEPY_MESSAGE_READY 2u
#define SAFEPY_MESSAGE_RUN 3u
#define SAFEPY_MESSAGE_EXIT 4u

#define SAFEPY_MODE_RUN 0u
#define SAFEPY_MODE_CHECK 1u

// The limits of one run, as lib/contain.cpp applies them.
struct safepy_run_limits {
    uint32_t magic;  // SAFEPY_PROTOCOL_MAGIC
    uint32_t mode;   // SAFEPY_MODE_RUN or SAFEPY_MODE_CHECK
    uint64_t tmp_bytes;
    uint64_t cpu_seconds;  // RLIMIT_CPU soft limit; the hard one is a second later
    uint64_t file_bytes;
    uint64_t open_files;
    uint64_t memory_bytes;
    uint64_t processes;
    uint32_t rlimit_memory;  // 1: no cgroup, RLIMIT_AS and RLIMIT_NPROC stand in
    uint32_t unlimited_cpu;  // 1: no RLIMIT_CPU (a long-lived process)
};

// SPAWN and READY.
struct safepy_message {
    uint32_t magic;  // SAFEPY_PROTOCOL_MAGIC
    uint32_t kind;   // SAFEPY_MESSAGE_*
};

struct safepy_run_message {
    uint32_t magic;
    uint32_t kind;  // SAFEPY_MESSAGE_RUN
    struct safepy_run_limits limits;
};

struct safepy_exit_message {
    uint32_t magic;
    uint32_t kind;         // SAFEPY_MESSAGE_EXIT
    int32_t wait_status;   // as wait4 gave it
    uint32_t reserved;
    uint64_t cpu_ms;       // user + system time of the child
    uint64_t max_rss_kb;
};
}

// One message with one control message (SCM_RIGHTS descriptors or
// SCM_CREDENTIALS) of `Bytes` bytes, ready for sendmsg(frame.header).
template <size_t Bytes>
struct SafepyFrame {
    SafepyFrame(const void* message, size_t size, int type, const void* payload) : data{const_cast<void*>(message), size} {
        header.msg_iov = &data;
        header.msg_iovlen = 1;
        header.msg_control = control;
        header.msg_controllen = sizeof control;
        cmsghdr* item = CMSG_FIRSTHDR(&header);
        item->cmsg_level = SOL_SOCKET;
        item->cmsg_type = type;
        item->cmsg_len = CMSG_LEN(Bytes);
        memcpy(CMSG_DATA(item), payload, Bytes);
    }
    SafepyFrame(const SafepyFrame&) = delete;
    SafepyFrame& operator=(const SafepyFrame&) = delete;

    iovec data;
    alignas(cmsghdr) char control[CMSG_SPACE(Bytes)] = {};
    msghdr header{};
};

static_assert(sizeof(safepy_run_limits) == 64);
static_assert(sizeof(safepy_message) == 8);
static_assert(sizeof(safepy_run_message) == 72);
static_assert(sizeof(safepy_exit_message) == 32);
// The offsets template.py's ctypes mirrors assume (natural alignment).
static_assert(offsetof(safepy_run_limits, tmp_bytes) == 8 && offsetof(safepy_run_limits, rlimit_memory) == 56);
static_assert(offsetof(safepy_run_message, limits) == 8);
static_assert(offsetof(safepy_exit_message, cpu_ms) == 16 && offsetof(safepy_exit_message, max_rss_kb) == 24);

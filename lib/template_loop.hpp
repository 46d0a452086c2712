// The warm template's loop, in C, inside libsafepy_contain.so: it takes the
// host's SPAWN requests, forks a child per request and reaps it, and in each
// child runs the whole containment and the hand-over of its run. Python only
// calls it once and, in a child, gets control back when the child is
// contained and its run has arrived.
//
// Written in C rather than in the template's Python because every page a
// process writes after fork() is copied (the child shares them all): a loop in
// Python touches a few hundred pages of the interpreter's objects per fork,
// in the template and again in the child, and Python's own fork handlers
// another two hundred. This loop touches its stack and a few buffers.
#pragma once

#include <stddef.h>
#include <stdint.h>

extern "C" {

// A random generator's state in the template that each child refills before
// anything else: `key_bytes` at `key` from getrandom(), then `*position` set
// to `position_value` (when `position` is set) so that the generator starts
// from the new key. The template finds and checks these addresses; a child
// refilling them costs a page or two where re-seeding through Python touched
// hundreds.
struct safepy_reseed {
    void* key;
    uint64_t key_bytes;
    int32_t* position;
    int32_t position_value;
    uint32_t reserved;
};

// Serves SPAWN requests on control_fd (template_protocol.hpp) until the host
// closes it, then exits the process. Each child gets a fresh PID namespace
// (SAFEPY_STAGE_FORK), prepares (SAFEPY_STAGE_PREPARE), reports READY with its
// credentials, waits for its RUN and is contained (SAFEPY_STAGE_RUN, seccomp
// last). Returns only in such a child: its mode (SAFEPY_MODE_RUN or
// SAFEPY_MODE_CHECK), with descriptors 1-4 arranged for the runner; or, in the
// template, -errno with "what: reason" in `error` when it cannot serve at all.
// The caller must be single-threaded (checked once, -EBUSY otherwise: the
// loop starts no thread): children are forked with fork() and without
// Python's fork handlers, whose work is to mend other threads' locks and to
// re-seed; `reseed` lists what to re-seed instead.
__attribute__((visibility("default"))) int safepy_template_serve(int control_fd, const void* bpf,
                                                                 uint64_t bpf_bytes,
                                                                 const struct safepy_reseed* reseed,
                                                                 uint32_t reseed_count, char* error,
                                                                 size_t error_len);
}

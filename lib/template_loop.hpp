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

// Serves SPAWN requests on control_fd (template_protocol.hpp) until the host
// closes it, then exits the process. Each child gets a fresh PID namespace
// (SAFEPY_STAGE_FORK), prepares (SAFEPY_STAGE_PREPARE), reports READY with its
// credentials, waits for its RUN and is contained (SAFEPY_STAGE_RUN, seccomp
// last). Returns only in such a child: its mode (SAFEPY_MODE_RUN or
// SAFEPY_MODE_CHECK), with descriptors 1-4 arranged for the runner; or, in the
// template, -errno with "what: reason" in `error` when it cannot serve at all.
// The caller must be single-threaded: children are forked with fork() and
// without Python's fork handlers, which only matter to other threads' state.
__attribute__((visibility("default"))) int safepy_template_serve(int control_fd, const void* bpf,
                                                                 uint64_t bpf_bytes, char* error,
                                                                 size_t error_len);
}

# safepy's warm template: appended to runner.py and started once inside the
# jail as  python3 -I -B -u -c <runner + this> template CONTROL_FD PAYLOAD_FD MODULE...
# (CONTROL_FD is 3, PAYLOAD_FD 4: the descriptors a run uses for result and script;
# the payload is libsafepy_contain.so and the children's seccomp filter)
# It imports the heavy modules once, then forks a prepared child for each slot
# the host asks for, and reaps it. It never runs user code: only its children
# do, each in fresh mount, PID, network, IPC, UTS and user namespaces, with a fresh /tmp,
# its own limits and the seccomp allow-list, and without any descriptor that
# leads back here. Those steps are lib/contain.cpp, loaded here once as
# libsafepy_contain.so and called by each child: nothing of the containment is
# decided in Python.
#
# Protocol (SOCK_SEQPACKET), the fixed structs of lib/template_protocol.hpp,
# mirrored below. Host -> template on CONTROL_FD: SPAWN with one descriptor,
# the child's slot socket. On the slot socket: child -> host READY (the host
# learns the child's pid from its credentials); host -> child RUN (the run's
# limits) with descriptors stdout, stderr, result, script; template -> host EXIT
# (wait status, CPU time, peak RSS) when it has reaped the child.


def _safepy_template():
    import ctypes
    import gc
    import select
    import socket
    import struct

    # Mirrors of lib/template_protocol.hpp and lib/contain.hpp (the C++ side
    # checks the sizes and the magic; unit tests check the layouts).
    MAGIC = 0x73707931
    SPAWN, READY, RUN, EXIT = 1, 2, 3, 4

    class RunLimits(ctypes.Structure):
        _fields_ = [("magic", ctypes.c_uint32), ("mode", ctypes.c_uint32), ("tmp_bytes", ctypes.c_uint64),
                    ("cpu_seconds", ctypes.c_uint64), ("file_bytes", ctypes.c_uint64),
                    ("open_files", ctypes.c_uint64), ("memory_bytes", ctypes.c_uint64),
                    ("processes", ctypes.c_uint64), ("rlimit_memory", ctypes.c_uint32),
                    ("unlimited_cpu", ctypes.c_uint32)]

    class Message(ctypes.Structure):
        _fields_ = [("magic", ctypes.c_uint32), ("kind", ctypes.c_uint32)]

    class RunMessage(ctypes.Structure):
        _fields_ = [("magic", ctypes.c_uint32), ("kind", ctypes.c_uint32), ("limits", RunLimits)]

    class ExitMessage(ctypes.Structure):
        _fields_ = [("magic", ctypes.c_uint32), ("kind", ctypes.c_uint32), ("wait_status", ctypes.c_int32),
                    ("reserved", ctypes.c_uint32), ("cpu_ms", ctypes.c_uint64), ("max_rss_kb", ctypes.c_uint64)]

    def is_message(data, kind):
        return len(data) == ctypes.sizeof(Message) and tuple(struct.unpack("=II", data)) == (MAGIC, kind)

    class ContainRequest(ctypes.Structure):
        _fields_ = [("size", ctypes.c_uint32), ("stage", ctypes.c_uint32), ("limits", RunLimits),
                    ("stdout_fd", ctypes.c_int32), ("stderr_fd", ctypes.c_int32), ("result_fd", ctypes.c_int32),
                    ("script_fd", ctypes.c_int32), ("bpf", ctypes.c_void_p), ("bpf_bytes", ctypes.c_uint64)]

    STAGE_FORK, STAGE_PREPARE, STAGE_RUN = 1, 2, 3
    MODE_CHECK = 1

    control_fd = int(sys.argv[2])
    payload_fd = int(sys.argv[3])
    # Nothing but the control socket and the payload may stay open here (the
    # jail may pass on descriptors the host process happened to hold).
    os.closerange(payload_fd + 1, 1 << 20)
    chunks = []
    while True:
        chunk = os.read(payload_fd, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(payload_fd)
    # The payload: the length of libsafepy_contain.so, the library, then the
    # children's seccomp filter.
    payload = b"".join(chunks)
    (library_bytes,) = struct.unpack_from("<Q", payload)
    library_fd = os.memfd_create("safepy-contain")
    library = memoryview(payload)[8:8 + library_bytes]
    while library:
        library = library[os.write(library_fd, library):]
    contain_library = ctypes.CDLL("/proc/self/fd/%d" % library_fd)
    os.close(library_fd)
    safepy_contain = contain_library.safepy_contain
    safepy_contain.argtypes = [ctypes.POINTER(ContainRequest), ctypes.c_char_p, ctypes.c_size_t]
    safepy_contain.restype = ctypes.c_int
    bpf = payload[8 + library_bytes:]
    bpf_buffer = ctypes.create_string_buffer(bpf, len(bpf))
    del library, payload, chunks

    def contain(stage, limits=None, fds=(-1, -1, -1, -1)):
        request = ContainRequest(ctypes.sizeof(ContainRequest), stage)
        if limits is not None:
            request.limits = limits
        request.stdout_fd, request.stderr_fd, request.result_fd, request.script_fd = fds
        request.bpf = ctypes.addressof(bpf_buffer)
        request.bpf_bytes = len(bpf)
        error = ctypes.create_string_buffer(256)
        code = safepy_contain(ctypes.byref(request), error, len(error))
        if code != 0:
            raise OSError(code, error.value.decode(errors="replace"))

    # What the runner imports for every run, then the heavy modules.
    for name in ["ast", "inspect", "json", "linecache", "stat", "struct", "traceback", "types"] + sys.argv[4:]:
        __import__(name)

    control = socket.socket(fileno=control_fd)
    # The children this template forked, by pidfd: their pid and slot socket,
    # on which the exit report goes once the child has been reaped. Exits are
    # seen on pidfds, not SIGCHLD, which numpy's BLAS threads may take.
    children = {}
    poller = select.poll()
    poller.register(control_fd, select.POLLIN)

    def reap_child(pidfd):
        pid, slot = children.pop(pidfd)
        poller.unregister(pidfd)
        os.close(pidfd)
        _, status, usage = os.wait4(pid, 0)
        cpu_ms = int((usage.ru_utime + usage.ru_stime) * 1000)
        try:
            slot.send(bytes(ExitMessage(MAGIC, EXIT, status, 0, cpu_ms, usage.ru_maxrss)))
        except OSError:
            pass  # the host gave up on this slot
        slot.close()

    # The heavy modules' objects stay put from now on: no collection in a
    # child walks (and so copies) the pages it shares with this template.
    gc.collect()
    gc.freeze()

    def run_child(slot):
        # Pid 1 of a fresh PID namespace: the rest of its namespaces next.
        contain(STAGE_PREPARE)
        credentials = struct.pack("3i", os.getpid(), os.getuid(), os.getgid())
        slot.sendmsg([bytes(Message(MAGIC, READY))], [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, credentials)])
        message, fds, _, _ = socket.recv_fds(slot, 1 << 16, 4)
        if len(message) != ctypes.sizeof(RunMessage) or len(fds) != 4:
            os._exit(0)  # the host gave up on this slot
        run = RunMessage.from_buffer_copy(message)
        if run.magic != MAGIC or run.kind != RUN:
            os._exit(0)
        limits = run.limits
        numpy = sys.modules.get("numpy")
        if numpy is not None:
            numpy.random.seed()  # forked children must not share the template's stream
        slot.detach()  # the containment closes it; the object must not close a reused number later
        # Everything from here to user code is lib/contain.cpp: descriptors,
        # /tmp, cgroup and user namespaces, read-only /proc, capabilities,
        # rlimits, no_new_privs and the seccomp filter, last.
        contain(STAGE_RUN, limits, fds)
        sys.argv = ["-c", "check" if limits.mode == MODE_CHECK else "run", "3", "4"]
        _safepy_main()

    def start_child(slot):
        contain(STAGE_FORK)
        pid = os.fork()
        if pid == 0:
            # Only its own slot: not the control socket, not another child's
            # slot or pidfd.
            os.close(control.detach())
            for pidfd, (_, other) in children.items():
                os.close(other.detach())
                os.close(pidfd)
            try:
                run_child(slot)
            except BaseException as error:
                try:
                    os.write(2, ("safepy warm child set-up failed: %r\n" % (error,)).encode())
                finally:
                    os._exit(71)
            os._exit(71)
        # A child that already ended is a zombie until reaped here: its pidfd
        # is readable at once.
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            # Without a pidfd its exit could not be reported: end it now.
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            raise
        children[pidfd] = (pid, slot)
        poller.register(pidfd, select.POLLIN)

    def take_message():
        message, fds, _, _ = socket.recv_fds(control, 64, 1)
        if not message:
            os._exit(0)  # the host is gone
        if not is_message(message, SPAWN) or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            return
        slot = socket.socket(fileno=fds[0])
        try:
            start_child(slot)
        except OSError as error:
            os.write(2, ("safepy warm template could not start a child: %r\n" % (error,)).encode())
            slot.close()  # the host sees the slot end before READY

    while True:
        for fd, _ in poller.poll():
            if fd == control_fd:
                take_message()
            elif fd in children:
                reap_child(fd)


_safepy_template()

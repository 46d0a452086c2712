# safepy's warm template: appended to runner.py and started once inside the
# jail as  python3 -I -B -u -c <runner + this> template CONTROL_FD BPF_FD MODULE...
# (CONTROL_FD is 3, BPF_FD 4: the descriptors a run uses for result and script)
# It imports the heavy modules once, then forks a prepared child for each slot
# the host asks for. It never runs user code: only its children do, each in
# fresh mount, PID, network, IPC, UTS and user namespaces, with a fresh /tmp,
# its own limits and the seccomp allow-list, and without any descriptor that
# leads back here.
#
# Protocol (SOCK_SEQPACKET). Host -> template on CONTROL_FD: b"spawn" with one
# descriptor, the child's slot socket. On the slot socket: child -> host
# b"ready" (the host learns the child's pid from its credentials); host ->
# child b"run " + JSON limits with descriptors stdout, stderr, result, script;
# reaper -> host b"exit STATUS CPU_MS MAXRSS_KB" when the child has ended.


def _safepy_template():
    import ctypes
    import json
    import resource
    import signal
    import socket
    import struct

    CLONE_NEWNS = 0x00020000
    CLONE_NEWCGROUP = 0x02000000
    CLONE_NEWUTS = 0x04000000
    CLONE_NEWIPC = 0x08000000
    CLONE_NEWUSER = 0x10000000
    CLONE_NEWPID = 0x20000000
    CLONE_NEWNET = 0x40000000
    MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND = 0x1, 0x2, 0x4, 0x8, 0x20, 0x1000
    MS_REC, MS_PRIVATE = 0x4000, 0x40000
    PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, PR_CAP_AMBIENT = 24, 38, 22, 47
    SECCOMP_MODE_FILTER, PR_CAP_AMBIENT_CLEAR_ALL = 2, 4

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]

    def check(result, what):
        if result != 0:
            error = ctypes.get_errno()
            raise OSError(error, what + ": " + os.strerror(error))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    class CapHeader(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class CapData(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    control_fd = int(sys.argv[2])
    bpf_fd = int(sys.argv[3])
    # Nothing but the control socket and the filter may stay open here (the
    # jail may pass on descriptors the host process happened to hold).
    os.closerange(bpf_fd + 1, 1 << 20)
    chunks = []
    while True:
        chunk = os.read(bpf_fd, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(bpf_fd)
    bpf = b"".join(chunks)
    bpf_buffer = ctypes.create_string_buffer(bpf, len(bpf))
    bpf_program = SockFprog(len(bpf) // 8, ctypes.cast(bpf_buffer, ctypes.c_void_p))

    # What the runner imports for every run, then the heavy modules.
    for name in ["ast", "inspect", "json", "linecache", "traceback", "types"] + sys.argv[4:]:
        __import__(name)

    control = socket.socket(fileno=control_fd)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the reapers

    def move_high(fds):
        return [fcntl_dup(fd) for fd in fds]

    def fcntl_dup(fd):
        import fcntl
        high = fcntl.fcntl(fd, fcntl.F_DUPFD, 100)
        os.close(fd)
        return high

    def drop_capabilities():
        for capability in range(64):
            libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0)
        libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
        header = CapHeader(0x20080522, 0)
        data = (CapData * 2)()
        check(libc.capset(ctypes.byref(header), data), "capset")

    def run_child(slot):
        # Pid 1 of a fresh PID namespace, in fresh mount/net/IPC/UTS ones.
        check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "mount --make-rprivate /")
        check(libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None), "mount /proc")
        uid, gid = os.getuid(), os.getgid()
        credentials = struct.pack("3i", os.getpid(), uid, gid)
        slot.sendmsg([b"ready"], [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, credentials)])
        message, fds, _, _ = socket.recv_fds(slot, 1 << 16, 4)
        if not message.startswith(b"run ") or len(fds) != 4:
            os._exit(0)  # the host gave up on this slot
        limits = json.loads(message[4:])
        out, err, result, script = move_high(fds)
        os.dup2(out, 1)
        os.dup2(err, 2)
        options = "size=%d,mode=0755,uid=%d,gid=%d" % (limits["tmp_bytes"], uid, gid)
        check(libc.mount(b"tmpfs", b"/tmp", b"tmpfs", MS_NOSUID | MS_NODEV, options.encode()), "mount /tmp")
        os.chdir("/tmp")
        # Now in the run's own cgroup (the host moved it there): make that the
        # root the run sees.
        check(libc.unshare(CLONE_NEWCGROUP), "unshare(CLONE_NEWCGROUP)")
        check(libc.unshare(CLONE_NEWUSER), "unshare(CLONE_NEWUSER)")
        with open("/proc/self/setgroups", "w") as f:
            f.write("deny")
        with open("/proc/self/uid_map", "w") as f:
            f.write("%d %d 1" % (uid, uid))
        with open("/proc/self/gid_map", "w") as f:
            f.write("%d %d 1" % (gid, gid))
        # /proc read-only from here on: a mount namespace of the new user
        # namespace may add MS_RDONLY to the mount it inherited.
        check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
        check(libc.mount(None, b"/proc", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                         None), "mount -o remount,ro /proc")
        drop_capabilities()
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(result, 3)
        os.dup2(script, 4)
        slot.detach()  # closed below; the object must not close a reused number later
        os.closerange(5, 1 << 20)
        def limit(which, soft, hard):
            # Never above the inherited hard limit (it cannot be raised).
            _, ceiling = resource.getrlimit(which)
            if ceiling != resource.RLIM_INFINITY:
                hard = min(hard, ceiling)
                soft = min(soft, hard)
            resource.setrlimit(which, (soft, hard))

        cpu = limits["cpu_seconds"]
        limit(resource.RLIMIT_CPU, cpu, cpu + 1)
        limit(resource.RLIMIT_FSIZE, limits["file_bytes"], limits["file_bytes"])
        limit(resource.RLIMIT_NOFILE, limits["open_files"], limits["open_files"])
        limit(resource.RLIMIT_CORE, 0, 0)
        if limits["rlimit_memory"]:
            limit(resource.RLIMIT_AS, limits["memory_bytes"], limits["memory_bytes"])
            limit(resource.RLIMIT_NPROC, limits["processes"], limits["processes"])
        numpy = sys.modules.get("numpy")
        if numpy is not None:
            numpy.random.seed()  # forked children must not share the template's stream
        check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
        check(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(bpf_program), 0, 0), "seccomp")
        sys.argv = ["-c", limits["mode"], "3", "4"]
        _safepy_main()

    def run_reaper(slot_fd):
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        control.close()
        slot = socket.socket(fileno=slot_fd)
        check(libc.unshare(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS), "unshare")
        child = os.fork()
        if child == 0:
            try:
                run_child(slot)
            except BaseException as error:
                try:
                    os.write(2, ("safepy warm child set-up failed: %r\n" % (error,)).encode())
                finally:
                    os._exit(71)
        _, status, usage = os.wait4(child, 0)
        cpu_ms = int((usage.ru_utime + usage.ru_stime) * 1000)
        try:
            slot.send(b"exit %d %d %d" % (status, cpu_ms, usage.ru_maxrss))
        except OSError:
            pass
        os._exit(0)

    while True:
        try:
            message, fds, _, _ = socket.recv_fds(control, 64, 1)
        except InterruptedError:
            continue
        if not message:
            os._exit(0)  # the host is gone
        if message != b"spawn" or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            continue
        if os.fork() == 0:
            try:
                run_reaper(fds[0])
            except BaseException as error:
                try:
                    os.write(2, ("safepy warm reaper failed: %r\n" % (error,)).encode())
                finally:
                    os._exit(71)
        os.close(fds[0])


_safepy_template()

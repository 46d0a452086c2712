# safepy's warm template: appended to runner.py and started once inside the
# jail as  python3 -I -B -u -c <runner + this> template CONTROL_FD PAYLOAD_FD MODULE...
# (CONTROL_FD is 3, PAYLOAD_FD 4: the descriptors a run uses for result and script;
# the payload is libsafepy_contain.so and the children's seccomp filter)
# It imports the heavy modules once, then hands control to the loop in
# libsafepy_contain.so (lib/template_loop.cpp), which forks a prepared child
# for each slot the host asks for, and reaps it. It never runs user code: only
# its children do, each in fresh mount, PID, network, IPC, UTS and user
# namespaces, with a fresh /tmp, its own limits and the seccomp allow-list,
# and without any descriptor that leads back here. Those steps are
# lib/contain.cpp: nothing of the containment is decided in Python. The loop
# returns only in a child, contained and with its run at hand; the child then
# re-seeds what it must not share with other runs and calls the runner.
#
# Protocol (SOCK_SEQPACKET), the fixed structs of lib/template_protocol.hpp:
# host -> template on CONTROL_FD: SPAWN with one descriptor, the child's slot
# socket. On the slot socket: child -> host READY (the host learns the child's
# pid from its credentials); host -> child RUN (the run's limits) with
# descriptors stdout, stderr, result, script; template -> host EXIT (wait
# status, CPU time, peak RSS) when it has reaped the child.


def _safepy_template():
    import ctypes
    import gc
    import random
    import struct

    MODE_CHECK = 1

    class Reseed(ctypes.Structure):
        # lib/template_loop.hpp's safepy_reseed.
        _fields_ = [("key", ctypes.c_void_p), ("key_bytes", ctypes.c_uint64), ("position", ctypes.c_void_p),
                    ("position_value", ctypes.c_int32), ("reserved", ctypes.c_uint32)]

    WORDS = 624  # a Mersenne Twister's state; an index of 624 makes it start over from a new key

    def python_random():
        # random's generator, a _random.Random: after the object header, the
        # index (int) and the 624 words. Checked by writing a state through
        # setstate() and reading it back at those addresses.
        generator = random._inst
        header = 2 * ctypes.sizeof(ctypes.c_void_p)
        if sys.getsizeof(generator) < header + 4 + 4 * WORDS:
            return None
        saved = generator.getstate()
        probe = tuple(range(7, 7 + WORDS))
        try:
            generator.setstate((saved[0], probe + (WORDS,), None))
            index = ctypes.c_int.from_address(id(generator) + header).value
            key = tuple((ctypes.c_uint32 * WORDS).from_address(id(generator) + header + 4))
        finally:
            generator.setstate(saved)
        if index != WORDS or key != probe or saved[2] is not None:
            return None
        return Reseed(id(generator) + header + 4, 4 * WORDS, id(generator) + header, WORDS)

    def numpy_random(numpy):
        # numpy's global RandomState: its MT19937's state, 624 words then the
        # position, at the address numpy gives for it. Checked the same way.
        generator = numpy.random.mtrand._rand
        bits = generator._bit_generator
        if type(bits).__name__ != "MT19937":
            return None
        saved = generator.get_state()
        probe = numpy.arange(7, 7 + WORDS, dtype=numpy.uint32)
        address = bits.ctypes.state_address
        try:
            generator.set_state(("MT19937", probe, WORDS, 0, 0.0))
            key = numpy.ctypeslib.as_array((ctypes.c_uint32 * WORDS).from_address(address)).copy()
            position = ctypes.c_int.from_address(address + 4 * WORDS).value
        finally:
            generator.set_state(saved)
        if position != WORDS or not (key == probe).all() or saved[3] != 0:
            return None
        return Reseed(address, 4 * WORDS, address + 4 * WORDS, WORDS)

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
    serve = contain_library.safepy_template_serve
    serve.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint64, ctypes.POINTER(Reseed), ctypes.c_uint32,
                      ctypes.c_char_p, ctypes.c_size_t]
    serve.restype = ctypes.c_int
    bpf = payload[8 + library_bytes:]
    bpf_buffer = ctypes.create_string_buffer(bpf, len(bpf))
    error = ctypes.create_string_buffer(256)
    del library, payload, chunks

    # What the runner imports for every run, then the heavy modules.
    for name in ["ast", "inspect", "json", "linecache", "stat", "struct", "traceback", "types"] + sys.argv[4:]:
        __import__(name)
    numpy = sys.modules.get("numpy")
    # The generators each child re-seeds, found once here; one whose state
    # could not be found is re-seeded in Python, at a few hundred copied pages.
    found = {"random": python_random(), "numpy": numpy_random(numpy) if numpy is not None else None}
    reseed = [entry for entry in found.values() if entry is not None]
    reseed_array = (Reseed * max(len(reseed), 1))(*reseed)

    # The heavy modules' objects stay put from now on: no collection in a
    # child walks (and so copies) the pages it shares with this template.
    gc.collect()
    gc.freeze()

    mode = serve(control_fd, ctypes.addressof(bpf_buffer), len(bpf), reseed_array, len(reseed), error, len(error))
    if mode < 0:
        raise OSError(-mode, error.value.decode(errors="replace"))
    # A contained child, forked without Python's fork handlers (the template
    # has one thread: no other thread's locks to mend) and re-seeded by the
    # loop: no two runs share a random stream.
    if found["random"] is None:
        random.seed()
    if numpy is not None and found["numpy"] is None:
        numpy.random.seed()
    sys.argv = ["-c", "check" if mode == MODE_CHECK else "run", "3", "4"]
    _safepy_main()


_safepy_template()

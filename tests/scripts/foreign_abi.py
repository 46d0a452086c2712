# An x32 and an i386 system call (getpid) from machine code: the seccomp
# filter must kill the process that makes one. Each is made in a forked
# child; the result is how the child ended.
import ctypes
import mmap
import os

CODE = {
    "x32": b"\xb8\x27\x00\x00\x40\x0f\x05\xc3",  # mov eax, 0x40000027; syscall; ret
    "i386": b"\xb8\x14\x00\x00\x00\xcd\x80\xc3",  # mov eax, 20; int 0x80; ret
}


def main():
    results = {}
    for name, code in CODE.items():
        page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        page.write(code)
        function = ctypes.CFUNCTYPE(ctypes.c_long)(ctypes.addressof(ctypes.c_char.from_buffer(page)))
        child = os.fork()
        if child == 0:
            function()
            os._exit(0)
        _, status = os.waitpid(child, 0)
        results[name] = ("signal " + str(os.WTERMSIG(status)) if os.WIFSIGNALED(status)
                         else "exited " + str(os.WEXITSTATUS(status)))
    return results

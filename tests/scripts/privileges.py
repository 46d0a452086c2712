import ctypes
import os
import subprocess


def main():
    libc = ctypes.CDLL(None, use_errno=True)
    results = {}

    def call(name, *args):
        value = getattr(libc, name)(*args)
        results[name] = [value, ctypes.get_errno()]

    call("ptrace", 0, 0, 0, 0)
    call("unshare", 0x10000000)
    call("mount", b"none", b"/tmp", b"tmpfs", 0, None)
    call("chroot", b"/tmp")
    results["status"] = {
        line.split(":")[0]: line.split(":")[1].strip()
        for line in open("/proc/self/status").read().splitlines()
        if line.startswith(("CapEff", "CapPrm", "CapBnd", "NoNewPrivs", "Seccomp:"))
    }
    results["uid_map"] = open("/proc/self/uid_map").read().split()
    results["ids"] = [os.getuid(), os.geteuid(), os.getgid()]
    results["subprocess"] = subprocess.run(["/usr/bin/id", "-u"], capture_output=True, text=True).stdout.strip()
    try:
        os.setuid(0)
        results["setuid"] = "worked"
    except OSError as error:
        results["setuid"] = type(error).__name__
    return results

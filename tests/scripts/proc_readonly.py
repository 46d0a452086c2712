import errno
import os


def try_write(path):
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError as error:
        return errno.errorcode.get(error.errno, str(error.errno))
    os.close(fd)
    return "opened"


def main():
    options = [line.split()[5] for line in open("/proc/self/mountinfo") if line.split()[4] == "/proc"]
    return {
        "pid": os.getpid(),
        "mem": try_write("/proc/1/mem"),
        "comm": try_write("/proc/self/comm"),
        "proc_mount": options[-1].split(",")[0] if options else "missing",
    }

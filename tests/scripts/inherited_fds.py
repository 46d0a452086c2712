import os


def main():
    readable = {}
    for fd in range(4, 64):
        try:
            readable[fd] = os.read(fd, 64).decode("latin-1")
        except OSError:
            pass
    return {"open": sorted(int(fd) for fd in os.listdir("/proc/self/fd")), "readable": readable}

import fcntl
import os

F_GETPIPE_SZ = 1032


def main():
    read_end, write_end = os.pipe()
    return {"pipe_bytes": fcntl.fcntl(write_end, F_GETPIPE_SZ)}

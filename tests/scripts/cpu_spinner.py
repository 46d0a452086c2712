import os
import time


def main():
    # Sixty processes that spin for four seconds: a run trying to take the machine.
    end = time.monotonic() + 4
    children = []
    for _ in range(60):
        pid = os.fork()
        if pid == 0:
            while time.monotonic() < end:
                pass
            os._exit(0)
        children.append(pid)
    for pid in children:
        os.waitpid(pid, 0)
    return {"spun": len(children)}

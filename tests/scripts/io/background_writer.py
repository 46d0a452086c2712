import os
import time


def main():
    with open("/tmp/out/result.txt", "w") as f:
        f.write("from main")
    if os.fork() == 0:
        # Keeps changing /tmp/out after main() returned: it must be ended
        # before the files are read.
        i = 0
        while True:
            with open("/tmp/out/late-%d" % (i % 50), "w") as f:
                f.write("late")
            with open("/tmp/out/result.txt", "w") as f:
                f.write("overwritten")
            i += 1
    time.sleep(0.2)
    return {"forked": True}

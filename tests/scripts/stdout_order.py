import os
import subprocess
import sys

print("module level")


def main():
    print("in main")
    sys.stdout.write("no newline")
    os.write(1, b"|fd write|")
    subprocess.run(["/bin/echo", "child process"], check=True)
    print("stderr line", file=sys.stderr)
    print("end", end="")
    return []

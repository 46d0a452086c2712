import os
import signal
import subprocess
import sys


def main():
    # A child that dies of SIGXCPU at once, then the script itself: neither
    # spent CPU time, so neither is a CPU timeout.
    child = subprocess.run([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGXCPU)"])
    os.kill(os.getpid(), signal.SIGXCPU)
    return {"child": child.returncode}

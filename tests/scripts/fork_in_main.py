import os


def main():
    pid = os.fork()
    if pid == 0:
        return {"who": "child"}
    os.waitpid(pid, 0)
    return {"who": "parent"}

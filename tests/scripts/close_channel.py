import os


def main():
    for fd in range(3, 64):
        try:
            os.close(fd)
        except OSError:
            pass
    return {"closed": True}

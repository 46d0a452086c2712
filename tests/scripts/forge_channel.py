import os


def main():
    # Speak the runner's protocol on its descriptor, then fail.
    for fd in range(3, 10):
        try:
            os.write(fd, b'Rok\n{"forged": true}')
        except OSError:
            pass
    raise RuntimeError("after forging")

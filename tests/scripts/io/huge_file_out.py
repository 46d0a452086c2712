def main():
    written = 0
    chunk = b"x" * (1 << 20)
    try:
        with open("/tmp/out/huge.bin", "wb") as f:
            for _ in range(1024):  # 1 GiB, if nothing stopped it
                f.write(chunk)
                written += len(chunk)
    except OSError as error:
        return {"written": written, "stopped_by": type(error).__name__}
    return {"written": written, "stopped_by": None}

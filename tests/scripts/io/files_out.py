import os


def main():
    os.makedirs("/tmp/out/sub/deeper", exist_ok=True)
    with open("/tmp/out/report.txt", "w") as f:
        f.write("total: 42\n")
    with open("/tmp/out/sub/deeper/bytes.bin", "wb") as f:
        f.write(bytes(range(256)))
    open("/tmp/out/empty", "w").close()
    with open("/tmp/not-returned.txt", "w") as f:
        f.write("outside /tmp/out")
    return {"written": 3}

import os


def main():
    with open("/tmp/secret.txt", "w") as f:
        f.write("run-private")
    os.symlink("/etc/passwd", "/tmp/out/passwd")
    os.symlink("/", "/tmp/out/root")
    os.symlink("/tmp/secret.txt", "/tmp/out/secret-link")
    os.link("/tmp/secret.txt", "/tmp/out/secret-hard")
    os.mkfifo("/tmp/out/fifo")
    with open("/tmp/out/plain.txt", "w") as f:
        f.write("plain")
    return {}

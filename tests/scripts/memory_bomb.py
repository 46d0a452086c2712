def main():
    hog = []
    while True:
        hog.append(bytearray(10 * 1024 * 1024))

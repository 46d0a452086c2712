import time


def main():
    time.sleep(10**6)

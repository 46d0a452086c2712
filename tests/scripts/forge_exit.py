import os
import sys

sys.stdout.write('{"result": {"forged": true}, "stdout": ""}\n')


def main():
    os._exit(0)

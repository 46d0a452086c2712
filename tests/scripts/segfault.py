import ctypes


def main():
    ctypes.string_at(0)
    return {}

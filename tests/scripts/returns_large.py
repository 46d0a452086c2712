def main():
    return ["x" * 1000] * 2000

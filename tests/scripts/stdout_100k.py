def main():
    for _ in range(1000):
        print("x" * 99)
    return {"lines": 1000}

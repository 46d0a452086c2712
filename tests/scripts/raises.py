def main():
    print("before")
    raise ValueError("boom")

def main():
    print("ran")

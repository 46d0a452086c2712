def main():
    return {"a": 1


x = 2

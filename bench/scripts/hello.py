def main():
    print("hello")
    return {"hello": "world"}

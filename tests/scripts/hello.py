def main():
    return {"result": "Hello, World!"}

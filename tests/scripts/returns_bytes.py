def main():
    return {"b": b"raw"}

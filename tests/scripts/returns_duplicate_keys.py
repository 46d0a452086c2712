# json.dumps writes both keys as "1": a result with a duplicate key.
def main():
    return {"nested": {1: "a", "1": "b"}}

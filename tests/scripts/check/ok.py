def main():
    return {"ok": True}

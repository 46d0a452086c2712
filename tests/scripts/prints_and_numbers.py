print("loading")


def main():
    total = sum(range(10))
    print("total is", total)
    return {"total": total, "squares": [n * n for n in range(4)], "ratio": 0.5, "ok": True, "none": None}

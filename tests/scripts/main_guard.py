calls = []


def main():
    calls.append(1)
    print("main called")
    return {"calls": len(calls), "name": __name__}


if __name__ == "__main__":
    main()

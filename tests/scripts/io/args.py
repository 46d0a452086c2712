def main(n, name="nobody", *, scale=1):
    return {"n": n * scale, "name": name}

import os


def main():
    seen = sorted(os.listdir("/tmp"))
    seen_out = sorted(os.listdir("/tmp/out"))
    with open("/tmp/left-by-earlier-run", "w") as marker:
        marker.write("secret")
    with open("/tmp/out/left-by-earlier-run", "w") as marker:
        marker.write("secret")
    return {"seen": seen, "seen_out": seen_out}

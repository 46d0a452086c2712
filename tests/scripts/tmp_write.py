import os


def main():
    seen = sorted(os.listdir("/tmp"))
    with open("/tmp/left-by-earlier-run", "w") as marker:
        marker.write("secret")
    return {"seen": seen}

import os


def main():
    results = {}
    for path in ["/etc/shadow", "/etc/passwd", "/root", "/home", "/work", "/var", "/sys", "/run"]:
        results[path] = os.path.exists(path)
    writes = {}
    for path in ["/usr/evil", "/etc/evil", "/evil", "/dev/evil", "/proc/evil", "/bin/evil"]:
        try:
            with open(path, "w") as f:
                f.write("x")
            writes[path] = "written"
        except OSError as error:
            writes[path] = type(error).__name__
    return {"exists": results, "writes": writes, "root": sorted(os.listdir("/"))}

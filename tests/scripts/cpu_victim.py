import time


def main():
    # Spin for 1.5 s of wall time and report the share of a CPU it got.
    wall_start, cpu_start = time.monotonic(), time.process_time()
    while time.monotonic() - wall_start < 1.5:
        pass
    return {"cpu_share": (time.process_time() - cpu_start) / (time.monotonic() - wall_start)}

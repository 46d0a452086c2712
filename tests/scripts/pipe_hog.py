import time


def main():
    # 1,320 empty pipes hold 21,120 pages of pipe buffers: above the kernel's
    # per-user soft limit (16,384), past which that user's new pipes shrink.
    import os
    pipes = [os.pipe() for _ in range(1320)]
    time.sleep(4)
    return {"pipes": len(pipes)}

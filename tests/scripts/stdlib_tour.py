# What scripts commonly do with the standard library, numpy and pandas: each
# step must work under the seccomp allow-list (a missing call shows up as an
# exception naming the step).
import asyncio
import datetime
import fcntl
import hashlib
import io
import json
import locale
import mmap
import os
import random
import resource
import select
import shutil
import signal
import stat
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import zlib

import numpy as np
import pandas as pd


async def echo_pair():
    reader, writer = await asyncio.open_unix_connection(sock=socket.socketpair()[0])
    writer.close()
    process = await asyncio.create_subprocess_exec("/bin/echo", "async", stdout=asyncio.subprocess.PIPE)
    out, _ = await process.communicate()
    await asyncio.sleep(0.01)
    return out.decode().strip()


def main():
    steps = {}
    steps["time"] = time.time() > 0 and time.monotonic() > 0 and time.process_time() >= 0
    time.sleep(0.01)
    steps["datetime"] = datetime.datetime(2020, 1, 2).isoformat()
    steps["random"] = len(os.urandom(16)) + len(random.SystemRandom().randbytes(4))
    steps["hash"] = hashlib.sha256(b"x").hexdigest()[:8]
    steps["zlib"] = len(zlib.decompress(zlib.compress(b"a" * 1000)))
    steps["locale"] = locale.setlocale(locale.LC_ALL, "")
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "data.csv")
        pd.DataFrame({"a": [1, 2, 3]}).to_csv(path, index=False)
        shutil.copy(path, path + ".copy")
        shutil.copytree(directory, directory + ".tree")  # copy2: stat, xattrs, times
        steps["copytree"] = sorted(os.listdir(directory + ".tree"))
        shutil.rmtree(directory + ".tree")
        os.mkfifo(os.path.join(directory, "fifo"))
        steps["coreutils"] = subprocess.run("cp data.csv c.csv && sort -r c.csv | head -1 && ls -l | wc -l", shell=True,
                                            cwd=directory, capture_output=True, text=True).stdout.split()
        steps["csv"] = int(pd.read_csv(path + ".copy")["a"].sum())
        with open(path, "rb") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            fcntl.flock(f, fcntl.LOCK_UN)
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                steps["mmap"] = mapped[:1].decode()
        steps["scandir"] = sorted(entry.name for entry in os.scandir(directory))
        steps["fifo"] = stat.S_ISFIFO(os.stat(os.path.join(directory, "fifo")).st_mode)
        os.chmod(path, 0o600)
        os.utime(path)
        os.rename(path, path + ".moved")
        os.symlink(path + ".moved", path + ".link")
        steps["stat"] = os.stat(path + ".link").st_size > 0 and os.lstat(path + ".link") is not None
    database = sqlite3.connect(":memory:")
    database.execute("create table t (x)")
    database.executemany("insert into t values (?)", [(1,), (2,)])
    steps["sqlite"] = database.execute("select sum(x) from t").fetchone()[0]
    steps["numpy"] = float(np.linalg.inv(np.array([[2.0, 0.0], [0.0, 4.0]]))[1][1])
    steps["pandas"] = int(pd.Series(range(10)).rolling(3).sum().dropna().iloc[-1])
    read_end, write_end = os.pipe()
    os.write(write_end, b"p")
    steps["select"] = bool(select.select([read_end], [], [], 1)[0])
    poller = select.epoll()
    poller.register(read_end, select.EPOLLIN)
    steps["epoll"] = len(poller.poll(1))
    poller.close()
    steps["pipe"] = os.read(read_end, 1).decode()
    signal.signal(signal.SIGALRM, lambda *_: None)
    signal.setitimer(signal.ITIMER_REAL, 0.01)
    signal.pause()
    steps["signal"] = True
    steps["rusage"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss > 0 and os.times() is not None
    steps["rlimit"] = resource.getrlimit(resource.RLIMIT_NOFILE)[0] > 0
    result = []
    worker = threading.Thread(target=lambda: result.append(threading.get_native_id()))
    worker.start()
    worker.join()
    steps["thread"] = len(result)
    steps["shell"] = subprocess.run("echo $((6 * 7)) | cat", shell=True, capture_output=True, text=True).stdout.strip()
    steps["python"] = subprocess.run([sys.executable, "-I", "-c", "print(1)"], capture_output=True, text=True).stdout.strip()
    steps["asyncio"] = asyncio.run(echo_pair())
    steps["ids"] = [os.getuid() >= 0, os.getpid() > 0, os.getppid() >= 0, len(os.uname().sysname) > 0]
    steps["cpu"] = os.cpu_count() is not None and len(os.sched_getaffinity(0)) > 0
    buffer = io.StringIO()
    json.dump({"k": 1}, buffer)
    steps["json"] = buffer.getvalue()
    return steps

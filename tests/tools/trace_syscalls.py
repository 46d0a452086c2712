#!/usr/bin/python3
# Derives the seccomp allow-list's raw material: runs scripts through the
# safepy CLI under `strace -f` and counts the system calls made by every
# process after it loaded the seccomp filter (the script, its threads and
# its children), with the first argument of the calls the policy filters by
# argument. As root, after a build:
#   tests/tools/trace_syscalls.py build/cli/safepy tests/scripts/*.py
# Options (before the scripts): --mode cold|warm (both by default),
# --jail bwrap|nsjail, --nsjail PATH. The output is reviewed by hand (lib/seccomp_policy.cpp).
import collections
import os
import re
import subprocess
import sys
import tempfile

LINE = re.compile(r"^(\d+) +(?:<\.\.\. (\w+) resumed>(.*)|(\w+)\((.*))$")
ARGUMENT_KEYS = {"ioctl": 1, "prctl": 0, "socket": 0, "clone": 0, "personality": 0, "fcntl": 1,
                 "socketpair": 0, "madvise": 2, "mprotect": 2, "setsockopt": 1, "getsockopt": 1, "clone3": 0}


def read_calls(path):
    # (pid, name, arguments and result, whether a resumed line) per line.
    with open(path, errors="replace") as trace:
        for raw in trace:
            match = LINE.match(raw.rstrip("\n"))
            if match:
                resumed = match.group(2) is not None
                yield (int(match.group(1)), match.group(2) or match.group(4),
                       match.group(3) if resumed else match.group(5), resumed)


def parse(path, counts, arguments):
    # First pass: which process loaded the filter (from which line on), and
    # who forked whom; a child's whole life counts (vfork children run before
    # their parent's call returns).
    loaded_at, children = {}, collections.defaultdict(set)
    for index, (pid, name, rest, resumed) in enumerate(read_calls(path)):
        if not resumed and pid not in loaded_at and "{len=" in rest and (
                name == "prctl" and rest.startswith("PR_SET_SECCOMP, SECCOMP_MODE_FILTER")
                or name == "seccomp" and rest.startswith("SECCOMP_SET_MODE_FILTER")):
            loaded_at[pid] = index
        if name in ("clone", "clone3", "fork", "vfork"):
            # Inside a PID namespace strace adds the pid it sees: "= 2 /* 7056 in strace's PID NS */".
            result = re.search(r"\) += (\d+)(?: /\* (\d+) in strace)?", rest)
            if result:
                children[pid].add(int(result.group(2) or result.group(1)))
    filtered = set()
    pending = list(loaded_at)
    while pending:
        pid = pending.pop()
        for child in children[pid]:
            if child not in filtered and child not in loaded_at:
                filtered.add(child)
                pending.append(child)
    for index, (pid, name, rest, resumed) in enumerate(read_calls(path)):
        if resumed or not (pid in filtered or index > loaded_at.get(pid, 1 << 62)):
            continue
        counts[name] += 1
        if name in ARGUMENT_KEYS:
            parts = [part.strip() for part in re.split(r", (?![^{]*\})", re.split(r"\) += |<unfinished", rest)[0])]
            if len(parts) > ARGUMENT_KEYS[name]:
                arguments[name][parts[ARGUMENT_KEYS[name]][:60]] += 1


def main():
    arguments_left = sys.argv[1:]
    modes, jail, jail_options = ["cold", "warm"], "bwrap", []
    while arguments_left and arguments_left[0].startswith("--"):
        option, value = arguments_left[0], arguments_left[1]
        arguments_left = arguments_left[2:]
        if option == "--mode":
            modes = [value]
        elif option == "--jail":
            jail = value
        elif option == "--nsjail":
            jail_options = ["--nsjail", value]
    cli, scripts = arguments_left[0], arguments_left[1:]
    counts = collections.Counter()
    arguments = collections.defaultdict(collections.Counter)
    with tempfile.TemporaryDirectory() as directory:
        for mode in modes:
            for script in scripts:
                out = os.path.join(directory, "trace")
                subprocess.run(["strace", "-f", "-qq", "--pidns-translation", "-o", out, cli, "run", "--jail", jail, *jail_options, "--mode", mode,
                                "--wall-ms", "4000", script], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, timeout=120)
                before = len(counts)
                parse(out, counts, arguments)
                print("%s %s: %d calls so far, %d new names" % (mode, os.path.basename(script),
                                                                 sum(counts.values()), len(counts) - before),
                      file=sys.stderr)
    for name, count in sorted(counts.items()):
        print("%-24s %8d" % (name, count))
    for name, values in sorted(arguments.items()):
        print("\n%s:" % name)
        for value, count in values.most_common():
            print("    %-60s %6d" % (value, count))


main()

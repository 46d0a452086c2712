import builtins
import json
import os
import random
import sys

import numpy
import pandas


def main():
    seen = {
        "pandas_marker": getattr(pandas, "_leak_marker", None),
        "json_marker": getattr(json, "_leak_marker", None),
        "dataframe_patched": getattr(pandas.DataFrame, "_leak_patched", False),
        "json_dumps_patched": json.dumps("x") != '"x"',
        "injected_module": "leak_injected" in sys.modules,
        "builtin_marker": getattr(builtins, "_leak_marker", None),
        "tmp": sorted(os.listdir("/tmp")),
        "numpy_random": numpy.random.rand(),
        "python_random": random.random(),
        "pids": sorted(p for p in os.listdir("/proc") if p.isdigit()),
        "cgroup_paths": sorted({line.split(":", 2)[2] for line in open("/proc/self/cgroup").read().splitlines()}),
    }
    # Leave every kind of mark a later run could find.
    pandas._leak_marker = "leaked"
    json._leak_marker = "leaked"
    builtins._leak_marker = "leaked"
    pandas.DataFrame._leak_patched = True
    json.dumps = lambda *args, **kwargs: "patched"
    sys.modules["leak_injected"] = object()
    with open("/tmp/leak-file", "w") as f:
        f.write("leaked")
    return seen

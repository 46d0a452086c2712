import numpy as np
import pandas as pd


def main():
    frame = pd.DataFrame({"group": [i % 3 for i in range(1000)], "value": np.arange(1000)})
    sums = frame.groupby("group")["value"].sum()
    return {"sums": {str(k): int(v) for k, v in sums.items()}, "mean": float(np.mean(frame["value"]))}

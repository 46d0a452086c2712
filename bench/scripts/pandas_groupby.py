import pandas as pd


def main():
    rows = 1000
    frame = pd.DataFrame({
        "group": [f"g{i % 10}" for i in range(rows)],
        "value": range(rows),
        "weight": [i * 0.5 for i in range(rows)],
    })
    sums = frame.groupby("group")["value"].sum()
    print(f"{len(frame)} rows, {len(sums)} groups")
    return {name: int(total) for name, total in sums.items()}

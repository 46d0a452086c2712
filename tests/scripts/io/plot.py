import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def main():
    figure, axes = plt.subplots()
    axes.plot([0, 1, 2, 3], [0, 1, 4, 9])
    figure.savefig("/tmp/out/plot.png")
    return {"backend": matplotlib.get_backend()}

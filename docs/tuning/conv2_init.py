"""How a conv2 stacked on a checkpoint's conv1 fires at its initial weights, as recorded in
docs/results.md.

With every weight drawn from U(0, 1), a conv2 neuron sums hundreds of positive weights
over its 5x5 window of conv1 channels, so every channel is the same detector of early
conv1 activity: the fraction of positions at which each channel fires is the same for
all of them. Zero-mean weights make channels differ. Prints, for each initial range and
threshold, the fraction of conv2 neurons that fire on the first 200 training images, the
median firing time of those that do, and the least and most active channel.

    STIDI_RS_DATA=../shared/datasets RAYON_NUM_THREADS=1 python docs/tuning/conv2_init.py \\
        checkpoints/csnn-shallow-wide-tau80-fashion-mnist.npz fashion-mnist
"""

import sys

import numpy as np
import stidi_rs as sr
from stidi_rs import checkpoint, datasets


def main():
    base, _ = checkpoint.load(sys.argv[1])
    images, _ = datasets.load(sys.argv[2], "train")
    x = sr.encode(images[:200, None])
    conv1, _ = base.spiking_layers
    for init in [(0.0, 1.0), (-0.5, 1.0), (-1.0, 1.0)]:
        for th2 in [2, 5, 10, 20, 40, 60]:
            net = sr.Network(
                [sr.Conv2d(1, conv1.out_channels, conv1.kernel_size, conv1.threshold),
                 sr.MaxPool2d(2), sr.Conv2d(conv1.out_channels, 32, 5, th2, init=init),
                 sr.MaxPool2d(2), sr.Dense(512, 10, 20.0)],
                (1, 28, 28), psp=base.psp, seed=0)
            net.spiking_layers[0].weight = conv1.weight
            t2 = net.forward(x)[2]
            fired = t2 < net.tmax
            median = float(np.median(t2[fired])) if fired.any() else float("nan")
            per_channel = fired.mean(axis=(0, 2, 3))
            print(f"init {init}, threshold {th2}: conv2 fires at {fired.mean():.2f} of "
                  f"positions, median t {median:.0f}, channels {per_channel.min():.2f} to "
                  f"{per_channel.max():.2f}", flush=True)


if __name__ == "__main__":
    main()

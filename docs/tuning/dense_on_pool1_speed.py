"""Training speed of a Dense hidden layer on a frozen conv1's pool1.

conv1 and its weights come from a shipped one-conv-layer checkpoint; a fresh
Dense(4,608 -> H) -> Dense(10) sits on its pool1, and the engine trains both Dense
layers per sample on the first N Fashion-MNIST training images (one engine call).
Prints images per second of CPU time, which a busy machine skews less than wall
time. Profiled with `perf record python docs/tuning/dense_on_pool1_speed.py ...`.

    STIDI_RS_DATA=../shared/datasets RAYON_NUM_THREADS=1 \\
        python docs/tuning/dense_on_pool1_speed.py \\
        checkpoints/csnn-shallow-wide-tau80-fashion-mnist.npz 1000 300
"""

import sys
import time

import stidi_rs as sr
from stidi_rs import checkpoint, datasets


def main():
    base, _ = checkpoint.load(sys.argv[1])
    hidden, n = int(sys.argv[2]), int(sys.argv[3])
    conv1 = base.spiking_layers[0]
    x, y = datasets.load("fashion-mnist", "train")
    times = sr.encode(x[:n, None], tmax=base.tmax)
    net = sr.Network(
        [
            sr.Conv2d(1, conv1.out_channels, conv1.kernel_size, conv1.threshold),
            sr.MaxPool2d(2),
            sr.Dense(base.spiking_layers[1].in_features, hidden, 30.0),
            sr.Dense(hidden, 10, 50.0),
        ],
        (1, 28, 28),
        psp=base.psp,
        seed=0,
    )
    net.spiking_layers[0].weight = conv1.weight
    rule = sr.STiDiBP(net, lr=[0.0, 1.0, 1.0], conv_reduce="mean")
    start = time.process_time()
    rule.steps(times, y[:n], 1)
    print(f"Dense({hidden}) on pool1: {n / (time.process_time() - start):.1f} img/s (CPU time)")


if __name__ == "__main__":
    main()

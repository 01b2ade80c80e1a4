"""Validation accuracy of a trained checkpoint with one layer's threshold scaled, the
others as trained, as recorded in docs/results.md.

BS4NN learns a per-layer scale of its binary weights during training, which is a
learned threshold (docs/algorithm.md §3: a fixed scale is the threshold). If a trained
net validated clearly better at another threshold, a learned one could pay; if its
own threshold is at the top, fixed thresholds lose nothing at the end of training.
Uses the checkpoint's own validation split (`stidi-rs train --val-size V --seed S`),
never the test set.

    STIDI_RS_DATA=../shared/datasets RAYON_NUM_THREADS=2 python docs/tuning/threshold_scan.py \\
        fashion-mnist checkpoints/csnn-shallow-wide-binary-fashion-mnist.npz [...]
"""

import sys

import stidi_rs as sr
from stidi_rs import checkpoint, datasets
from stidi_rs.cli import _split

FACTORS = (0.7, 0.8, 0.9, 1.0, 1.1, 1.25, 1.4, 1.6, 2.0)


def main():
    images, labels = datasets.load(sys.argv[1], "train")
    x = sr.encode(images[:, None])
    for path in sys.argv[2:]:
        net, config = checkpoint.load(path)
        trainer = config["trainer"]
        _, (xv, yv) = _split(x, labels, trainer["config"]["val_size"], trainer["seed"])
        xv = xv.reshape(len(xv), *net.input_shape)
        print(path, flush=True)
        for k, layer in enumerate(net.spiking_layers):
            theta, row = layer.threshold, []
            for f in FACTORS:
                layer.threshold = theta * f
                row.append(f"x{f}: {100 * float((net.predict(xv) == yv).mean()):.2f}")
            layer.threshold = theta
            print(f"   layer {k} (θ {theta:g}): " + ", ".join(row), flush=True)


if __name__ == "__main__":
    main()

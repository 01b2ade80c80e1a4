"""Retrain only the output layer of a checkpoint, its layers below frozen.

Uses the checkpoint's own split (its run's `--val-size` and `--seed`): trains on
the images its run trained on (per-sample updates unless `batch`) and scores the
validation images that run never trained on, after each epoch; never the test set.
Each argument after the checkpoint and dataset is keyword arguments of `run`:

    STIDI_RS_DATA=../shared/datasets RAYON_NUM_THREADS=1 \\
        python docs/tuning/readout.py checkpoints/dense-fashion-mnist.npz fashion-mnist \\
        "lr=3.2" "lr=0.5" "lr=3.2,normalize=False"
"""

import sys
import time

import numpy as np
import stidi_rs as sr
from stidi_rs import checkpoint, datasets
from stidi_rs.cli import _split


def run(ckpt, dataset, lr=3.2, gamma=3.0, epochs=6, decay=0.8, batch=1, normalize=True,
        disp="causal", average=False):
    """`average`: score the mean of the output weights taken after every 1,024 images
    of the epoch (Polyak averaging), not the last ones."""
    net, config = checkpoint.load(ckpt)
    state = config["trainer"]
    images, labels = datasets.load(dataset, "train")
    (xtr, ytr), (xva, yva) = _split(images, labels, state["config"]["val_size"], state["seed"])
    xtr, xva = (sr.encode(v.reshape(len(v), *net.input_shape)) for v in (xtr, xva))
    frozen = [0.0] * (len(net.spiking_layers) - 1)
    print(f"   start: validation {(net.predict(xva) == yva).mean():.4f}", flush=True)
    rule = sr.STiDiBP(net, lr=frozen + [lr], gamma=gamma, normalize=normalize, displacement=disp)
    start, scores = time.time(), []
    for epoch in range(epochs):
        rule.lr = frozen + [lr * decay**epoch]
        order = np.random.default_rng([0, epoch]).permutation(len(xtr))
        out, total, n = net.spiking_layers[-1], 0.0, 0
        for lo in range(0, len(xtr), 1024):
            idx = order[lo : lo + 1024]
            rule.steps(xtr[idx], ytr[idx], batch)
            total, n = total + out.weight, n + 1
        if average:
            last = out.weight
            out.weight = total / n
        scores.append(round(float((net.predict(xva) == yva).mean()), 4))
        fit = float((net.predict(xtr[:2000]) == ytr[:2000]).mean())
        print(f"   epoch {epoch + 1}: validation {scores[-1]:.4f}, train[:2000] {fit:.4f}, "
              f"{time.time() - start:.0f} s", flush=True)
        if average:
            out.weight = last  # training continues from the last weights
    return scores


def main():
    for line in sys.argv[3:]:
        print(line, "=>", run(sys.argv[1], sys.argv[2], **eval(f"dict({line})")), flush=True)


if __name__ == "__main__":
    main()

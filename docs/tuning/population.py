"""A population output: K spiking output neurons per class, the first to fire decides.

One output neuron per class is a linear read-out of the layer below
(`readout_capacity.py`: on the shipped Fashion-MNIST nets the max of 4 linear units per
class reads pool1 0.8-1.1 points better than one). Here the output layer of a shipped
one-conv-layer checkpoint is retrained on its frozen conv1 -> pool1 spike times with
K neurons per class (class-major: class c owns neurons cK .. cK + K - 1). The rule is
STiDi-BP's output rule (docs/algorithm.md §6) applied to all 10K neurons, except that
of the label's K neurons only the first to fire (the one that decides for its class)
gets the target t_min; the others get no error. With K = 1 it is the rule as the
engine implements it (`--check` compares the two). Per-sample updates in Python,
calling the engine's forward pass; the checkpoint's own split (`--val-size`, `--seed`
in its config); never the test set.

    STIDI_RS_DATA=../shared/datasets RAYON_NUM_THREADS=1 python docs/tuning/population.py \\
        checkpoints/csnn-shallow-wide-tau80-fashion-mnist.npz fashion-mnist GRID [CACHE.npz]
    STIDI_RS_DATA=../shared/datasets RAYON_NUM_THREADS=1 python docs/tuning/population.py \\
        checkpoints/csnn-shallow-wide-tau80-fashion-mnist.npz fashion-mnist --check
"""

import os
import sys
import time

import numpy as np
import stidi_rs as sr
from stidi_rs import checkpoint, datasets, reference
from stidi_rs.cli import _split


def pool1_times(base, x):
    """conv1 -> pool1 spike times of the checkpoint (its output layer is not used)."""
    return np.concatenate([base.forward(x[lo : lo + 2000])[-2].reshape(len(x[lo : lo + 2000]), -1)
                           for lo in range(0, len(x), 2000)])


def targets(t, label, k, gamma, tmax):
    """Output targets for one sample of 10k output times (class-major groups of k)."""
    t_min = t.min()
    target = t.copy()
    group = slice(label * k, (label + 1) * k)
    if t_min >= tmax:  # no output spike: the label's first neuron (lowest index) is asked
        target[:] = tmax
        target[label * k] = tmax - gamma
        return target
    close = t - t_min < gamma
    target[close] = min(t_min + gamma, tmax)
    target[group] = t[group]  # the label's other neurons: no error
    target[label * k + int(np.argmin(t[group]))] = t_min
    return target


class Population:
    def __init__(self, n_in, k, threshold, psp, tmax=256.0, binary=False, seed=0, init=None):
        self.k, self.threshold, self.psp, self.tmax, self.binary = k, threshold, psp, tmax, binary
        rng = np.random.default_rng(seed)
        low = -0.5 if binary else 0.0  # the layers' default initial weights (layers.py)
        self.weight = init.copy() if init is not None else rng.uniform(low, 1, (10 * k, n_in))
        self.net = sr.Network([sr.Dense(n_in, 10 * k, threshold)], (n_in,), psp=psp, tmax=tmax)
        self.engine = self.net._rust()

    def forward_weight(self):
        return np.where(self.weight >= 0, 1.0, -1.0) if self.binary else self.weight

    def forward(self, x):
        flat, v_end = self.engine.forward([self.forward_weight()], [None], x)
        return np.asarray(flat[0]).reshape(len(x), -1), np.asarray(v_end).reshape(len(x), -1)

    def predict(self, x):
        preds = []
        for lo in range(0, len(x), 2000):
            t, v = self.forward(x[lo : lo + 2000])
            neuron, _ = reference.decide(t, v, self.tmax)
            preds.append(neuron // self.k)
        return np.concatenate(preds)

    def step(self, x, label, lr, gamma=3.0):
        """One per-sample STiDi-BP update of the output layer (errors L2-normalised)."""
        t, _ = self.forward(x[None])
        t = t[0]
        e = (targets(t, label, self.k, gamma, self.tmax) - t) / self.tmax
        norm = np.linalg.norm(e)
        if norm == 0:
            return
        e /= norm
        rows = np.flatnonzero(e)
        s = t[rows, None] - x[None, :]
        eps = reference.eps(s, self.psp.tau_rise, self.psp.tau_fall)
        self.weight[rows] -= lr * (e[rows] * t[rows] / self.threshold)[:, None] * eps / self.tmax


def run(psp, xtr, ytr, val, k=1, th=50.0, lr=3.2, epochs=3, decay=0.7, readout=1, binary=False,
        n=None, seed=0, start=None):
    # start: "checkpoint" copies the checkpoint's output weights to every neuron of a
    # class (only with k = 1 they are the checkpoint's output); else the layers' default
    # initial weights
    xtr, ytr = (xtr[:n], ytr[:n]) if n else (xtr, ytr)
    init = None if start is None else np.repeat(start, k, axis=0)
    pop = Population(xtr.shape[1], k, th, psp, binary=binary, seed=seed, init=init)
    clock, scores = time.time(), []
    for epoch in range(epochs + readout):
        reading = epoch >= epochs
        step = lr * decay**epoch
        order = np.random.default_rng([seed, epoch]).permutation(len(xtr))
        total = np.zeros_like(pop.weight)
        for i in order:
            pop.step(xtr[i], ytr[i], step)
            if reading:
                total += pop.weight
        if reading:  # the read-out epoch averages the output's weights
            pop.weight = total / len(order)
        scores.append(round(float((pop.predict(val[0]) == val[1]).mean()), 4))
        print(f"   {'read-out ' if reading else ''}epoch {epoch + 1}: validation "
              f"{scores[-1]:.4f}, {time.time() - clock:.0f} s", flush=True)
    return scores


def check(base, xtr, ytr, psp):
    """K = 1 against the engine's own per-sample training of the same output layer
    (binary if the checkpoint's is: sign(w) forward, the update on w)."""
    out0 = base.spiking_layers[-1]
    x, y = xtr[:300], ytr[:300]
    pop = Population(x.shape[1], 1, out0.threshold, psp, binary=out0.binary, init=out0.weight)
    net = sr.Network([sr.Dense(x.shape[1], 10, out0.threshold, binary=out0.binary)],
                     (x.shape[1],), psp=psp)
    net.spiking_layers[0].weight = out0.weight
    sr.STiDiBP(net, lr=3.2).steps(x, y, 1)
    for i in range(len(x)):
        pop.step(x[i], y[i], 3.2)
    diff = np.abs(pop.weight - net.spiking_layers[0].weight).max()
    moved = np.abs(net.spiking_layers[0].weight - out0.weight).max()
    print(f"K = 1 against the engine after {len(x)} samples: max |dw| {diff:.3g} "
          f"(the weights moved by up to {moved:.3g})")


def main():
    base, config = checkpoint.load(sys.argv[1])
    images, labels = datasets.load(sys.argv[2], "train")
    trainer = config["trainer"]
    (xtr, ytr), (xva, yva) = _split(sr.encode(images[:, None]), labels,
                                    trainer["config"]["val_size"], trainer["seed"])
    if sys.argv[3] == "--check":
        check(base, pool1_times(base, xtr[:300]), ytr[:300], base.psp)
        return
    clock = time.time()
    if len(sys.argv) > 4 and os.path.exists(sys.argv[4]):  # pool1 times saved by an earlier run
        with np.load(sys.argv[4]) as cached:
            ftr, fva = cached["train"], cached["val"]
    else:
        ftr, fva = pool1_times(base, xtr), pool1_times(base, xva)
        if len(sys.argv) > 4:
            np.savez(sys.argv[4] + ".part.npz", train=ftr, val=fva)
            os.replace(sys.argv[4] + ".part.npz", sys.argv[4])
    print(f"pool1 times of {len(ftr)} + {len(fva)} images: {time.time() - clock:.0f} s", flush=True)
    start = base.spiking_layers[-1].weight
    for line in open(sys.argv[3]):
        line = line.strip()
        if line and not line.startswith("#"):
            kw = eval(f"dict({line})")
            if kw.get("start") == "checkpoint":
                kw["start"] = start
            print(line, "=>", run(base.psp, ftr, ytr, (fva, yva), **kw), flush=True)


if __name__ == "__main__":
    main()

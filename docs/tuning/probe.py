"""Linear probe: softmax regression (NumPy SGD) on the spike times the output layer reads.

For a CSNN those are the pooled conv2 times, for a Dense net the hidden layer's.

Trains on the first 20,000 training images, scores training images 55,000-56,999.
Each argument is `pixels`, `pixels>N` (1 where the intensity exceeds N, else 0), a
checkpoint path, or `init:PRESET` (an untrained net; `init:PRESET:W1,W2` with its hidden
layers' widths changed, as `stidi-rs train --widths W1,W2`). A checkpoint path ending in
`@decision` keeps only the spikes that come before the network's own decision on
each image, and also prints that network's spiking read-out on the held-out images;
one ending in `@layers` probes every layer's spike times in turn (all its spikes),
to show where a network gains or loses linearly readable information.

    STIDI_RS_DATA=../shared/datasets RAYON_NUM_THREADS=1 \\
        python docs/tuning/probe.py mnist pixels checkpoints/csnn-wide-mnist.npz \\
        init:csnn-deep:32,64

(`checkpoints/` holds the networks restored from git history: `git archive ffcadf6
checkpoints | tar -x`, docs/results.md.)
"""

import sys
import time

import numpy as np
import stidi_rs as sr
from stidi_rs import checkpoint, datasets, presets


def readout_inputs(net, x, before_decision=False):
    """(tmax - t) / tmax of the layer below the output (0 for no spike)."""
    x = x.reshape(len(x), *net.input_shape)
    feats = []
    for lo in range(0, len(x), 2000):
        *_, below, out = net.forward(x[lo : lo + 2000])
        below = below.reshape(len(below), -1)
        if before_decision:  # what the output layer had seen when it decided
            below = np.where(below < out.min(1, keepdims=True), below, net.tmax)
        feats.append(below)
    return (net.tmax - np.concatenate(feats)) / net.tmax


def load(path):
    """A checkpoint, or `init:PRESET[:W1,W2]` for that preset's untrained net."""
    if path.startswith("init:"):
        name, _, widths = path[5:].partition(":")
        sizes = [int(w) for w in widths.split(",")] if widths else None
        return presets.get(name).build(seed=0, widths=sizes)
    return checkpoint.load(path)[0]


def layer_inputs(net, x):
    """(tmax - t) / tmax of every layer, flattened (0 for no spike)."""
    x = x.reshape(len(x), *net.input_shape)
    chunks = [net.forward(x[lo : lo + 2000]) for lo in range(0, len(x), 2000)]
    return [(net.tmax - np.concatenate([c[k].reshape(len(c[k]), -1) for c in chunks])) / net.tmax
            for k in range(len(net.layers))]


def softmax_regression(xtr, ytr, xva, yva, epochs=30, lr=0.05, decay=1e-4):
    rng = np.random.default_rng(0)
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xva = (xtr - mu) / sd, (xva - mu) / sd
    w, b = np.zeros((xtr.shape[1], 10)), np.zeros(10)
    for _ in range(epochs):
        order = rng.permutation(len(xtr))
        for lo in range(0, len(xtr), 100):
            i = order[lo : lo + 100]
            z = xtr[i] @ w + b
            p = np.exp(z - z.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            p[np.arange(len(i)), ytr[i]] -= 1
            w -= lr / len(i) * xtr[i].T @ p + decay * w
            b -= lr * p.mean(0)
    return ((xtr @ w + b).argmax(1) == ytr).mean(), ((xva @ w + b).argmax(1) == yva).mean()


def main():
    images, labels = datasets.load(sys.argv[1], "train")
    tr, va = slice(0, 20000), slice(55000, 57000)
    x = sr.encode(images[:, None])
    for name in sys.argv[2:]:
        start = time.time()
        if name == "pixels":
            ftr, fva = images[tr].reshape(-1, 784) / 255, images[va].reshape(-1, 784) / 255
        elif name.startswith("pixels>"):  # binarised: what a layer that decides early sees
            cut = int(name[7:])
            ftr, fva = ((images[s].reshape(-1, 784) > cut).astype(float) for s in (tr, va))
        elif name.endswith("@layers"):
            path = name.removesuffix("@layers")
            net = load(path)
            for k, (ftr, fva) in enumerate(zip(layer_inputs(net, x[tr]), layer_inputs(net, x[va]))):
                train, val = softmax_regression(ftr, labels[tr], fva, labels[va])
                print(f"{path} layer {k} ({type(net.layers[k]).__name__}, {ftr.shape[1]} units): "
                      f"train {train:.4f}, held-out {val:.4f} ({time.time() - start:.0f} s)",
                      flush=True)
            continue
        else:
            path, cut = name.removesuffix("@decision"), name.endswith("@decision")
            net = load(path)
            ftr, fva = readout_inputs(net, x[tr], cut), readout_inputs(net, x[va], cut)
            if cut:  # the network's decision rule (ties and silence included)
                own = (net.predict(x[va].reshape(-1, *net.input_shape)) == labels[va]).mean()
                print(f"{path}: its own spiking read-out {own:.4f}")
        train, val = softmax_regression(ftr, labels[tr], fva, labels[va])
        print(f"{name}: train {train:.4f}, held-out {val:.4f} ({time.time() - start:.0f} s)",
              flush=True)


if __name__ == "__main__":
    main()

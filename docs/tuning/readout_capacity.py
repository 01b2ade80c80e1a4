"""Is a trained net limited by its features or by its output layer's linear read-out?

Fits three non-spiking read-outs (NumPy minibatch SGD with momentum) to the spike
times the output layer reads, `(tmax - t) / tmax` (0 for no spike): softmax
regression (linear), maxout (the max of K linear units per class: what an output
layer with K spiking neurons per class, the first to fire deciding, could express)
and a one-hidden-layer ReLU MLP. Uses the checkpoint's own split (`--val-size`,
`--seed` in its config): trains on the first N images of its training part and
scores its validation images, so no image the checkpoint validated on is trained on.

    STIDI_RS_DATA=../shared/datasets RAYON_NUM_THREADS=1 python docs/tuning/readout_capacity.py \\
        fashion-mnist checkpoints/csnn-shallow-wide-tau80-fashion-mnist.npz [N [KINDS]]

N: training images (20,000 by default); KINDS: a comma-separated subset of
linear,maxout,mlp (all three by default).
"""

import sys
import time

import numpy as np
import stidi_rs as sr
from probe import readout_inputs  # docs/tuning/probe.py
from stidi_rs import checkpoint, datasets
from stidi_rs.cli import _split


def fit(xtr, ytr, xva, yva, kind, epochs=20, lr=0.02, hidden=1000, k=4, decay=1e-4, seed=0):
    """Train accuracy and held-out accuracy of one read-out; kind: linear, maxout or mlp."""
    rng = np.random.default_rng(seed)
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xva = ((xtr - mu) / sd).astype(np.float32), ((xva - mu) / sd).astype(np.float32)
    n_in = xtr.shape[1]
    if kind == "mlp":
        params = [rng.normal(0, np.sqrt(2 / n_in), (n_in, hidden)).astype(np.float32),
                  np.zeros(hidden, np.float32),
                  rng.normal(0, np.sqrt(1 / hidden), (hidden, 10)).astype(np.float32),
                  np.zeros(10, np.float32)]
    else:
        units = 10 * (k if kind == "maxout" else 1)
        params = [rng.normal(0, 0.01, (n_in, units)).astype(np.float32),
                  np.zeros(units, np.float32)]
    velocity = [np.zeros_like(p) for p in params]

    def forward(x):
        if kind == "mlp":
            h = np.maximum(x @ params[0] + params[1], 0)
            return h @ params[2] + params[3], h
        z = x @ params[0] + params[1]
        if kind == "maxout":  # units are class-major: class c owns units c*k .. c*k+k-1
            zk = z.reshape(len(x), 10, k)
            return zk.max(2), zk.argmax(2)
        return z, None

    def grads(x, y):
        logits, aux = forward(x)
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        p[np.arange(len(y)), y] -= 1
        p /= len(y)
        if kind == "mlp":
            dh = (p @ params[2].T) * (aux > 0)
            return [x.T @ dh, dh.sum(0), aux.T @ p, p.sum(0)]
        if kind == "maxout":  # the gradient goes to each class's winning unit
            dz = np.zeros((len(y), 10, k), np.float32)
            np.put_along_axis(dz, aux[:, :, None], p[:, :, None], 2)
            dz = dz.reshape(len(y), 10 * k)
            return [x.T @ dz, dz.sum(0)]
        return [x.T @ p, p.sum(0)]

    for e in range(epochs):
        step = lr * 0.5 * (1 + np.cos(np.pi * e / epochs))  # cosine schedule
        order = rng.permutation(len(xtr))
        for lo in range(0, len(xtr), 100):
            i = order[lo : lo + 100]
            for p, v, g in zip(params, velocity, grads(xtr[i], ytr[i])):
                v *= 0.9
                v -= step * (g + decay * p)
                p += v

    def accuracy(x, y):
        return np.mean(np.concatenate([forward(x[lo : lo + 2000])[0].argmax(1)
                                       for lo in range(0, len(x), 2000)]) == y)

    return accuracy(xtr, ytr), accuracy(xva, yva)


def main():
    dataset, path = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 20000
    kinds = sys.argv[4].split(",") if len(sys.argv) > 4 else ["linear", "maxout", "mlp"]
    net, config = checkpoint.load(path)
    trainer = config["trainer"]
    images, labels = datasets.load(dataset, "train")
    (xtr, ytr), (xva, yva) = _split(images, labels, trainer["config"]["val_size"], trainer["seed"])
    xtr, ytr = xtr[:n], ytr[:n]
    start = time.time()
    ftr = readout_inputs(net, sr.encode(xtr[:, None]))
    fva = readout_inputs(net, sr.encode(xva[:, None]))
    own = (net.predict(sr.encode(xva[:, None]).reshape(-1, *net.input_shape)) == yva).mean()
    print(f"{path}: {ftr.shape[1]} inputs to the output; its own spiking read-out "
          f"{own:.4f} on {len(yva)} validation images ({time.time() - start:.0f} s)", flush=True)
    for kind in kinds:
        start = time.time()
        train, val = fit(ftr, ytr, fva, yva, kind)
        print(f"  {kind}: train {train:.4f}, validation {val:.4f} ({time.time() - start:.0f} s)",
              flush=True)


if __name__ == "__main__":
    main()

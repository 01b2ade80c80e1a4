"""Is the rule or the spiking net the limit? Train the Dense 784-H-10 net by the exact
gradient of the same loss.

The forward model is the `dense` presets' (PL-PSP, tau_rise 40, tau_fall inf,
theta 30 and 60, weights uniform in (0, 1), seed 0), and the loss is STiDi-BP's
output loss E = 1/2 sum_k e_k^2 with the relative targets of spec section 6. The
weights move by Adam on mini-batches along the exact gradient of E (spike times are
piecewise linear in weights and input times: dt_j/dw_ji = -eps(t_j - t_i) / V_j',
dt_j/dt_i = w_ji eps'(t_j - t_i) / V_j'; see alignment.py), chained through both
layers. A neuron that does not fire has no gradient; like STiDi-BP, it is treated
as firing at T_max with Eq. 9's slope theta / T_max, so a silent label neuron can
still learn. Prints validation accuracy (training images 55,000-56,999, as the
sweep lines of docs/results.md) after every epoch, and the running training accuracy.

    STIDI_RS_DATA=../shared/datasets RAYON_NUM_THREADS=1 \\
        python docs/tuning/gradient.py fashion-mnist 400 3 [--lr 1e-3] [--batch 16] \\
            [--ce S] [--th 30,60] [--tau 40]

`--ce S` swaps E for the cross-entropy of softmax(-t_k / S) over the output spike
times (the loss of Mostafa's and Comsa et al.'s exact-gradient TTFS nets).
"""

import argparse
import time

import numpy as np
import stidi_rs as sr
from stidi_rs import datasets, reference

TAU, TMAX, GAMMA = 40.0, 256.0, 3.0  # TAU: --tau


def eps(s):  # the PL-PSP with tau_fall = inf, and its slope from the left
    return np.clip(s / TAU, 0.0, 1.0)


def deps(s):
    return ((s > 0) & (s <= TAU)) / np.float32(TAU)


def lags(t_out, t_in):
    return t_out[:, :, None] - t_in[:, None, :]


def inv_slope(t_in, t_out, w, threshold):
    """1 / V'(t_out) from the left, (B, n), (B, m) -> (B, m); Eq. 9's for silent ones."""
    v = (w[None] * deps(lags(t_out, t_in))).sum(-1)
    # a crossing at a near-flat V would give an unbounded step; floor the slope
    return np.where(t_out < TMAX, 1.0 / np.maximum(v, 1e-3), TMAX / threshold)


def gradients(x, h, o, y, w1, w2, ce=None, th=(30.0, 60.0)):
    """dE/dw2, dE/dw1 summed over the batch, and the number of images with an error.

    With `ce` (a time scale s), E is instead the cross-entropy of softmax(-t_k / s)."""
    e = (reference.output_targets(o, y, GAMMA, TMAX) - o) / TMAX
    if ce:
        z = -(o - o.min(1, keepdims=True)) / ce
        p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        p[np.arange(len(y)), y] -= 1.0
        dE_do = -p / ce
    else:
        dE_do = -e / TMAX
    g_o = (dE_do * inv_slope(h, o, w2, th[1])).astype(np.float32)  # dE/dt_k / V_k'
    d_w2 = -np.einsum("bk,bkh->kh", g_o, eps(lags(o, h)))
    dE_dh = np.einsum("bk,kh,bkh->bh", g_o, w2, deps(lags(o, h)))
    g_h = (dE_dh * inv_slope(x, h, w1, th[0])).astype(np.float32)
    d_w1 = -np.einsum("bh,bhi->hi", g_h, eps(lags(h, x)))
    return d_w1, d_w2, int((np.abs(e).sum(1) > 0).sum())


def check(net, x, y, ce, th):
    """Central finite differences of the loss against `gradients`, for the largest
    gradient entry of each layer on two images: the script's own self-check."""
    rows = np.arange(len(y))

    def loss():
        o = net.forward(x)[1]
        if ce:
            z = -(o - o.min(1, keepdims=True)) / ce
            return float(-(z[rows, y] - np.log(np.exp(z).sum(1))).sum())
        return float(0.5 * (((target - o) / TMAX) ** 2).sum())

    h, o = net.forward(x)
    target = reference.output_targets(o, y, GAMMA, TMAX)  # held fixed, as in E
    w = [np.asarray(layer.weight, np.float32) for layer in net.layers]
    grads = gradients(
        x.astype(np.float32), h.astype(np.float32), o.astype(np.float32), y, *w, ce, th
    )
    for layer, g in zip(net.layers, grads[:2]):
        w0 = np.asarray(layer.weight).copy()
        at = np.unravel_index(np.abs(g).argmax(), g.shape)
        diffs = []
        for step in (1e-4, -1e-4):
            moved = w0.copy()
            moved[at] += step
            layer.weight = moved
            diffs.append(loss())
        layer.weight = w0
        numeric = (diffs[0] - diffs[1]) / 2e-4
        print(f"finite-difference check, {layer.weight.shape}: {numeric:.6g} vs {g[at]:.6g}")


def main():
    global TAU
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset")
    ap.add_argument("hidden", type=int)
    ap.add_argument("epochs", type=int)
    ap.add_argument("--lr", type=float, default=1e-3, help="Adam step size")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--ce", type=float, help="cross-entropy of softmax(-t_k / CE) instead of E")
    ap.add_argument("--th", default="30,60", help="hidden and output thresholds")
    ap.add_argument("--train-size", type=int, default=55000, help="the first N images")
    ap.add_argument("--tau", type=float, default=TAU, help="the PSP's rise time tau_rise")
    args = ap.parse_args()
    TAU = args.tau
    dataset, hidden, epochs = args.dataset, args.hidden, args.epochs
    lr, batch, ce = args.lr, args.batch, args.ce
    th = tuple(float(v) for v in args.th.split(","))
    images, labels = datasets.load(dataset, "train")
    x_all = sr.encode(images.reshape(len(images), -1)).astype(np.float32)
    x, y = x_all[: args.train_size], labels[: args.train_size]
    xv, yv = x_all[55000:57000], labels[55000:57000]
    net = sr.Network(
        [sr.Dense(784, hidden, th[0]), sr.Dense(hidden, 10, th[1])],
        (784,),
        psp=sr.PSP(TAU, float("inf")),
        seed=0,
    )
    params = [np.asarray(layer.weight, np.float64).copy() for layer in net.layers]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    check(net, x[:2].astype(np.float64), y[:2], ce, th)
    step, start = 0, time.time()
    for epoch in range(epochs):
        order = np.random.default_rng([0, epoch]).permutation(len(x))
        right = wrong = 0
        for lo in range(0, len(x), batch):
            idx = order[lo : lo + batch]
            h, o = (t.astype(np.float32) for t in net.forward(x[idx]))
            right += int((o.argmin(1) == y[idx]).sum())
            w1, w2 = (p.astype(np.float32) for p in params)
            d_w1, d_w2, n_err = gradients(x[idx], h, o, y[idx], w1, w2, ce, th)
            wrong += n_err
            step += 1
            for i, g in enumerate((d_w1 / len(idx), d_w2 / len(idx))):
                m[i] = 0.9 * m[i] + 0.1 * g
                v[i] = 0.999 * v[i] + 0.001 * g * g
                m_hat, v_hat = m[i] / (1 - 0.9**step), v[i] / (1 - 0.999**step)
                params[i] -= lr * m_hat / (np.sqrt(v_hat) + 1e-8)
            for layer, p in zip(net.layers, params):
                layer.weight = p
        val = float((net.predict(xv) == yv).mean())
        fit = float((net.predict(x[:2000]) == y[:2000]).mean())  # as the sweep lines'
        fired = [round(float((t < TMAX).mean()), 2) for t in net.forward(xv[:500])]
        print(
            f"epoch {epoch + 1}: validation {val:.4f}, train[:2000] {fit:.4f}, running "
            f"train first-spike {right / len(x):.4f}, "
            f"images with an output error {wrong / len(x):.3f}, "
            f"fired {fired}, {time.time() - start:.0f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()

"""How well does STiDi-BP's update of a Dense 784-H-10 net follow the true gradient?

For each image, the output layer's loss E = 1/2 sum_k e_k^2 (the relative targets
of spec §6, held fixed) has an exact gradient with respect to every weight, since
spike times are piecewise-linear functions of weights and input times:
dt_j/dw_ji = -eps(t_j - t_i) / V_j'(t_j) and dt_j/dt_i = w_ji eps'(t_j - t_i) /
V_j'(t_j), with V_j' the slope of the potential just before the crossing. STiDi-BP
replaces 1/V_j' by the linear approximation t_j/theta (Eq. 9), gives each layer
its own (normalised) target instead of chaining the gradient, and with the
causal displacement puts 1/tau_rise in place of eps'. This script prints the
cosine between STiDi-BP's weight change and the negative exact gradient, per
layer, per image (mean over images with both non-zero) and for the sum over the
images (what a batch of them would do), next to two variants that swap in the
exact pieces one after the other; the last differs from the gradient only by the
per-image normalisation (and the clipping of targets to [0, T]), so its
per-image cosine of 1 checks the script.

    export STIDI_RS_DATA=../shared/datasets
    python docs/tuning/alignment.py checkpoints/dense-fashion-mnist.npz fashion-mnist
    python docs/tuning/alignment.py init:dense fashion-mnist  # the untrained preset
"""

import sys

import numpy as np
from stidi_rs import checkpoint, datasets, presets, reference


def slope(t_in, t_out, w, tau):
    """V_j'(t_j) from the left, rows (R, n) and (R, m) -> (R, m)."""
    k = reference.deps(t_out[:, :, None] - t_in[:, None, :], tau, np.inf)
    return np.einsum("mn,rmn->rm", w, k)


def main():
    path, dataset = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 200
    gamma, tau, tmax = 3.0, 40.0, 256.0
    net = (
        presets.get(path[5:]).build(seed=0)
        if path.startswith("init:")  # untrained
        else checkpoint.load(path, backend="numpy")[0]
    )
    hidden, out = net.layers
    if net.psp.tau_rise != tau or np.isfinite(net.psp.tau_fall) or hidden.binary:
        raise SystemExit("written for the real-valued dense presets: PSP(40, inf)")
    images, labels = datasets.load(dataset, "train")
    x = reference.encode(images[55000 : 55000 + n].reshape(n, -1))
    y = labels[55000 : 55000 + n]
    w1, w2 = np.asarray(hidden.weight, float), np.asarray(out.weight, float)
    th1, th2 = hidden.threshold, out.threshold
    h = reference.dense_forward(x, w1, th1, net.psp, tmax)
    o = reference.dense_forward(h, w2, th2, net.psp, tmax)
    e = (reference.output_targets(o, y, gamma, tmax) - o) / tmax  # (n, 10)
    fired_h, fired_o = h < tmax, o < tmax

    # exact gradient of E, as a weight change -dE/dw (per image)
    v_o = np.where(fired_o, slope(h, o, w2, tau), np.inf)
    v_h = np.where(fired_h, slope(x, h, w1, tau), np.inf)
    eps_o = reference.eps(o[:, :, None] - h[:, None, :], tau, np.inf)  # (n, 10, H)
    eps_h = reference.eps(h[:, :, None] - x[:, None, :], tau, np.inf)  # (n, H, 784)
    dE_do = -e / tmax
    true_w2 = -(dE_do / v_o)[:, :, None] * -eps_o
    deps_o = reference.deps(o[:, :, None] - h[:, None, :], tau, np.inf)
    dE_dh = np.einsum("rk,kh,rkh->rh", dE_do / v_o, w2, deps_o)
    true_w1 = -(dE_dh / v_h)[:, :, None] * -eps_h

    def stidi(factor_o, kernel, factor_h):
        """Output and hidden changes of STiDi-BP with the given pieces."""
        e_hat = reference.normalise(e)
        d_w2 = -(e_hat * factor_o)[:, :, None] * eps_o
        d_h = np.einsum("rk,kh,rkh->rh", e_hat * factor_o, w2, kernel)
        e_h = (np.clip(h + tmax * d_h, 0, tmax) - h) / tmax
        e_h = reference.normalise(e_h)
        d_w1 = -(e_h * factor_h)[:, :, None] * eps_h
        return d_w2, d_w1

    causal = np.where(o[:, :, None] - h[:, None, :] > 0, 1.0 / tau, 0.0)
    variants = {
        "STiDi-BP, causal displacement (the preset)": stidi(o / th2, causal, h / th1),
        "STiDi-BP, exact displacement": stidi(o / th2, deps_o, h / th1),
        "exact displacement and 1/V' for t/theta": stidi(
            np.where(fired_o, 1 / v_o, 0), deps_o, np.where(fired_h, 1 / v_h, 0)
        ),
    }

    def cosines(a, b):
        a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
        na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
        ok = (na > 0) & (nb > 0)
        per = (a[ok] * b[ok]).sum(1) / (na[ok] * nb[ok])
        sa, sb = a.sum(0), b.sum(0)
        whole = sa @ sb / (np.linalg.norm(sa) * np.linalg.norm(sb))
        return per.mean(), per.min(), ok.sum(), whole

    print(
        f"{path} on {n} {dataset} training images 55,000+: "
        f"{(o.argmin(1) == y).mean():.4f} first-spike accuracy, "
        f"{(np.abs(e).sum(1) > 0).mean():.3f} with an output error"
    )
    for name, (d_w2, d_w1) in variants.items():
        for layer, d, g in (("output", d_w2, true_w2), ("hidden", d_w1, true_w1)):
            per, low, count, whole = cosines(d, g)
            print(
                f"  {name}, {layer}: cosine {per:.3f} per image (lowest {low:.3f}, "
                f"{count} images), {whole:.3f} summed over the images",
                flush=True,
            )
    for layer, g in (("output", true_w2), ("hidden", true_w1)):
        norms = np.linalg.norm(g.reshape(n, -1), axis=1)  # how unevenly images weigh in
        print(
            f"  exact gradient, {layer}: the largest image's share of the summed "
            f"per-image norms {norms.max() / norms.sum():.3f}"
        )


if __name__ == "__main__":
    main()

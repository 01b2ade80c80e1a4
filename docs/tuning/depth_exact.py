"""Two conv layers against one under the exact rule, at a fixed budget, with diagnostics.

Builds conv5x5(C1) - pool2 - [conv5x5(C2) - pool2 -] dense(10) (or the output reading
pool2 and pool1, --skip), trains it with ExactGradient (Adam, batches of 16,
silent_push 1) on the first 22,000 Fashion-MNIST training images (--train 20000), of
which the CLI's seeded 2,000 are held out for validation, and prints validation accuracy, spikes per
layer and the fraction of neurons silent over the validation set after every epoch.

With --diag N, every N chunks of 1,024 images it also prints, per spiking layer and
on 64 training images (NumPy reference): the fraction of neurons that fire, the
sign bias of dL/dt over firing neurons (sum / sum of magnitudes; < 0 means the loss
asks the layer to fire later), the same for a = (dL/dt)/V' (what the weights and the
layer below hear), the median fraction of a spike's causal inputs on the PSP's
plateau (eps' = 0), and |grad|/|w|.

    python docs/tuning/depth_exact.py                        # csnn as the preset builds it
    python docs/tuning/depth_exact.py --shallow --th 4,100   # csnn-shallow
    python docs/tuning/depth_exact.py --tau 256 --init=-1,1/-1,1/0,1 \\
        --calibrate 0.5,0.5,0.5 --lr 0.005,0.003,0.01 [--skip] [--c2 64] [--silent-down 1] \\
        [--window 0.5] [--k2 3] [--pool2 0] [--train 58000 --epochs 8 --decay 0.8] [--probe]

Set STIDI_RS_DATA, and RAYON_NUM_THREADS to share the machine.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import stidi_rs as sr
from stidi_rs import reference as R
from stidi_rs.cli import _split
from stidi_rs.trainer import evaluate


def floats(text):
    return [float(v) for v in text.split(",")]


def build(args):
    inits = [tuple(floats(p)) for p in args.init.split("/")] if args.init else None
    th = floats(args.th)
    sc = floats(args.scale) if args.scale else [1.0] * 3
    if len(sc) == 2:  # --shallow: conv, output
        sc = [sc[0], 1.0, sc[1]]
    if args.shallow:
        init = inits or [(0.0, 1.0)] * 2
        layers = [
            sr.Conv2d(1, args.c1, 5, th[0], binary=args.binary, init=init[0], scale=sc[0]),
            sr.MaxPool2d(2),
            sr.Dense(args.c1 * 144, 10, th[-1], binary=args.binary, init=init[-1], scale=sc[-1]),
        ]
    else:
        init = inits or [(0.0, 1.0)] * 3
        extra = args.c1 * 144 if args.skip else 0
        side = 12 - args.k2 + 1
        layers = [
            sr.Conv2d(1, args.c1, 5, th[0], binary=args.binary, init=init[0], scale=sc[0]),
            sr.MaxPool2d(2),
            sr.Conv2d(
                args.c1, args.c2, args.k2, th[1], binary=args.binary, init=init[1], scale=sc[1]
            ),
        ]
        if args.pool2:
            layers.append(sr.MaxPool2d(args.pool2))
            side //= args.pool2
        layers.append(
            sr.Dense(
                args.c2 * side * side + extra,
                10,
                th[-1],
                binary=args.binary,
                init=init[-1],
                skip=1 if args.skip else None,
                scale=sc[-1],
            )  # fmt: skip
        )
    ramp = args.neuron == "ramp"
    return sr.Network(
        layers, (1, 28, 28), psp=None if ramp else sr.PSP(args.tau), seed=args.seed,
        input_window=args.window, neuron=args.neuron,
    )  # fmt: skip


def diagnose(net, t_in, labels, rule):
    """Per spiking layer statistics of the exact gradient (a copy of
    reference.exact_gradients that keeps what it passes down)."""
    layers, psp, tmax = net.layers, net.psp, net.tmax
    ramp = net.neuron == "ramp"
    times, _ = R.forward(layers, t_in, psp, tmax, net.neuron)
    batch = len(t_in)
    value, delta = R.output_loss(times[-1], labels, tmax, rule.loss, rule.gamma, rule.tau_soft)
    hidden = [i for i, layer in enumerate(layers[:-1]) if layer.kind != "maxpool2d"]
    report, skipped = {}, {}
    for li in reversed(range(len(layers))):
        layer, x, y = layers[li], R.layer_input(layers, li, t_in, times), times[li]
        if li in skipped:
            delta = delta + skipped.pop(li).reshape(delta.shape)
        if layer.kind == "maxpool2d":
            winner = R.maxpool2d_forward(x, layer.kernel_size)[1]
            delta = R.maxpool2d_route(delta, winner, x.shape, layer.kernel_size)
            continue
        w = np.asarray(layer.weight, dtype=np.float64)
        w_fwd = R._forward_weight(layer).reshape(len(w), -1)
        if li in hidden:
            delta = delta + rule.activity / (tmax * y[0].size)
        if layer.kind == "conv2d":
            c_in, k = w.shape[1], w.shape[2]
            rows_in = R.unfold(x, k).reshape(-1, c_in * k * k)
            rows_out = y.transpose(0, 2, 3, 1).reshape(-1, len(w))
            rows_d = delta.transpose(0, 2, 3, 1).reshape(-1, len(w))
        else:
            rows_in, rows_out, rows_d = x.reshape(batch, -1), y, delta
        if ramp:
            a, a_prop = R.ramp_factor(rows_out, rows_d, tmax, rule.silent_push, rule.silent_down)
        else:
            a, a_prop = R.exact_factor(
                rows_in, rows_out, rows_d, w_fwd, layer.threshold, psp, tmax,
                rule.min_slope, rule.silent_push, rule.silent_down,
            )  # fmt: skip
        # Ramp neurons take their kernels at the end of the window below (§3a).
        at = np.full_like(rows_out, tmax) if ramp else rows_out
        s = at[:, :, None] - rows_in[:, None, :]
        grad = -np.einsum("rm,rmn->mn", a, R.eps(s, psp.tau_rise, psp.tau_fall)) / batch
        dep = R.deps(s, psp.tau_rise, psp.tau_fall)
        fired = rows_out < tmax
        causal = (s > 0) & (rows_in[:, None, :] < tmax)
        plateau = (causal & (dep == 0)).sum(-1)[fired] / np.maximum(causal.sum(-1)[fired], 1)

        def bias(v):
            return float(v.sum() / max(np.abs(v).sum(), 1e-30)) if v.size else float("nan")

        report[li] = (
            f"L{li} fire {fired.mean():.2f} dL/dt bias {bias(rows_d[fired]):+.2f} "
            f"a bias {bias(a[fired]):+.2f} plateau {np.median(plateau) if plateau.size else 0:.2f} "
            f"|g|/|w| {np.linalg.norm(grad) / np.linalg.norm(w):.1e}"
        )
        d = np.einsum("rm,mn,rmn->rn", a_prop, w_fwd, dep)
        if layer.kind == "conv2d":
            d = R.fold(d.reshape(batch, *y.shape[2:], -1), x.shape[1], k)
        delta = d.reshape(x.shape)
        if getattr(layer, "skip", None) is not None:
            n = times[li - 1][0].size
            skipped[layer.skip] = delta[:, n:]
            delta = delta[:, :n].reshape(times[li - 1].shape)
    return f"loss {float(value.mean()):.3f}  " + "  ".join(report[k] for k in sorted(report))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shallow", action="store_true", help="one conv layer read out directly")
    p.add_argument("--skip", action="store_true", help="the output also reads pool1")
    p.add_argument("--c1", type=int, default=16)
    p.add_argument("--c2", type=int, default=32)
    p.add_argument("--k2", type=int, default=5, help="conv2's kernel size")
    p.add_argument("--pool2", type=int, default=2, help="pool2's size (0: no pool2)")
    p.add_argument("--th", default="4,30,40", help="thresholds (before calibration)")
    p.add_argument("--init", default=None, help="per spiking layer low,high joined by /")
    p.add_argument("--tau", type=float, default=40.0, help="PSP rise (tau_fall = inf)")
    p.add_argument("--calibrate", default=None, help="fire fraction per spiking layer")
    p.add_argument("--neuron", default="psp", help="psp or ramp (--tau is then unused)")
    p.add_argument("--tau-soft", type=float, default=16.0, help="cross-entropy temperature")
    p.add_argument("--silent-push", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--binary", action="store_true", help="binary forward weights everywhere")
    p.add_argument("--scale", default=None, help="binary weights' scale per spiking layer")
    p.add_argument("--rule", default="exact", help="exact or stidi-bp (--lr its rates)")
    p.add_argument("--conv-reduce", default="sum", help="STiDi-BP's conv_reduce")
    p.add_argument("--slope", default="paper", help="STiDi-BP's slope: paper or exact")
    p.add_argument("--gamma", type=float, default=3.0, help="STiDi-BP's target margin")
    p.add_argument("--targets", default="relative", help="STiDi-BP's targets: relative, softmax")
    p.add_argument("--no-normalize", action="store_true", help="STiDi-BP without error norms")
    p.add_argument("--lr", default="0.01", help="one rate or one per spiking layer")
    p.add_argument("--activity", type=float, default=0.0)
    p.add_argument("--min-slope", type=float, default=0.1)
    p.add_argument(
        "--silent-down", type=float, default=0.0, help="silent_down: silent neurons' push sent down"
    )
    p.add_argument("--loss", default="cross_entropy")
    p.add_argument("--seed", type=int, default=0, help="seeds the weights (not the split)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train", type=int, default=20000, help="training images (+2,000 validation)")
    p.add_argument("--decay", type=float, default=1.0, help="lr multiplier per epoch")
    p.add_argument("--diag", type=int, default=0, help="diagnose every N chunks (0: never)")
    p.add_argument(
        "--window", type=float, default=1.0,
        help="input spikes span this fraction of tmax (the deeper layers keep the rest)",
    )  # fmt: skip
    p.add_argument(
        "--probe", action="store_true",
        help="after training, a ridge read-out of every layer's spike times",
    )  # fmt: skip
    args = p.parse_args()

    x, y = sr.datasets.load("fashion-mnist", "train")
    n = args.train + 2000
    (xtr, ytr), (xv, yv) = _split(x[:n], y[:n].astype(np.int64), 2000, 0)

    net = build(args)
    enc = net.encode

    if args.calibrate:
        spiking = [i for i, layer in enumerate(net.layers) if layer.kind != "maxpool2d"]
        got = net.calibrate_thresholds(enc(xtr[:256]), floats(args.calibrate), spiking)
        print("calibrated thresholds", [f"{t:.4g}" for t in got])
    lr = floats(args.lr)
    if args.rule == "stidi-bp":
        rule = sr.STiDiBP(
            net, lr=lr if len(lr) > 1 else lr[0], conv_reduce=args.conv_reduce, slope=args.slope,
            gamma=args.gamma, targets=args.targets, tau_soft=args.tau_soft,
            normalize=not args.no_normalize,
        )  # fmt: skip
    else:
        rule = sr.ExactGradient(
            net, lr=lr if len(lr) > 1 else lr[0], silent_push=args.silent_push,
            activity=args.activity, min_slope=args.min_slope, loss=args.loss,
            silent_down=args.silent_down, tau_soft=args.tau_soft,
        )  # fmt: skip
    vt, probe = enc(xv), (enc(xtr[-64:]), ytr[-64:])
    chunk, start = 16 * 64, time.time()
    base = list(rule.lr)
    for e in range(args.epochs):
        rule.lr = [r * args.decay**e for r in base]
        order = np.random.default_rng([0, e]).permutation(len(xtr))
        for c, lo in enumerate(range(0, len(xtr), chunk)):
            idx = order[lo : lo + chunk]
            rule.steps(enc(xtr[idx]), ytr[idx], args.batch)
            if args.diag and c % args.diag == args.diag - 1:
                net.backend = "numpy"
                print(f"  [epoch {e + 1} chunk {c + 1}] {diagnose(net, *probe, rule)}")
                net.backend = "rust"
        v = evaluate(net, vt, yv)
        print(
            f"epoch {e + 1}: val {100 * v['accuracy']:.2f} %  spikes/image "
            f"{[round(s) for s in v['spikes_per_layer']]}  silent "
            f"{[round(s, 2) for s in v['silent_fraction']]}  decision {v['decision_time']:.0f} "
            f"no-spike {v['cases']['none']}  {time.time() - start:.0f} s"
            + (f"  pinned {pinned(net, vt[:500])}" if args.neuron == "ramp" else ""),
            flush=True,
        )
    if args.probe:
        print("ridge read-out, validation:", probe_layers(net, enc(xtr[:5000]), ytr[:5000], vt, yv))


def pinned(net, t):
    """Per spiking layer, the fraction of neurons firing at their window's start."""
    times = net.forward(t)
    return [
        round(float((y <= 0).mean()), 3)
        for y, layer in zip(times, net.layers)
        if layer.kind != "maxpool2d"
    ]


def probe_layers(net, t_train, y_train, t_val, y_val):
    """Validation accuracy of a ridge regression on each layer's earliness (T - t)/T,
    fitted on t_train: how much of the class each layer still carries."""
    tr, va = net.forward(t_train), net.forward(t_val)
    targets = np.eye(10)[y_train] - 0.1
    out = {}
    for li in range(len(net.layers)):
        a = [(net.tmax - t[li].reshape(len(t[li]), -1)) / net.tmax for t in (tr, va)]
        mean = a[0].mean(0)
        xtr_, xva = a[0] - mean, a[1] - mean
        # The dual form: its kernels do not depend on the ridge, so they are made once.
        gram, cross = xtr_ @ xtr_.T, xva @ xtr_.T
        best = 0.0
        for lam in (1.0, 10.0, 100.0):
            dual = np.linalg.solve(gram + lam * np.eye(len(gram)), targets)
            best = max(best, float(((cross @ dual).argmax(1) == y_val).mean()))
        out[f"L{li} {net.layers[li].kind}"] = round(100 * best, 2)
    return out


if __name__ == "__main__":
    main()

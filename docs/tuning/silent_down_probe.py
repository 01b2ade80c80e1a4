"""What the push of silent neurons sends down (`silent_down`) does to the loss.

Builds and trains a net as docs/tuning/depth_exact.py does (same flags, plain
two conv layers by default), for --chunks chunks of 1,024 images, then on 512
other training images compares, per spiking layer, the plain exact gradient g0
(silent_down 0) with the part silent_down 1 adds, d = g1 - g0: their sizes,
cosine, and how the batch loss changes when only the conv layers' weights move a
small step (relative size --step of each layer's weights) along -g0 or -d. A
descent direction lowers the loss; d is not a gradient of it, and this says
whether it points downhill anyway. Also: how many output neurons are silent per
image, and how often the label's is.

    python docs/tuning/silent_down_probe.py --tau 256 --init=-1,1/-1,1/0,1 \\
        --calibrate 0.5,0.5,0.5 --lr 0.005,0.003,0.01 --c2 64 --chunks 10
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import stidi_rs as sr
from stidi_rs.cli import _split

sys.path.insert(0, str(Path(__file__).parent))
from depth_exact import build, floats  # noqa: E402


def main():
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag, default in (("--c1", 16), ("--c2", 32), ("--chunks", 10), ("--seed", 0)):
        p.add_argument(flag, type=int, default=default)
    p.add_argument("--shallow", action="store_true")
    p.add_argument("--skip", action="store_true")
    p.add_argument("--th", default="4,30,40")
    p.add_argument("--init", default=None)
    p.add_argument("--tau", type=float, default=40.0)
    p.add_argument("--calibrate", default=None)
    p.add_argument("--lr", default="0.01")
    p.add_argument("--silent-down", type=float, default=0.0, help="while training")
    p.add_argument("--step", default="1e-3,1e-2", help="relative step sizes")
    args = p.parse_args()

    x, y = sr.datasets.load("fashion-mnist", "train")
    (xtr, ytr), _ = _split(x[:22000], y[:22000].astype(np.int64), 2000, 0)

    def enc(a):
        return sr.encode(a.reshape(len(a), 1, 28, 28))

    net = build(args)
    spiking = [i for i, layer in enumerate(net.layers) if layer.kind != "maxpool2d"]
    if args.calibrate:
        net.calibrate_thresholds(enc(xtr[:256]), floats(args.calibrate), spiking)
    lr = floats(args.lr)
    lr = lr if len(lr) > 1 else lr[0]

    def rule(sd):
        return sr.ExactGradient(net, lr=lr, silent_push=1.0, silent_down=sd)

    train = rule(args.silent_down)
    order = np.random.default_rng([0, 0]).permutation(len(xtr) - 512)
    for lo in range(0, 1024 * args.chunks, 1024):
        idx = order[lo : lo + 1024]
        train.steps(enc(xtr[idx]), ytr[idx], 16)
    t, lab = enc(xtr[-512:]), ytr[-512:]
    out = net.forward(t)[-1]
    silent = out >= net.tmax
    print(
        f"after {args.chunks} chunks (silent_down {args.silent_down} while training): "
        f"silent outputs per image {silent.sum(1).mean():.2f}, label's silent "
        f"{silent[np.arange(len(lab)), lab].mean():.2f}, no output spike {silent.all(1).mean():.2f}"
    )
    loss0, g0 = rule(0.0).gradients(t, lab)
    _, g1 = rule(1.0).gradients(t, lab)
    d = [b - a for a, b in zip(g0, g1)]
    conv = [k for k, i in enumerate(spiking) if net.layers[i].kind == "conv2d"]
    for k, i in enumerate(spiking):
        n0, nd = np.linalg.norm(g0[k]), np.linalg.norm(d[k])
        cos = float((g0[k] * d[k]).sum() / max(n0 * nd, 1e-30))
        print(
            f"  L{i}: |g0| {n0:.3e}  |d| {nd:.3e}  "
            f"|d|/|g0| {nd / max(n0, 1e-30):.2f}  cos {cos:+.2f}"
        )
    weights = [layer.weight.copy() for layer in net.spiking_layers]
    for rel in floats(args.step):
        for name, g in (("-g0", g0), ("-d", d), ("-(g0+d)", g1)):
            for k in conv:
                layer = net.spiking_layers[k]
                norm = np.linalg.norm(g[k])
                step = rel * np.linalg.norm(weights[k]) / max(norm, 1e-30)
                layer.weight = weights[k] - step * g[k]
            loss = rule(0.0).gradients(t, lab)[0]
            for k, layer in enumerate(net.spiking_layers):
                layer.weight = weights[k]
            print(
                f"  conv weights along {name:8s} step {rel:g}: "
                f"loss {loss0:.4f} -> {loss:.4f} ({loss - loss0:+.2e})"
            )


if __name__ == "__main__":
    main()

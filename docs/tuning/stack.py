"""Stack a conv2 on a trained, frozen conv1 (greedy layer-wise training), as recorded in
docs/results.md.

Jointly trained, conv2 loses what conv1 found. Here conv1 comes
from a shipped one-conv-layer checkpoint and never changes, and conv2 is trained directly
under the output, where the rule trained conv1 well. Each line of the grid file is
keyword arguments of `run`. Training and validation images are the checkpoint's own
split (`stidi-rs train --val-size 5000 --seed 0`), so validation figures compare with
the checkpoint's; never the test set.

    STIDI_RS_DATA=../shared/datasets RAYON_NUM_THREADS=1 python docs/tuning/stack.py \\
        checkpoints/csnn-shallow-wide-tau80-fashion-mnist.npz fashion-mnist GRID
"""

import sys
import time

import numpy as np
import stidi_rs as sr
from stidi_rs import checkpoint, datasets
from stidi_rs.cli import _split
from sweep import connection_table  # docs/tuning/sweep.py


def run(base, x, y, val, c2=32, th2=15.0, th_out=20.0, lr=(3.2, 3.2), epochs=3, decay=0.7,
        readout=1, skip=False, homeo=(0.1, 0.6, 0.01), n=None, pool2=True, fan=None,
        keep=False, hidden=None, disp="exact", init=None):
    # c2=0: no conv2, the checkpoint's own output keeps training on frozen conv1 (control).
    # skip: the output reads pool2 then pool1; its pool1 weights start as the checkpoint's
    # output weights and its pool2 weights at 0, so training starts at the checkpoint.
    # pool2=False: the output reads conv2's 8x8 maps instead of their 4x4 pooling.
    # fan: each conv2 channel starts connected to `fan` random conv1 channels (U(0, 1)
    # weights, 0 elsewhere; LeNet-5's connection table): with all 32, positive random
    # weights make every channel the same blurred detector of early conv1 activity.
    # keep: the other weights are set back to 0 after every 1,024 images (a sparse conv2).
    # hidden: (units, threshold) of a Dense layer on pool1 in conv2's place; init: the
    # (low, high) of conv2's or that layer's initial weights (None: the layer's default);
    # disp: the rule's displacement ("exact" or "causal").
    if keep and not fan:
        raise ValueError("keep=True keeps a connection table: give fan too")
    conv1, out0 = base.spiking_layers
    x, y = (x[:n], y[:n]) if n else (x, y)
    first = [sr.Conv2d(1, conv1.out_channels, conv1.kernel_size, conv1.threshold),
             sr.MaxPool2d(2)]
    n1 = out0.in_features  # pool1's size
    if c2 == 0:
        top, lrs = [sr.Dense(n1, 10, out0.threshold)], [0.0, lr[-1]]
    elif hidden:
        top = [sr.Dense(n1, hidden[0], hidden[1], init=init), sr.Dense(hidden[0], 10, th_out)]
        lrs = [0.0, *lr]
    else:
        n2 = c2 * (16 if pool2 else 64)
        top = [sr.Conv2d(conv1.out_channels, c2, 5, th2, init=init),
               *([sr.MaxPool2d(2)] if pool2 else []),
               sr.Dense(n2 + (n1 if skip else 0), 10, out0.threshold if skip else th_out,
                        skip=1 if skip else None)]
        lrs = [0.0, *lr]
    net = sr.Network(first + top, (1, 28, 28), psp=base.psp, seed=0)
    net.spiking_layers[0].weight = conv1.weight
    if fan:
        mask = connection_table(net.spiking_layers[1].weight.shape, fan)
        net.spiking_layers[1].weight = net.spiking_layers[1].weight * mask
    if c2 == 0:
        net.spiking_layers[-1].weight = out0.weight
    elif skip:
        net.spiking_layers[-1].weight = np.hstack([np.zeros((10, n2)), out0.weight])
    frozen = net.spiking_layers[0].weight.copy()
    rule = sr.STiDiBP(net, lr=lrs, conv_reduce="mean", displacement=disp)
    guard = sr.Homeostasis(*homeo) if homeo else None
    start, scores = time.time(), []
    score = float((net.predict(val[0]) == val[1]).mean())
    print(f"   before training: validation {score:.4f}", flush=True)
    out = net.spiking_layers[-1]
    for epoch in range(epochs + readout):
        reading = epoch >= epochs  # as `stidi-rs train --readout-epochs`
        rule.lr = [0.0] * (len(lrs) - 1) + [lrs[-1] * decay**epoch] if reading else [
            v * decay**epoch for v in lrs]
        order = np.random.default_rng([0, epoch]).permutation(len(x))
        total, batches = 0.0, 0
        for lo in range(0, len(x), 1024):
            idx = order[lo : lo + 1024]
            rule.steps(x[idx], y[idx], 1)
            if guard and not reading:
                guard(net, x[idx])
                net.spiking_layers[0].weight = frozen  # the guard may not touch conv1
            if keep and not reading:
                net.spiking_layers[1].weight = net.spiking_layers[1].weight * mask
            if reading:  # the read-out epoch averages the output's weights
                total, batches = total + out.weight, batches + 1
        if reading:
            out.weight = total / batches
        fired = [round(float((o < 256).mean()), 2) for o in net.forward(val[0][:500])]
        scores.append(round(float((net.predict(val[0]) == val[1]).mean()), 4))
        print(f"   {'read-out ' if reading else ''}epoch {epoch + 1}: validation "
              f"{scores[-1]:.4f}, fired {fired}, {time.time() - start:.0f} s", flush=True)
    return scores


def main():
    base, config = checkpoint.load(sys.argv[1])
    images, labels = datasets.load(sys.argv[2], "train")
    # the split of the checkpoint's `stidi-rs train --val-size V --seed S`
    train, val = _split(sr.encode(images[:, None]), labels,
                        config["trainer"]["config"]["val_size"], config["trainer"]["seed"])
    for line in open(sys.argv[3]):
        line = line.strip()
        if line and not line.startswith("#"):
            print(line, "=>", run(base, *train, val, **eval(f"dict({line})")), flush=True)


if __name__ == "__main__":
    main()

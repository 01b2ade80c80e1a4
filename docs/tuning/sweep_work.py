"""What a breakpoint sweep does per image, layer by layer, for the benchmark networks.

A PSP layer's sweep (docs/benchmarks.md, "What makes it fast") does two kinds of
vector work per output position: each breakpoint event adds one weight row to the
position's counts (a row of floats, or of packed signs for a binary layer), and each
distinct event time advances every neuron of the position (`V += r·dt/τ1` and the
crossing test, the same float arithmetic for both kernels). This prints, per
spiking layer and averaged over images, the events and distinct times per position
and the neuron-lane work of each kind (events × neurons, times × neurons), from the
reference's spike times of the benchmark's untrained network and of a shipped one.

    STIDI_RS_DATA=../shared/datasets python docs/tuning/sweep_work.py --n 200
"""

import argparse

import numpy as np
import stidi_rs as sr
from stidi_rs import bench, datasets
from stidi_rs import reference as R


def layer_work(net, x):
    """Per spiking PSP layer: (name, positions, neurons per position, events,
    distinct times), the last two summed over positions and averaged over images."""
    times, _ = R.forward(net.layers, x, net.psp, net.tmax)
    rows = []
    for i, layer in enumerate(net.layers):
        if layer.kind not in ("conv2d", "dense"):
            continue
        t_in = R.layer_input(net.layers, i, x, times)
        if layer.kind == "conv2d":
            fields = R.unfold(t_in, layer.kernel_size)
            fields = fields.reshape(len(x), -1, fields.shape[-1])  # (batch, positions, field)
            neurons = layer.out_channels
        else:
            fields = t_in.reshape(len(x), 1, -1)
            neurons = layer.out_features
        events = distinct = 0
        for sample in fields:
            for f in sample:
                a = f[f < net.tmax]
                bp = np.concatenate([a, a + net.psp.tau_rise])
                if np.isfinite(net.psp.tau_fall):
                    bp = np.concatenate([bp, a + net.psp.tau_rise + net.psp.tau_fall])
                bp = bp[bp < net.tmax]
                events += len(bp)
                distinct += len(np.unique(bp))
        name = f"{layer.kind}({neurons})"
        rows.append((name, fields.shape[1], neurons, events / len(x), distinct / len(x)))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="MNIST training images")
    args = ap.parse_args()
    images, _ = datasets.load("mnist", "train")
    nets = [(f"bench {m}, untrained", bench.build(m, True, "numpy")) for m in ("dense", "csnn")]
    nets.append(("dense-binary, shipped", sr.pretrained("dense-binary", "mnist")))
    print("| network | layer | positions | neurons | events | distinct times |", end="")
    print(" event × neuron | time × neuron |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for label, net in nets:
        net.backend = "numpy"
        x = sr.encode(images[: args.n].reshape(args.n, *net.input_shape), tmax=net.tmax)
        for name, pos, neurons, ev, dist in layer_work(net, x):
            print(
                f"| {label} | {name} | {pos} | {neurons} | {ev:,.0f} | {dist:,.0f} | "
                f"{ev * neurons:,.0f} | {dist * neurons:,.0f} |"
            )


if __name__ == "__main__":
    main()

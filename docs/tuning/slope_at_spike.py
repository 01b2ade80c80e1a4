"""What STiDi-BP's factor t_j/θ stands in for, measured at every conv spike of a
checkpoint: the exact -dt_j/dV = 1/V'_j(t_j) (docs/algorithm.md §10), and the share
of the inputs that fired before a spike whose PSP has reached its plateau (they add
to V but not to V', and move no spike time).

Prints, per conv layer of the checkpoint, on the first 40 test images: the fraction
of neurons that fire, quantiles (10/50/90 %) of their spike times, of the plateau
share, of V', of 1/V' and of t/θ, and the rank correlation of t/θ with 1/V'.

    STIDI_RS_DATA=../shared/datasets python docs/tuning/slope_at_spike.py \\
        checkpoints/csnn-fashion-mnist.npz fashion-mnist
"""

import sys

import numpy as np
import stidi_rs as sr
from stidi_rs import checkpoint, datasets
from stidi_rs import reference as ref


def ranks(a):
    return np.argsort(np.argsort(a))


def main():
    net, _ = checkpoint.load(sys.argv[1], backend="numpy")
    images, _ = datasets.load(sys.argv[2], "test")
    t_in = sr.encode(images[:40].reshape(-1, *net.input_shape))
    times = net.forward(t_in)
    psp, tmax = net.psp, net.tmax
    for li, layer in enumerate(net.layers):
        if layer.kind != "conv2d":
            continue
        x = t_in if li == 0 else times[li - 1]
        k = layer.kernel_size
        rows_in = ref.unfold(x, k).reshape(-1, layer.in_channels * k * k)
        rows_out = times[li].transpose(0, 2, 3, 1).reshape(-1, layer.out_channels)
        w = ref._forward_weight(layer).reshape(layer.out_channels, -1)
        s = rows_out[:, :, None] - rows_in[:, None, :]
        fired = rows_out < tmax
        slope = np.einsum("rmn,mn->rm", ref.deps(s, psp.tau_rise, psp.tau_fall), w)[fired]
        before = (s > 0) & (rows_in[:, None, :] < tmax)
        plateau = ((s > psp.tau_rise) & before).sum(-1) / np.maximum(before.sum(-1), 1)
        t = rows_out[fired]
        inv = 1 / np.maximum(slope, 1e-12)
        q = [10, 50, 90]
        print(
            f"layer {li} (θ {layer.threshold:g}): fire {fired.mean():.2f}; t {np.percentile(t, q).round(1)}; "
            f"plateau share {np.percentile(plateau[fired], q).round(2)}; V' {np.percentile(slope, q).round(4)}; "
            f"1/V' {np.percentile(inv, q).round(1)}; t/θ {np.percentile(t / layer.threshold, q).round(1)}; "
            f"rank correlation {np.corrcoef(ranks(t / layer.threshold), ranks(inv))[0, 1]:.2f}"
        )


if __name__ == "__main__":
    main()

"""When each layer of a checkpoint fires: fraction of neurons that fire and their
median first-spike time, per layer, on training images 55,000-55,999; and how
often the decision falls back to V(T) because no output neuron fired, with the
accuracy of either case.

    STIDI_RS_DATA=../shared/datasets RAYON_NUM_THREADS=1 python docs/tuning/timing.py \\
        mnist checkpoints/csnn-mnist.npz fashion-mnist checkpoints/csnn-fashion-mnist.npz
"""

import sys

import numpy as np
import stidi_rs as sr
from stidi_rs import checkpoint, datasets


def main():
    args = sys.argv[1:]
    for dataset, path in zip(args[::2], args[1::2]):
        net, _ = checkpoint.load(path)
        images, labels = (a[55000:56000] for a in datasets.load(dataset, "train"))
        x = sr.encode(images.reshape(len(images), *net.input_shape))
        outs = net.forward(x)
        print(f"{path} on {dataset}: pixels > 0 {np.mean(images > 0):.3f}")
        for layer, t in zip(net.layers, outs):
            fired = t < net.tmax
            median = np.median(t[fired]) if fired.any() else float("nan")
            print(f"  {layer.kind:9s} fired {fired.mean():.3f}  median t {median:.1f}")
        first = outs[-1].min(axis=1)
        print(f"  decision  mean t {first[first < net.tmax].mean():.1f}")
        right = net.predict(x) == labels
        silent = first >= net.tmax  # no output spike: the V(T) fallback decides
        for name, cases in (("output spike", ~silent), ("no spike", silent)):
            share = right[cases].mean() if cases.any() else float("nan")
            print(f"  {name:12s} on {cases.sum()} images, {share:.3f} right")


if __name__ == "__main__":
    main()

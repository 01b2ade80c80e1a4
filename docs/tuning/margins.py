"""How close are a checkpoint's decisions? Output-spike margins on its validation images.

For each validation image (the checkpoint's own split, `--val-size` and `--seed` in its
config; never the test set): the gap between the first and second output spike, how
often it falls within a few time units (within the rule's margin `gamma` an image still
gets a full-size normalised step), the same among the misclassified images, how late the
label's neuron fires after the winner on those, and how the decisions were made.

    STIDI_RS_DATA=../shared/datasets RAYON_NUM_THREADS=1 python docs/tuning/margins.py \\
        mnist checkpoints/csnn-shallow-xwide-tau80-mnist.npz
"""

import sys

import numpy as np
import stidi_rs as sr
from stidi_rs import checkpoint, datasets
from stidi_rs.cli import _split


def main():
    dataset, path = sys.argv[1], sys.argv[2]
    net, config = checkpoint.load(path)
    trainer = config["trainer"]
    images, labels = datasets.load(dataset, "train")
    _, (xva, yva) = _split(images, labels, trainer["config"]["val_size"], trainer["seed"])
    t = sr.encode(xva[:, None]).reshape(-1, *net.input_shape)
    pred, case = net.predict(t, return_cases=True)
    out = np.concatenate([net.forward(t[lo : lo + 1000])[-1] for lo in range(0, len(t), 1000)])
    first = np.sort(out, 1)
    gap = first[:, 1] - first[:, 0]
    wrong = pred != yva
    unique, tie, silent = np.bincount(case, minlength=3)
    print(f"{path}: validation {np.mean(~wrong):.4f} on {len(yva)} images, {wrong.sum()} wrong; "
          f"decided by a unique first spike {unique}, a tie {tie}, no output spike {silent}")
    for g in (0, 1, 3, 5, 10, 20):
        print(f"  gap between first and second output spike <= {g:>2}: "
              f"{np.mean(gap <= g):.4f} of all images, {np.mean(gap[wrong] <= g):.3f} of the wrong")
    late = out[np.arange(len(yva)), yva][wrong] - first[wrong, 0]
    print("  on the wrong ones the label's neuron fires after the winner by (25, 50, 75, 90 %): "
          + ", ".join(f"{v:.1f}" for v in np.percentile(late, [25, 50, 75, 90]))
          + f"; it stays silent on {np.mean(late >= net.tmax - first[wrong, 0]):.3f}")
    print(f"  median first output spike {np.median(first[:, 0]):.1f}")


if __name__ == "__main__":
    main()

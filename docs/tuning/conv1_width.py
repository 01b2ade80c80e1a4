"""Train a one-conv-layer preset with a different conv1 width, through the library's Trainer.

The CLI's presets fix conv1's width; this script swaps it (the output layer's fan-in
follows) and otherwise runs exactly what `stidi-rs train --preset P --val-size 5000`
runs: the preset's rule, schedule and homeostasis, the CLI's seeded validation split,
optional augmentation, a checkpoint and a metrics.jsonl record per epoch in OUT (the
summary is printed at the end), and one test evaluation (`stidi-rs eval OUT/last.npz`
reproduces it).

    STIDI_RS_DATA=../shared/datasets RAYON_NUM_THREADS=1 python docs/tuning/conv1_width.py \\
        csnn-shallow-wide-tau80 mnist 64 runs/w64 --augment-shift 1
"""

import argparse
import dataclasses
import json

from stidi_rs import STiDiBP, datasets, encode, presets
from stidi_rs.augment import Augment
from stidi_rs.cli import _split
from stidi_rs.learning import Homeostasis
from stidi_rs.trainer import Trainer, evaluate


def main():
    p = argparse.ArgumentParser()
    p.add_argument("preset")
    p.add_argument("dataset", choices=["mnist", "fashion-mnist"])
    p.add_argument("channels", type=int)
    p.add_argument("out")
    p.add_argument("--augment-shift", type=int, default=0)
    p.add_argument("--augment-flip", action="store_true")
    p.add_argument("--lr", type=lambda s: [float(v) for v in s.split(",")], default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--lr-decay", type=float, default=None)
    p.add_argument("--readout-epochs", type=int, default=None)
    p.add_argument("--readout-lr", type=float, default=None)
    p.add_argument("--readout-average", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    preset = presets.get(args.preset)
    conv, pool, dense = preset.layers
    if conv[0] != "conv2d" or pool[0] != "maxpool2d" or dense[0] != "dense" or len(dense) != 4:
        raise SystemExit(f"{args.preset} is not a one-conv-layer preset")
    c = args.channels
    fan_in = dense[1] // conv[2] * c
    layers = ((*conv[:2], c, *conv[3:]), pool, (dense[0], fan_in, *dense[2:]))
    preset = dataclasses.replace(preset, layers=layers)
    net = preset.build(seed=args.seed)
    rule = {**preset.rule, **({"lr": args.lr} if args.lr else {})}
    trainer = Trainer(
        net,
        STiDiBP(net, **rule),
        epochs=args.epochs or preset.epochs,
        lr_decay=preset.lr_decay if args.lr_decay is None else args.lr_decay,
        seed=args.seed,
        out_dir=args.out,
        progress=None,  # a progress bar on a terminal
        config={
            "preset": f"{args.preset} (conv1 {c})",
            "dataset": args.dataset,
            "train_size": 0,
            "val_size": 5000,
        },
        readout_epochs=(
            preset.readout_epochs if args.readout_epochs is None else args.readout_epochs
        ),
        readout_lr=args.readout_lr,
        readout_average=args.readout_average,
        homeostasis=Homeostasis(**preset.homeostasis) if preset.homeostasis else None,
        augment=Augment(args.augment_shift, args.augment_flip),
    )
    x, y = datasets.load(args.dataset, "train")
    train, val = _split(x, y, 5000, args.seed)
    for record in trainer.fit(*train, val=val):
        print(
            f"epoch {record['epoch']}: train (running) {100 * record['train_accuracy']:.2f}%  "
            f"validation {100 * record['val']['accuracy']:.2f}%  {record['seconds']:.0f} s",
            flush=True,
        )
    xt, yt = datasets.load(args.dataset, "test")
    metrics = evaluate(net, encode(xt.reshape(len(xt), *net.input_shape)), yt)
    print(f"test accuracy {100 * metrics['accuracy']:.2f}%")
    with open(f"{args.out}/metrics.jsonl", "a") as f:
        f.write(json.dumps({"test": metrics, "test_size": len(xt)}) + "\n")


if __name__ == "__main__":
    main()

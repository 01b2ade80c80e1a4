"""The ``stidi-rs`` command line."""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from . import datasets
from .layers import PSP, Conv2d, Dense, MaxPool2d
from .learning import STiDiBP
from .network import BACKENDS, Network, encode
from .progress import ProgressBar

MODELS = ("dense", "csnn")


def build_model(name: str, binary: bool, seed: int, backend: str) -> tuple[Network, float]:
    """A network and the learning rate it was tuned with (docs/algorithm.md)."""
    if name == "dense":
        layers = [Dense(784, 400, 30.0, binary=binary), Dense(400, 10, 60.0, binary=binary)]
        return Network(layers, (784,), psp=PSP(40.0), seed=seed, backend=backend), 12.8
    layers = [
        Conv2d(1, 16, 5, 10.0, binary=binary),
        MaxPool2d(2),
        Conv2d(16, 32, 5, 40.0, binary=binary),
        MaxPool2d(2),
        Dense(32 * 4 * 4, 10, 40.0, binary=binary),
    ]
    return Network(layers, (1, 28, 28), psp=PSP(40.0), seed=seed, backend=backend), 12.8


def _inputs(net: Network, images: np.ndarray) -> np.ndarray:
    return encode(images.reshape(len(images), *net.input_shape), tmax=net.tmax)


def cmd_train(args) -> int:
    x_train, y_train = datasets.load(args.dataset, "train", root=args.data)
    x_test, y_test = datasets.load(args.dataset, "test", root=args.data)
    if args.train_size:
        x_train, y_train = x_train[: args.train_size], y_train[: args.train_size]
    if args.test_size:
        x_test, y_test = x_test[: args.test_size], y_test[: args.test_size]
    net, lr = build_model(args.model, args.binary, args.seed, args.backend)
    rule = STiDiBP(net, lr=args.lr if args.lr is not None else lr)
    train, test = _inputs(net, x_train), _inputs(net, x_test)
    rng = np.random.default_rng(args.seed)
    print(
        f"{args.model} on {args.dataset}: {len(train)} train, {len(test)} test images, "
        f"backend {args.backend}",
        file=sys.stderr,
    )
    for epoch in range(args.epochs):
        order = rng.permutation(len(train))
        correct = seen = 0
        start = time.perf_counter()
        with ProgressBar(len(train), desc=f"epoch {epoch + 1}", unit="img") as bar:
            for lo in range(0, len(train), args.batch_size):
                idx = order[lo : lo + args.batch_size]
                stats = rule.step(train[idx], y_train[idx])
                correct += int(round(stats["accuracy"] * len(idx)))
                seen += len(idx)
                bar.update(len(idx))
                bar.set_postfix(acc=f"{100 * correct / seen:.1f}%")
        rate = seen / (time.perf_counter() - start)
        accuracy = float((net.predict(test) == y_test).mean())
        print(
            f"epoch {epoch + 1}: train (running) {100 * correct / seen:.2f}%  "
            f"test {100 * accuracy:.2f}%  ({rate:.0f} img/s)"
        )
    return 0


def cmd_info(args) -> int:
    from . import __version__, num_threads

    print(f"stidi-rs {__version__}, engine threads: {num_threads()}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="stidi-rs", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train a network and report test accuracy")
    p.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist"])
    p.add_argument("--model", default="dense", choices=MODELS)
    p.add_argument("--binary", action="store_true", help="binary (sign) forward weights")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=1, help="1 = per-sample updates")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the model's)")
    p.add_argument("--train-size", type=int, default=0, help="use the first N training images")
    p.add_argument("--test-size", type=int, default=0, help="use the first N test images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default="rust", choices=BACKENDS)
    p.add_argument("--data", default=None, help="dataset root (default: $STIDI_RS_DATA, cache)")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("info", help="version and engine threads")
    p.set_defaults(func=cmd_info)
    args = parser.parse_args(argv)
    for name in ("epochs", "batch_size"):
        if getattr(args, name, 1) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"stidi-rs: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

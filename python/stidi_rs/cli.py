"""stidi-rs: train and evaluate single-spike convolutional SNNs with STiDi-BP."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from . import checkpoint, datasets, presets
from .augment import Augment
from .learning import RULES, Homeostasis, make_rule
from .network import BACKENDS, encode
from .trainer import Trainer, evaluate


def _learning_rates(text: str) -> float | list[float]:
    """``--lr 12.8`` for every layer, or ``--lr 12.8,3.2`` one per spiking layer."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        msg = f"not a number or a comma-separated list: {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    return values[0] if len(values) == 1 else values


def _rule_setting(text: str) -> dict:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return {key: json.loads(value)}
    except json.JSONDecodeError:
        return {key: value}


def _split(x, y, val_size: int, seed: int):
    """Carve a seeded validation split off the training set (never the test set)."""
    if val_size <= 0:
        return (x, y), None
    if val_size >= len(x):
        raise ValueError(f"--val-size {val_size} leaves no training images (of {len(x)})")
    order = np.random.default_rng([seed, 0x5A1]).permutation(len(x))
    val, train = order[:val_size], order[val_size:]
    return (x[train], y[train]), (x[val], y[val])


def _summary(name: str, m: dict) -> str:
    spikes = ", ".join(f"{s:.0f}" for s in m["spikes_per_layer"])
    t = m["decision_time"]
    return (
        f"{name}: accuracy {100 * m['accuracy']:.2f}%  spikes/layer [{spikes}]  "
        f"synops {m['synops']:,.0f}  decision t {t:.1f}"
        if t is not None
        else f"{name}: accuracy {100 * m['accuracy']:.2f}%  (no output spikes)"
    )


# Flags that define a new run. With --resume the checkpoint holds them, so giving one
# would be silently ignored: refuse instead. None means "not given".
_RUN_FLAGS = {
    "preset": "dense",
    "dataset": "mnist",
    "batch_size": 1,
    "lr": None,
    "rule": None,
    "rule_set": None,
    "displacement": None,
    "gamma": None,
    "lr_decay": None,
    "readout_lr": None,
    "readout_average": None,
    "augment_shift": 0,
    "augment_flip": None,
    "train_size": 0,
    "val_size": 0,
    "seed": 0,
    "no_homeostasis": None,
}

# What a run directory holds, and where --force keeps the replaced run's files
# until the new run's first checkpoint is written.
_RUN_FILES = ("last.npz", "metrics.jsonl")


def _aside(out: Path, name: str) -> Path:
    return out / f".{name}.replaced"


def _holds_run(out: Path) -> bool:
    return any((out / n).exists() or _aside(out, n).exists() for n in _RUN_FILES)


def _check_out_dir(out: Path) -> None:
    """Refuse a run directory that cannot be created or written, before training."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory")
    base = out
    while not base.exists():  # the nearest existing ancestor must take new entries
        base = base.parent
    if not base.is_dir():
        raise ValueError(f"cannot create --out {out}: {base} is not a directory")
    if not os.access(base, os.W_OK | os.X_OK):
        raise ValueError(f"cannot create --out {out}: {base} is not writable")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):  # also catches read-only file systems
            pass
    except OSError as err:
        raise ValueError(f"cannot write in --out {out}: {err.strerror or err}") from None


def _resume_out(args) -> Path:
    """The directory a resumed run writes to: --out, else the checkpoint's own run
    directory if the checkpoint is its last.npz (never a folder it was copied to)."""
    ckpt = Path(args.resume)
    own = ckpt.parent if ckpt.name == "last.npz" else None
    if args.out is None and own is None:
        raise ValueError(
            f"--resume {ckpt} is not a run directory's last.npz: pass --out DIR for the "
            f"continued run (it would otherwise write into {ckpt.parent})"
        )
    out = own if args.out is None else Path(args.out)
    if own is not None and out.resolve() == own.resolve():
        if args.force:
            raise ValueError(
                f"--force would replace {out}, the run --resume continues: drop --force"
            )
    elif _holds_run(out) and not args.force:
        raise ValueError(f"{out} already holds a run: pass another --out, or --force to replace it")
    return out


def _given(value) -> bool:
    # identity, not ==: a given --seed 0 or --val-size 0 counts (0 == False)
    return value is not None and value is not False


def cmd_train(args) -> int:
    given = [n for n in _RUN_FLAGS if _given(getattr(args, n))]
    if args.resume and given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise ValueError(
            f"--resume continues the checkpoint's run with its own settings; {flags} "
            "would be ignored: drop them, or start a new run with --out"
        )
    for name, default in _RUN_FLAGS.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.resume:
        out = _resume_out(args)
        trainer = Trainer.resume(
            args.resume,
            backend=args.backend,
            epochs=args.epochs,
            out_dir=out,
            progress=False if args.no_progress else None,
            readout_epochs=args.readout_epochs,
        )
        cfg = trainer.config
    else:
        preset = presets.get(args.preset)
        net = preset.build(seed=args.seed, backend=args.backend)
        rule_name = args.rule or preset.rule_name
        rule_args = dict(preset.rule) if rule_name == preset.rule_name else {}
        if args.lr is not None:
            rule_args["lr"] = args.lr
        if args.displacement is not None:
            rule_args["displacement"] = args.displacement
        if args.gamma is not None:
            rule_args["gamma"] = args.gamma
        for setting in args.rule_set or []:
            rule_args.update(setting)
        cfg = {
            "preset": args.preset,
            "dataset": args.dataset,
            "train_size": args.train_size,
            "val_size": args.val_size,
        }
        out = Path(args.out) if args.out else Path("runs") / f"{args.preset}-{args.dataset}"
        if _holds_run(out) and not args.force:
            raise ValueError(
                f"{out} already holds a run: pass --resume {out / 'last.npz'}, "
                "another --out, or --force to start over"
            )
        trainer = Trainer(
            net,
            make_rule(rule_name, net, **rule_args),
            epochs=args.epochs or preset.epochs,
            batch_size=args.batch_size,
            lr_decay=preset.lr_decay if args.lr_decay is None else args.lr_decay,
            seed=args.seed,
            out_dir=out,
            progress=False if args.no_progress else None,
            config=cfg,
            readout_epochs=preset.readout_epochs
            if args.readout_epochs is None
            else args.readout_epochs,
            readout_lr=args.readout_lr,
            readout_average=args.readout_average,
            augment=Augment(args.augment_shift, bool(args.augment_flip)),
            homeostasis=None
            if args.no_homeostasis or preset.homeostasis is None
            else Homeostasis(**preset.homeostasis),
        )
    # Everything the run needs is checked before the old run (if any) is touched.
    x, y = datasets.load(cfg["dataset"], "train", root=args.data)
    xt, yt = datasets.load(cfg["dataset"], "test", root=args.data)
    if cfg["train_size"]:
        x, y = x[: cfg["train_size"]], y[: cfg["train_size"]]
    if args.test_size:
        xt, yt = xt[: args.test_size], yt[: args.test_size]
    train, val = _split(x, y, cfg["val_size"], trainer.seed)
    _check_out_dir(out)
    net = trainer.net
    print(
        f"{cfg['preset']} on {cfg['dataset']}: {len(train[0])} train, "
        f"{0 if val is None else len(val[0])} validation images; backend {net.backend}; "
        f"run in {trainer.out_dir}",
        file=sys.stderr,
    )
    _fit_replacing(trainer, out, train, val, replace=args.force)
    for record in trainer.history:
        line = (
            f"epoch {record['epoch']}: train (running) "
            f"{100 * record['train_accuracy']:.2f}%  {record['images_per_s']:.0f} img/s"
        )
        if "val" in record:
            line += f"  validation {100 * record['val']['accuracy']:.2f}%"
        if record.get("readout_only"):
            line += "  (read-out only)"
        print(line)
    metrics = evaluate(net, encode(xt.reshape(len(xt), *net.input_shape), tmax=net.tmax), yt)
    print(_summary(f"test ({len(xt)} images)", metrics))
    with open(trainer.out_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"test": metrics, "test_size": len(xt)}) + "\n")
    return 0


def _fit_replacing(trainer: Trainer, out: Path, train, val, replace: bool) -> None:
    """``trainer.fit``; with ``replace``, the run in ``out`` is set aside first and
    deleted once the new run's first checkpoint exists, or put back if it fails
    before then."""
    moved = []
    if replace:
        for name in _RUN_FILES:
            if (out / name).exists():
                os.replace(out / name, _aside(out, name))
                moved.append(name)

    def drop_replaced(_path) -> None:
        for name in _RUN_FILES:
            _aside(out, name).unlink(missing_ok=True)
        moved.clear()
        trainer.on_checkpoint = None

    if replace:
        trainer.on_checkpoint = drop_replaced
    try:
        trainer.fit(*train, val=val)
    except BaseException:
        for name in moved:
            if not (out / name).exists():
                os.replace(_aside(out, name), out / name)
        raise


def cmd_eval(args) -> int:
    net, config = checkpoint.load(args.checkpoint, backend=args.backend)
    dataset = args.dataset or config.get("trainer", {}).get("config", {}).get("dataset")
    if dataset is None:
        raise ValueError("the checkpoint does not name its dataset: pass --dataset")
    x, y = datasets.load(dataset, "test", root=args.data)
    if args.test_size:
        x, y = x[: args.test_size], y[: args.test_size]
    metrics = evaluate(net, encode(x.reshape(len(x), *net.input_shape), tmax=net.tmax), y)
    print(json.dumps(metrics) if args.json else _summary(f"{dataset} test ({len(x)})", metrics))
    return 0


def cmd_export(args) -> int:
    out = Path(args.out)
    if out.exists() and not args.force:
        raise ValueError(f"{out} exists: pass --force to overwrite it")
    net, config = checkpoint.load(args.checkpoint)
    if not any(layer.binary for layer in net.spiking_layers):
        raise ValueError(f"{args.checkpoint} has no binary layers: there are no signs to keep")
    extra = {k: v for k, v in config.items() if k not in ("format", "network", "signs_only")}
    before = Path(args.checkpoint).stat().st_size  # before: OUT may be the same file
    checkpoint.save(out, net, signs_only=True, **extra)
    after = out.stat().st_size
    print(
        f"wrote {out}: {after:,} bytes (from {before:,}); it evaluates like "
        f"{args.checkpoint} but cannot be resumed"
    )
    return 0


def _run_records(metrics: Path, config: dict) -> list[dict]:
    """Every epoch of a run: the checkpoint's history has also the epochs run before
    a --resume (its metrics.jsonl then starts later), metrics.jsonl the test record."""
    logged = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return [*config.get("trainer", {}).get("history", []), *logged]


def cmd_plot(args) -> int:
    from . import plots

    run = Path(args.run)
    metrics, ckpt = run / "metrics.jsonl", run / "last.npz"
    if not metrics.exists() or not ckpt.exists():
        raise FileNotFoundError(f"{run} is not a run directory (needs metrics.jsonl and last.npz)")
    out = Path(args.out) if args.out else run / "plots"
    out.mkdir(parents=True, exist_ok=True)
    net, config = checkpoint.load(ckpt, backend=args.backend)
    records = _run_records(metrics, config)
    plots.training_curves(records, out / "training_curves.png")
    written = ["training_curves"]
    _, test = plots.read_metrics(records)
    if test is not None:
        plots.confusion_matrix(test["confusion"], path=out / "confusion.png")
        written.append("confusion")
    dataset = config.get("trainer", {}).get("config", {}).get("dataset", "mnist")
    x, y = datasets.load(dataset, "test", root=args.data)
    times = encode(x[: args.samples].reshape(-1, *net.input_shape), tmax=net.tmax)
    plots.spike_time_maps(net, times[:1], out / "spike_time_maps.png")
    plots.output_raster(net, times, y[: args.samples], out / "output_raster.png")
    written += ["spike_time_maps", "output_raster"]
    print(f"wrote {', '.join(name + '.png' for name in written)} to {out}")
    return 0


def cmd_info(args) -> int:
    from . import __version__, num_threads, sweep_kernels

    print(
        f"stidi-rs {__version__}, engine threads: {num_threads()}, sweep kernels: {sweep_kernels()}"
    )
    width = max(map(len, presets.PRESETS))
    for name, p in presets.PRESETS.items():
        print(f"  preset {name:{width}s} {p.description}")
    return 0


def main(argv=None) -> int:
    from . import __version__

    parser = argparse.ArgumentParser(prog="stidi-rs", description=__doc__)
    parser.add_argument("--version", action="version", version=f"stidi-rs {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train a preset, evaluating on the test set at the end")
    p.add_argument("--preset", default=None, choices=sorted(presets.PRESETS), help="default dense")
    p.add_argument(
        "--dataset", default=None, choices=["mnist", "fashion-mnist"], help="default mnist"
    )
    p.add_argument("--epochs", type=int, default=None, help="total epochs (default: preset's)")
    p.add_argument("--batch-size", type=int, default=None, help="1 = per-sample updates (default)")
    p.add_argument(
        "--lr",
        type=_learning_rates,
        default=None,
        help="learning rate, or one per spiking layer as A,B,... (default: preset's)",
    )
    p.add_argument(
        "--rule",
        choices=sorted(RULES),
        default=None,
        help="learning rule (default: preset's, stidi-bp); exact = exact spike-time gradients",
    )
    p.add_argument(
        "--rule-set",
        type=_rule_setting,
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="one setting of the rule by name, e.g. --rule-set loss=stidi --rule-set "
        "silent_push=0.5 (repeatable; VALUE is read as JSON, else as text)",
    )
    p.add_argument(
        "--displacement",
        choices=["exact", "causal"],
        default=None,
        help="PSP slope of the spike time displacement (default: preset's)",
    )
    p.add_argument(
        "--gamma",
        type=float,
        default=None,
        help="output target margin in time units: outputs within it of the first spike "
        "are pushed back to it (default: preset's, 3)",
    )
    p.add_argument(
        "--readout-epochs",
        type=int,
        default=None,
        help="the last N of the epochs train only the output layer (default: preset's)",
    )
    p.add_argument(
        "--readout-lr",
        type=float,
        default=None,
        help="restart the output's lr at this value for the read-out epochs "
        "(default: it keeps decaying)",
    )
    p.add_argument(
        "--readout-average",
        type=int,
        default=None,
        help="average the output's weights over only the last K read-out epochs; "
        "the earlier ones train plainly (default: every read-out epoch is averaged)",
    )
    p.add_argument(
        "--augment-shift",
        type=int,
        default=None,
        metavar="N",
        help="move each training image by a random offset of up to N pixels along "
        "each axis, drawn afresh every epoch (default 0: off)",
    )
    p.add_argument(
        "--augment-flip",
        action="store_true",
        default=None,
        help="mirror half of the training images left-right, drawn afresh every epoch",
    )
    p.add_argument(
        "--lr-decay", type=float, default=None, help="lr multiplier per epoch (default: preset's)"
    )
    p.add_argument("--train-size", type=int, default=None, help="use the first N training images")
    p.add_argument(
        "--val-size",
        type=int,
        default=None,
        help="carve a seeded validation split of N images from the training set",
    )
    p.add_argument("--test-size", type=int, default=0, help="use the first N test images")
    p.add_argument("--seed", type=int, default=None, help="default 0")
    p.add_argument("--backend", default="rust", choices=BACKENDS)
    p.add_argument("--out", default=None, help="run directory (default runs/PRESET-DATASET)")
    p.add_argument(
        "--resume",
        default=None,
        metavar="CHECKPOINT",
        help="continue the run saved in CHECKPOINT (its last.npz)",
    )
    p.add_argument("--data", default=None, help="dataset root (default: $STIDI_RS_DATA, cache)")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace the run in --out (kept until the new run's first checkpoint)",
    )
    p.add_argument(
        "--no-homeostasis",
        action="store_true",
        help="turn off the preset's guard against silent hidden layers",
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("eval", help="evaluate a checkpoint on a test set")
    p.add_argument("checkpoint")
    p.add_argument("--dataset", default=None, choices=["mnist", "fashion-mnist"])
    p.add_argument("--test-size", type=int, default=0)
    p.add_argument("--backend", default="rust", choices=BACKENDS)
    p.add_argument("--data", default=None)
    p.add_argument("--json", action="store_true", help="print all metrics as JSON")
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser(
        "export",
        help="write a checkpoint for inference only: binary layers keep just their signs",
    )
    p.add_argument("checkpoint")
    p.add_argument("out")
    p.add_argument("--force", action="store_true", help="overwrite OUT")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("plot", help="plot a run: curves, confusion, spike maps, raster")
    p.add_argument("run", help="run directory (holds metrics.jsonl and last.npz)")
    p.add_argument("--out", default=None, help="output folder (default RUN/plots)")
    p.add_argument("--samples", type=int, default=8, help="test images in the raster")
    p.add_argument("--backend", default="rust", choices=BACKENDS)
    p.add_argument("--data", default=None)
    p.set_defaults(func=cmd_plot)
    p = sub.add_parser(
        "bench",
        help="benchmark the engines side by side (see docs/benchmarks.md)",
        add_help=False,
    )
    p.set_defaults(func=None)
    p = sub.add_parser("info", help="version, engine threads and presets")
    p.set_defaults(func=cmd_info)
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # its own options: stidi-rs bench --help
        from . import bench

        return bench.main(argv[1:])
    args = parser.parse_args(argv)
    for name in (
        "epochs",
        "batch_size",
        "train_size",
        "val_size",
        "test_size",
        "readout_epochs",
        "readout_average",
        "augment_shift",
        "seed",
    ):
        value = getattr(args, name, None)
        if value is not None and value < (1 if name in ("epochs", "batch_size") else 0):
            parser.error(
                f"--{name.replace('_', '-')} must be at least "
                f"{1 if name in ('epochs', 'batch_size') else 0}"
            )
    if getattr(args, "data", None) is not None and not Path(args.data).expanduser().is_dir():
        # else the loader would quietly search $STIDI_RS_DATA and the cache instead
        parser.error(f"--data {args.data} is not a directory")
    try:
        return args.func(args)
    except (ValueError, OSError, ImportError) as err:
        print(f"stidi-rs: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

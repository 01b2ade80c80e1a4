"""stidi-rs: train and evaluate single-spike convolutional SNNs with STiDi-BP."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from . import checkpoint, config, datasets, presets, shipped
from .augment import Augment
from .learning import RULES, Homeostasis, make_rule
from .network import BACKENDS
from .trainer import Trainer, evaluate


def _learning_rates(text: str) -> float | list[float]:
    """``--lr 12.8`` for every layer, or ``--lr 12.8,3.2`` one per spiking layer."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        msg = f"not a number or a comma-separated list: {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    return values[0] if len(values) == 1 else values


def _sizes(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of sizes: {text!r}") from None


def _numbers(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        msg = f"not a comma-separated list of numbers: {text!r}"
        raise argparse.ArgumentTypeError(msg) from None


def _ranges(text: str) -> list[list[float]]:
    try:
        ranges = [[float(v) for v in part.split(",")] for part in text.split("/")]
    except ValueError:
        ranges = []
    if not ranges or any(len(r) != 2 for r in ranges):
        raise argparse.ArgumentTypeError(
            f"not LOW,HIGH ranges joined by '/' (one per spiking layer): {text!r}"
        )
    return ranges


def _or_word(kind, word: str):
    def parse(text: str):
        if text == word:
            return word
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a number or {word!r}, got {text!r}"
            ) from None

    return parse


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
# would be silently ignored: refuse instead.
# --epochs and --readout-epochs extend a resumed run; the test set and backend may change.
_RESUMABLE = ("epochs", "readout_epochs", "test_size", "backend")
_RUN_FLAGS = tuple(k for k in config.SETTINGS if k not in _RESUMABLE)


def _flag_settings(args) -> dict:
    """The train settings given as flags (None: not given)."""
    flags = {k: getattr(args, k, None) for k in config.SETTINGS}
    if flags["rule_set"] is not None:
        merged = {}
        for setting in flags["rule_set"]:
            merged.update(setting)
        flags["rule_set"] = merged
    return flags


# What a run directory holds, and where --force keeps the replaced run's files
# until the new run's first checkpoint is written.
_RUN_FILES = ("last.npz", "metrics.jsonl", "config.toml")


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
    flags = _flag_settings(args)
    if args.resume:
        given = [n for n in _RUN_FLAGS if _given(flags[n])]
        if args.config:
            given.insert(0, "config")
        if given:
            names = ", ".join("--" + name.replace("_", "-") for name in given)
            raise ValueError(
                f"--resume continues the checkpoint's run with its own settings; {names} "
                "would be ignored: drop them, or start a new run with --out"
            )
        out = _resume_out(args)
        trainer = Trainer.resume(
            args.resume,
            backend=flags["backend"] or "rust",
            epochs=args.epochs,
            out_dir=out,
            progress=False if args.no_progress else None,
            readout_epochs=args.readout_epochs,
        )
        cfg = trainer.config
        test_size = flags["test_size"] or 0
        resolved = None
    else:
        resolved = config.resolve(config.load(args.config) if args.config else None, flags)
        out = (
            Path(args.out)
            if args.out
            else Path("runs") / f"{resolved['preset']}-{resolved['dataset']}"
        )
        if _holds_run(out) and not args.force:
            raise ValueError(
                f"{out} already holds a run: pass --resume {out / 'last.npz'}, "
                "another --out, or --force to start over"
            )
        trainer = _new_trainer(resolved, out, progress=False if args.no_progress else None)
        cfg = trainer.config
        test_size = resolved.get("test_size", 0)
    # Everything the run needs is checked before the old run (if any) is touched.
    x, y = datasets.load(cfg["dataset"], "train", root=args.data)
    xt, yt = datasets.load(cfg["dataset"], "test", root=args.data)
    if cfg["train_size"]:
        x, y = x[: cfg["train_size"]], y[: cfg["train_size"]]
    if test_size:
        xt, yt = xt[:test_size], yt[:test_size]
    train, val = _split(x, y, cfg["val_size"], trainer.seed)
    _check_out_dir(out)
    net = trainer.net
    print(
        f"{cfg['preset']} on {cfg['dataset']}: {len(train[0])} train, "
        f"{0 if val is None else len(val[0])} validation images; backend {net.backend}; "
        f"run in {trainer.out_dir}",
        file=sys.stderr,
    )
    _fit_replacing(trainer, out, train, val, replace=args.force, settings=resolved)
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
    metrics = evaluate(net, net.encode(xt), yt)
    print(_summary(f"test ({len(xt)} images)", metrics))
    with open(trainer.out_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"test": metrics, "test_size": len(xt)}) + "\n")
    return 0


def cmd_sweep(args) -> int:
    from . import sweep

    base = config.resolve(config.load(args.config) if args.config else None, _flag_settings(args))
    return sweep.run(args, base)


def _unset(s: dict, key: str):
    value = s.get(key)
    return None if value == config.UNSET[key] else value


_NETWORK_SETTINGS = (
    "widths",
    "thresholds",
    "tau_rise",
    "tau_fall",
    "input_window",
    "neuron",
    "init",
    "scale",
)


def _new_trainer(s: dict, out: Path, progress=None) -> Trainer:
    """A trainer for a new run of resolved settings ``s`` (see :mod:`stidi_rs.config`)."""
    preset = presets.get(s["preset"])
    net = preset.build(
        seed=s["seed"],
        backend=s["backend"],
        dataset=s["dataset"],
        **{k: s[k] for k in _NETWORK_SETTINGS if k in s},
    )
    rule_args = dict(s.get("rule_set", {}))
    rule_args.update({k: s[k] for k in ("lr", "displacement", "gamma") if k in s})
    homeostasis = preset.homeostasis if not s.get("no_homeostasis") else None
    return Trainer(
        net,
        make_rule(s["rule"], net, **rule_args),
        epochs=s.get("epochs", 1),
        batch_size=s.get("batch_size", 1),
        lr_decay=s.get("lr_decay", 1.0),
        seed=s["seed"],
        out_dir=out,
        progress=progress,
        config={
            "preset": s["preset"],
            "dataset": s["dataset"],
            "train_size": s.get("train_size", 0),
            "val_size": s.get("val_size", 0),
            "settings": s,
        },
        readout_epochs=s.get("readout_epochs", 0),
        readout_lr=_unset(s, "readout_lr"),
        readout_average=_unset(s, "readout_average"),
        augment=Augment(s.get("augment_shift", 0), s.get("augment_flip", False)),
        homeostasis=None if homeostasis is None else Homeostasis(**homeostasis),
        calibrate=s.get("calibrate"),
    )


def _fit_replacing(
    trainer: Trainer, out: Path, train, val, replace: bool, settings: dict | None
) -> None:
    """``trainer.fit``, a new run's resolved ``settings`` written first as
    ``config.toml``; with ``replace``, the run in ``out`` is set aside first and
    deleted once the new run's first checkpoint exists, or put back if it fails
    before then."""
    moved = []
    if replace:
        for name in _RUN_FILES:
            if (out / name).exists():
                os.replace(out / name, _aside(out, name))
                moved.append(name)
    if settings is not None:
        config.dump(settings, out / "config.toml")

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
        if moved:  # the new run's files go, the old run's come back
            for name in _RUN_FILES:
                if name in moved:
                    os.replace(_aside(out, name), out / name)
                else:
                    (out / name).unlink(missing_ok=True)
        raise


def cmd_eval(args) -> int:
    if (args.checkpoint is None) == (args.pretrained is None):
        raise ValueError("give a checkpoint file or --pretrained PRESET (not both)")
    if args.pretrained is not None:
        path = shipped.pretrained_path(args.pretrained, args.dataset or "mnist")
    else:
        path = args.checkpoint
    net, config = checkpoint.load(path, backend=args.backend)
    dataset = args.dataset or config.get("trainer", {}).get("config", {}).get("dataset")
    if dataset is None:
        raise ValueError("the checkpoint does not name its dataset: pass --dataset")
    x, y = datasets.load(dataset, "test", root=args.data)
    if args.test_size:
        x, y = x[: args.test_size], y[: args.test_size]
    metrics = evaluate(net, net.encode(x), y)
    print(json.dumps(metrics) if args.json else _summary(f"{dataset} test ({len(x)})", metrics))
    return 0


def cmd_export(args) -> int:
    out = Path(args.out)
    if out.exists() and not args.force:
        raise ValueError(f"{out} exists: pass --force to overwrite it")
    net, config = checkpoint.load(args.checkpoint)
    binary = any(layer.binary for layer in net.spiking_layers)
    real = any(not layer.binary for layer in net.spiking_layers)
    if not binary and not args.float32:
        raise ValueError(
            f"{args.checkpoint} has no binary layers: there are no signs to keep "
            "(--float32 halves the size of real weights)"
        )
    if args.float32 and not real:
        raise ValueError(f"{args.checkpoint} has no real-valued layers for --float32")
    extra = {k: v for k, v in config.items() if k not in ("format", "network")}
    before = Path(args.checkpoint).stat().st_size  # before: OUT may be the same file
    checkpoint.save(out, net, signs_only=binary, float32=args.float32, **extra)
    after = out.stat().st_size
    print(
        f"wrote {out}: {after:,} bytes (from {before:,}); it is for inference only "
        "and cannot be resumed"
        + (": check its accuracy with stidi-rs eval (float32 rounding)" if args.float32 else "")
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
    times = net.encode(x[: args.samples])
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
    print(
        "presets (stidi-rs train --preset NAME --dataset D): what each is for; its test "
        "accuracy and training time (one thread, on a shared 2-core machine) per dataset"
    )
    width = max(map(len, presets.PRESETS))
    for name, p in presets.PRESETS.items():
        runs = ", ".join(
            f"{dataset} {acc:.2f} % ({_minutes(minutes)})"
            for dataset, (acc, minutes) in p.headline.items()
        )
        print(f"  preset {name:{width}s} {p.description}: {runs}")
    nets = shipped.available()
    print(f"pretrained networks (stidi-rs eval --pretrained PRESET --dataset D): {len(nets)}")
    for name, dataset, acc in nets:
        print(f"  {name} {dataset}: test {acc:.2f} %")
    return 0


def _minutes(m: float) -> str:
    return f"{m:.0f} min" if m < 90 else f"{m / 60:.1f} h"


def _add_setting_flags(p, sweep: bool = False) -> None:
    """The flags of the train settings (config.SETTINGS), for train and sweep (which
    never reads the test set, so has no --test-size)."""
    p.add_argument(
        "--preset",
        default=None,
        choices=sorted(presets.PRESETS),
        help="a complete recipe, per dataset (default dense; stidi-rs info lists them)",
    )
    p.add_argument(
        "--dataset", default=None, choices=["mnist", "fashion-mnist"], help="default mnist"
    )
    p.add_argument(
        "--widths",
        type=_sizes,
        default=None,
        metavar="N[,N...]",
        help="sizes of the hidden spiking layers: conv channels or dense neurons, in order",
    )
    p.add_argument(
        "--thresholds",
        type=_numbers,
        default=None,
        metavar="TH[,TH...]",
        help="firing thresholds, one per spiking layer (default: preset's)",
    )
    p.add_argument("--tau-rise", type=float, default=None, help="PSP rise time (default: preset's)")
    p.add_argument(
        "--tau-fall", type=float, default=None, help="PSP fall time (default: preset's, inf)"
    )
    p.add_argument(
        "--input-window",
        type=float,
        default=None,
        metavar="F",
        help="input spikes span the first F of the time window, in (0, 1]; the rest is "
        "left to the layers above (default: preset's, 1)",
    )
    p.add_argument(
        "--neuron",
        choices=("psp", "ramp"),
        default=None,
        help="psp: every layer shares one time window; ramp: every spiking layer has its "
        "own window and fires on a ramp after the window below closes (default: preset's, "
        "psp)",
    )
    p.add_argument(
        "--calibrate",
        type=_numbers,
        default=None,
        metavar="F[,F...]",
        help="before training, set each spiking layer's threshold so that this fraction "
        "of its neurons fires on 256 training images (one per spiking layer; 0 keeps "
        "its threshold)",
    )
    p.add_argument(
        "--init",
        type=_ranges,
        default=None,
        metavar="LOW,HIGH[/LOW,HIGH...]",
        help="uniform initial weight range of each spiking layer (default: preset's; "
        "0,1 for real layers, -0.5,1 for binary ones; write --init=-1,1/... when it "
        "starts with a minus)",
    )
    p.add_argument(
        "--scale",
        type=_numbers,
        default=None,
        metavar="S[,S...]",
        help="magnitude of each spiking layer's binary forward weights, ±S (ramp neurons; "
        "real layers take 1; default: preset's, else 1)",
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
        type=_or_word(float, "decay"),
        default=None,
        help="restart the output's lr at this value for the read-out epochs; "
        "'decay': it keeps decaying (the default)",
    )
    p.add_argument(
        "--readout-average",
        type=_or_word(int, "all"),
        default=None,
        help="average the output's weights over only the last K read-out epochs, the "
        "earlier ones train plainly; 'all' (the default): every read-out epoch is averaged",
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
    if not sweep:
        p.add_argument("--test-size", type=int, default=None, help="use the first N test images")
    p.add_argument("--seed", type=int, default=None, help="default 0")
    p.add_argument("--backend", default=None, choices=BACKENDS, help="default rust")
    p.add_argument(
        "--no-homeostasis",
        action="store_true",
        default=None,
        help="turn off the preset's guard against silent hidden layers",
    )


def main(argv=None) -> int:
    from . import __version__

    parser = argparse.ArgumentParser(prog="stidi-rs", description=__doc__)
    parser.add_argument("--version", action="version", version=f"stidi-rs {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train a preset, evaluating on the test set at the end")
    p.add_argument(
        "--config",
        default=None,
        metavar="TOML",
        help="read train settings from a TOML file (the flags' names; flags given "
        "override it); every run writes its own as RUN/config.toml",
    )
    _add_setting_flags(p)
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
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser(
        "sweep",
        help="search train settings for the best validation accuracy (Optuna; "
        "resumable, parallel, shared across machines); never reads the test set",
        description="Search train settings of a preset (the other settings flags fix "
        "them for every trial) for the best validation accuracy. Needs Optuna: "
        'pip install "stidi-rs[sweep]". See docs/sweeps.md.',
    )
    p.add_argument(
        "--config",
        default=None,
        metavar="TOML",
        help="the trials' fixed settings from a TOML file (flags given override it)",
    )
    _add_setting_flags(p, sweep=True)
    p.add_argument(
        "--space",
        default=None,
        metavar="TOML",
        help="the search space, one table per parameter: low/high[/log] or choices "
        "(default: the preset's, printed by --show-space)",
    )
    p.add_argument(
        "--trials",
        type=int,
        default=20,
        help="the study's total number of trials; running again runs only those missing "
        "(default 20)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="trials at once on this machine, in processes sharing the cores (default 1)",
    )
    p.add_argument(
        "--storage",
        default=None,
        metavar="URL",
        help="Optuna storage: sqlite:///PATH, postgresql://..., mysql://..., or "
        "journal:PATH (default sqlite in OUT/study.db); share it to sweep on several "
        "machines",
    )
    p.add_argument("--study", default=None, help="study name (default PRESET-DATASET)")
    p.add_argument(
        "--out",
        default=None,
        help="where best.toml, trials.csv (and study.db) go (default sweeps/PRESET-DATASET)",
    )
    p.add_argument(
        "--pruner",
        choices=["median", "hyperband", "none"],
        default="median",
        help="stops trials whose validation accuracy falls behind (default median)",
    )
    p.add_argument(
        "--prune-after",
        type=int,
        default=5,
        metavar="N",
        help="the median pruner waits for N finished trials (default 5)",
    )
    p.add_argument(
        "--show-space",
        action="store_true",
        help="print the search space as a --space file and exit",
    )
    p.add_argument(
        "--plot", action="store_true", help="also plot the history and parameter importances"
    )
    p.add_argument("--data", default=None, help="dataset root (default: $STIDI_RS_DATA, cache)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_sweep)
    p = sub.add_parser("eval", help="evaluate a checkpoint or a shipped network on a test set")
    p.add_argument("checkpoint", nargs="?", default=None)
    p.add_argument(
        "--pretrained",
        default=None,
        choices=sorted(presets.PRESETS),
        metavar="PRESET",
        help="the network shipped for PRESET and --dataset (default mnist) instead of a file",
    )
    p.add_argument("--dataset", default=None, choices=["mnist", "fashion-mnist"])
    p.add_argument("--test-size", type=int, default=0)
    p.add_argument("--backend", default="rust", choices=BACKENDS)
    p.add_argument("--data", default=None)
    p.add_argument("--json", action="store_true", help="print all metrics as JSON")
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser(
        "export",
        help="write a checkpoint for inference only: binary layers keep just their signs, "
        "real ones optionally float32",
    )
    p.add_argument("checkpoint")
    p.add_argument("out")
    p.add_argument("--force", action="store_true", help="overwrite OUT")
    p.add_argument(
        "--float32",
        action="store_true",
        help="store real weights as float32 (half the size; spike times move by the rounding)",
    )
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
        if isinstance(value, int) and value < (1 if name in ("epochs", "batch_size") else 0):
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

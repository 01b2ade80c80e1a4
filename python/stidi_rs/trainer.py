"""Training loop, evaluation metrics, metrics log and resumable checkpoints."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path

import numpy as np

from . import checkpoint, reference
from .augment import Augment
from .layers import MaxPool2d
from .learning import DivergenceError, Homeostasis, Rule, make_rule
from .network import Network, _check_labels, _check_times
from .progress import progress_bar

__all__ = ["Trainer", "evaluate", "synaptic_fanout"]


def synaptic_fanout(net: Network) -> list[np.ndarray]:
    """For every layer, how many synapses each of its *input* neurons drives."""
    out = []
    shape = net.input_shape
    for layer, out_shape in zip(net.layers, net.output_shapes):
        if layer.kind == "dense":
            n_in = layer.in_features  # with a skip, the skipped-from layer's neurons too
            out.append(np.full(n_in, layer.out_features, dtype=np.int64))
        elif layer.kind == "conv2d":
            k = layer.kernel_size
            ho, wo = out_shape[1:]
            rows = np.convolve(np.ones(ho, np.int64), np.ones(k, np.int64))  # outputs per row
            cols = np.convolve(np.ones(wo, np.int64), np.ones(k, np.int64))
            per_pixel = np.outer(rows, cols) * layer.out_channels
            out.append(np.broadcast_to(per_pixel, shape).reshape(-1))
        else:
            out.append(np.zeros(math.prod(shape), dtype=np.int64))  # pooling is not synaptic
        shape = out_shape
    return out


def evaluate(net: Network, times: np.ndarray, labels: np.ndarray, batch_size: int = 512) -> dict:
    """Accuracy and the spike statistics SNN papers report, over a labelled set.

    ``spikes_per_layer``: mean number of neurons that fire per image, per layer;
    ``synops``: mean synaptic operations per inference (input spikes x fan-out);
    ``decision_time``: mean first output spike time over images with an output spike;
    ``silent_fraction``: per layer, the fraction of neurons that never fire on the set;
    ``cases``: how decisions were made (unique first spike, tie, no output spike);
    ``confusion``: rows are true classes, columns predictions.
    """
    n_classes = net.n_classes
    times = _check_times(times, net.input_shape, net.tmax)
    labels = _check_labels(labels, len(times), n_classes)
    fanout = synaptic_fanout(net)
    spikes = np.zeros(len(net.layers))
    ever = [np.zeros(math.prod(s), dtype=bool) for s in net.output_shapes]
    synops = 0.0
    decision = []
    cases = np.zeros(3, dtype=np.int64)
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    for lo in range(0, len(times), batch_size):
        x = times[lo : lo + batch_size]
        outs, v_end = net._forward(x)
        ins = [reference.layer_input(net.layers, i, x, outs) for i in range(len(outs))]
        for i, (t_in, t_out) in enumerate(zip(ins, outs)):
            fired = t_out.reshape(len(x), -1) < net.tmax
            spikes[i] += fired.sum()
            ever[i] |= fired.any(axis=0)
            synops += float(((t_in.reshape(len(x), -1) < net.tmax) @ fanout[i]).sum())
        pred, case = reference.decide(outs[-1], v_end, net.tmax)
        first = outs[-1].min(axis=1)
        decision.extend(first[first < net.tmax].tolist())
        cases += np.bincount(case, minlength=3)
        np.add.at(confusion, (labels[lo : lo + batch_size], pred), 1)
    n = max(len(times), 1)
    return {
        "accuracy": float(np.trace(confusion) / n),
        "spikes_per_layer": (spikes / n).tolist(),
        "synops": synops / n,
        "decision_time": float(np.mean(decision)) if decision else None,
        "silent_fraction": [float(1 - e.mean()) for e in ever],
        "cases": {"first": int(cases[0]), "tie": int(cases[1]), "none": int(cases[2])},
        "confusion": confusion.tolist(),
    }


class Trainer:
    """Epochs of STiDi-BP over uint8 images, with evaluation, logs and checkpoints.

    Shuffling is seeded per epoch (``seed``, ``epoch``), and a checkpoint is written
    after every epoch, so a run resumed from one gives the same weights as an
    uninterrupted run. The learning rate of epoch ``e`` is ``lr * lr_decay**e``.
    Training runs in chunks of about 1,024 images (whole batches); after each, the
    optional ``homeostasis`` guard nudges silent or overactive hidden units.

    The last ``readout_epochs`` of the ``epochs`` train only the output layer: the
    layers below keep their weights (learning rate 0) and homeostasis pauses, so the
    read-out settles on fixed features instead of chasing moving ones. At the end of
    each such epoch the output weights become their mean over the epoch (taken after
    every chunk), which removes the jitter per-sample steps leave behind
    (docs/results.md, "Read-out epochs"). By default the output's rate keeps
    decaying through them; ``readout_lr`` restarts it there instead: read-out epoch
    ``r`` (from 0) trains the output at ``readout_lr * lr_decay**r``, so a run can
    fit its output to the finished features at a rate the long decay has left far
    behind (docs/results.md). ``readout_average`` = ``k`` averages only
    the last ``k`` read-out epochs; those before them train plainly, so an average
    is not weighed down by weights from a high restarted rate (default: all).

    ``calibrate`` holds one firing fraction per spiking layer: before the first
    epoch, each layer with a fraction above 0 gets the threshold at which that
    fraction of its neurons fires on the first 256 training images
    (:meth:`Network.calibrate_thresholds`, bottom up) [ours]; 0 keeps the layer's
    threshold. The first epoch's record lists the thresholds it set.

    ``augment`` (an :class:`~stidi_rs.augment.Augment`) shifts and mirrors each
    training image by a fresh random draw every epoch, seeded by (``seed``,
    ``epoch``); validation images are never changed.
    """

    def __init__(
        self,
        network: Network,
        rule: Rule,
        *,
        epochs: int = 1,
        batch_size: int = 1,
        lr_decay: float = 1.0,
        seed: int = 0,
        out_dir=None,
        progress: bool | None = None,
        config: dict | None = None,
        homeostasis: Homeostasis | None = None,
        readout_epochs: int = 0,
        readout_lr: float | None = None,
        readout_average: int | None = None,
        augment: Augment | None = None,
        calibrate=None,
    ):
        if epochs < 1 or batch_size < 1:
            raise ValueError("epochs and batch_size must be at least 1")
        if not 0 <= readout_epochs <= epochs:
            raise ValueError(
                f"readout_epochs must be in [0, epochs={epochs}], got {readout_epochs}"
            )
        if not 0 < lr_decay <= 1:
            raise ValueError(f"lr_decay must be in (0, 1], got {lr_decay}")
        if readout_lr is not None:
            if not (math.isfinite(readout_lr) and readout_lr > 0):
                raise ValueError(f"readout_lr must be positive and finite, got {readout_lr}")
            if readout_epochs == 0:
                raise ValueError("readout_lr sets the rate of read-out epochs: give readout_epochs")
            readout_lr = float(readout_lr)
        if readout_average is not None:
            if readout_epochs == 0:
                raise ValueError(
                    "readout_average sets how many read-out epochs are averaged: "
                    "give readout_epochs"
                )
            if not 0 <= readout_average <= readout_epochs:
                raise ValueError(
                    f"readout_average must be in [0, readout_epochs={readout_epochs}], "
                    f"got {readout_average}"
                )
            readout_average = int(readout_average)
        if calibrate is not None:
            calibrate = [float(f) for f in calibrate]
            n = len(network.spiking_layers)
            if len(calibrate) != n:
                raise ValueError(
                    f"calibrate needs one firing fraction per spiking layer ({n}), "
                    f"got {len(calibrate)}"
                )
            if not all(0 <= f < 1 for f in calibrate) or not any(calibrate):
                raise ValueError(
                    f"calibrate fractions must lie in [0, 1) (0: keep the threshold), "
                    f"at least one above 0; got {calibrate}"
                )
        self.calibrate = calibrate
        self.net, self.rule = network, rule
        self.epochs, self.batch_size, self.lr_decay, self.seed = epochs, batch_size, lr_decay, seed
        self.base_lr = list(rule.lr)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.progress = progress
        self.config = config or {}
        self.homeostasis = homeostasis
        self.readout_epochs = readout_epochs
        self.readout_lr = readout_lr
        self.readout_average = readout_average
        self.augment = augment if augment is not None and augment.active else None
        self.epoch = 0
        self.history: list[dict] = []
        # Called with the path of every checkpoint fit() writes (the CLI uses the
        # first one to drop the run a --force replaced).
        self.on_checkpoint = None
        # Called with each epoch's record (its validation metrics under "val") once
        # the epoch is in the history and checkpointed; an exception it raises
        # stops fit() there (a sweep uses it to prune a trial).
        self.on_epoch = None

    def fit(self, images, labels, val=None) -> list[dict]:
        """Train from the current epoch to ``epochs``; ``val`` is ``(images, labels)``."""
        images, labels = np.asarray(images), np.asarray(labels, dtype=np.int64)
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        val_times = None if val is None else self.net.encode(np.asarray(val[0]))
        self._reconcile_log()
        calibrated = self._calibrate(images) if self.epoch == 0 else None
        while self.epoch < self.epochs:
            e = self.epoch
            readout_only = e >= self.epochs - self.readout_epochs
            averaged = readout_only and (
                self.readout_average is None or e >= self.epochs - self.readout_average
            )
            self.rule.lr = [lr * self.lr_decay**e for lr in self.base_lr]
            if readout_only:
                out_lr = self.rule.lr[-1]
                if self.readout_lr is not None:
                    out_lr = self.readout_lr * self.lr_decay ** (
                        e - (self.epochs - self.readout_epochs)
                    )
                self.rule.lr = [0.0] * (len(self.rule.lr) - 1) + [out_lr]
            order = np.random.default_rng([self.seed, e]).permutation(len(images))
            draws = (
                None
                if self.augment is None
                # its own stream: the shuffle stays the one an unaugmented run sees
                else self.augment.draw(len(images), np.random.default_rng([self.seed, e, 1]))
            )
            correct = seen = nudged = 0
            readout, weight_sum = self.net.spiking_layers[-1], 0.0
            loss = 0.0
            start = time.perf_counter()
            with progress_bar(
                len(images),
                f"epoch {e + 1}/{self.epochs}" + (" (read-out)" if readout_only else ""),
                "img",
                show=self.progress,
            ) as bar:
                # Chunks of whole batches: one engine call each, and a progress tick.
                chunk = self.batch_size * max(1, 1024 // self.batch_size)
                for lo in range(0, len(images), chunk):
                    idx = order[lo : lo + chunk]
                    batch = images[idx]
                    if draws is not None:
                        batch = self.augment.apply(batch, draws[lo : lo + chunk])
                    times = self.net.encode(batch)
                    try:
                        stats = self.rule.steps(times, labels[idx], self.batch_size)
                    except DivergenceError as err:
                        last = None if self.out_dir is None else self.out_dir / "last.npz"
                        kept = (
                            f"{last} keeps epoch {self.epoch}"
                            if last is not None and last.is_file()
                            else "no checkpoint was written"
                        )
                        raise DivergenceError(
                            f"training diverged in epoch {e + 1}: {err}; stopped, {kept}"
                        ) from None
                    if self.homeostasis is not None and not readout_only:
                        nudged += self.homeostasis(self.net, times)
                    correct += int((stats["predictions"] == labels[idx]).sum())
                    sizes = np.diff(np.r_[0 : len(idx) : self.batch_size, len(idx)])
                    loss += float((stats["loss"] * sizes).sum())
                    seen += len(idx)
                    if averaged:
                        weight_sum = weight_sum + readout.weight
                    # no redraw of its own: update() draws it, throttled
                    bar.set_postfix(acc=f"{100 * correct / seen:.1f}%", refresh=False)
                    bar.update(len(idx))
            if averaged:
                chunks = -(-len(images) // chunk)
                readout.weight = weight_sum / chunks
            seconds = time.perf_counter() - start
            record = {
                "epoch": e + 1,
                "lr": self.rule.lr,
                "train_accuracy": correct / seen,
                "train_loss": loss / seen,
                "seconds": seconds,
                "images_per_s": seen / seconds,
                "homeostasis_nudges": nudged,
                "readout_only": readout_only,
                "readout_averaged": averaged,
            }
            if calibrated is not None:
                record["calibrated_thresholds"], calibrated = calibrated, None
            if val_times is not None:
                record["val"] = evaluate(self.net, val_times, np.asarray(val[1], dtype=np.int64))
            self.epoch += 1
            self.history.append(record)
            if self.out_dir is not None:
                # The checkpoint first: a crash between the two leaves a log one
                # epoch short, which the next fit() fills in from the checkpoint.
                path = self.save(self.out_dir / "last.npz")
                self._log(record)
                if self.on_checkpoint is not None:
                    self.on_checkpoint(path)
            if self.on_epoch is not None:
                self.on_epoch(record)
        return self.history

    def _calibrate(self, images) -> list[float] | None:
        """Set the thresholds ``calibrate`` asks for; returns every spiking layer's."""
        if self.calibrate is None:
            return None
        spiking = [i for i, layer in enumerate(self.net.layers) if not isinstance(layer, MaxPool2d)]
        chosen = [(i, f) for i, f in zip(spiking, self.calibrate) if f > 0]
        self.net.calibrate_thresholds(
            self.net.encode(images[:256]), [f for _, f in chosen], [i for i, _ in chosen]
        )
        return [float(layer.threshold) for layer in self.net.spiking_layers]

    def _log(self, record: dict) -> None:
        if self.out_dir is None:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def _reconcile_log(self) -> None:
        """Make ``metrics.jsonl`` agree with the state being continued after a crash
        between a checkpoint and its log line: drop epoch lines the checkpoint does
        not hold (and a torn last line), add the epochs it holds that the log lacks."""
        path = None if self.out_dir is None else self.out_dir / "metrics.jsonl"
        if self.epoch == 0 or path is None or not path.is_file():
            return
        lines = path.read_text().splitlines()
        kept, last = [], 0
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("epoch"), int):
                if record["epoch"] > self.epoch:
                    continue
                last = max(last, record["epoch"])
            kept.append(line)
        kept += [json.dumps(r) for r in self.history if r["epoch"] > last]
        if kept != lines:
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, path)

    def state(self) -> dict:
        rule = self.rule
        return {
            "epoch": self.epoch,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr_decay": self.lr_decay,
            "readout_epochs": self.readout_epochs,
            "readout_lr": self.readout_lr,
            "readout_average": self.readout_average,
            "augment": None if self.augment is None else dataclasses.asdict(self.augment),
            "calibrate": self.calibrate,
            "seed": self.seed,
            "history": self.history,
            "rule": {"name": rule.name, **rule.config(), "lr": self.base_lr},
            "config": self.config,
            "homeostasis": None if self.homeostasis is None else self.homeostasis.config(),
        }

    def save(self, path) -> Path:
        return checkpoint.save(path, self.net, trainer=self.state())

    @classmethod
    def resume(
        cls,
        path,
        backend: str = "rust",
        epochs: int | None = None,
        out_dir=None,
        progress: bool | None = None,
        readout_epochs: int | None = None,
    ) -> Trainer:
        """Continue a run from a checkpoint written by :meth:`save`.

        ``epochs`` and ``readout_epochs`` may extend or change the schedule of the
        epochs still to run; the epochs already run stay as they were.
        """
        net, config = checkpoint.load(path, backend=backend)
        if config.get("signs_only"):
            raise checkpoint.CheckpointError(
                f"{path} holds only the signs of its binary weights (stidi-rs export): "
                "it evaluates like the run it came from but cannot be resumed; "
                "resume from that run's last.npz"
            )
        if config.get("float32"):
            raise checkpoint.CheckpointError(
                f"{path} holds weights rounded to float32 (stidi-rs export --float32): "
                "it is for inference and cannot be resumed; resume from that run's last.npz"
            )
        state = config.get("trainer")
        if state is None:
            raise checkpoint.CheckpointError(f"{path} holds weights but no trainer state")
        _check_state(state, path)
        trainer = cls(
            net,
            _rule_from_state(net, state["rule"]),
            epochs=epochs or state["epochs"],
            batch_size=state["batch_size"],
            lr_decay=state["lr_decay"],
            seed=state["seed"],
            out_dir=out_dir if out_dir is not None else Path(path).parent,
            progress=progress,
            config=state.get("config"),
            homeostasis=None
            if state.get("homeostasis") is None
            else Homeostasis(**state["homeostasis"]),
            readout_epochs=state.get("readout_epochs", 0)
            if readout_epochs is None
            else readout_epochs,
            readout_lr=state.get("readout_lr"),
            readout_average=state.get("readout_average"),
            augment=None if state.get("augment") is None else Augment(**state["augment"]),
            calibrate=state.get("calibrate"),
        )
        trainer.epoch, trainer.history = state["epoch"], state["history"]
        return trainer


def _rule_from_state(net: Network, settings: dict) -> Rule:
    """The rule a checkpoint's trainer state names; states without a name are
    STiDi-BP's (they predate the exact rule)."""
    settings = dict(settings)
    return make_rule(settings.pop("name", "stidi-bp"), net, **settings)


def _check_state(state: dict, path) -> None:
    """The types of a checkpoint's trainer state, so that a damaged one is a
    CheckpointError rather than a KeyError or TypeError (the values are checked by
    the constructors)."""

    def is_int(v, low):
        return isinstance(v, int) and not isinstance(v, bool) and v >= low

    checks = {
        "epoch": is_int(state.get("epoch"), 0),
        "epochs": is_int(state.get("epochs"), 1),
        "batch_size": is_int(state.get("batch_size"), 1),
        "seed": is_int(state.get("seed"), 0),
        "lr_decay": isinstance(state.get("lr_decay"), (int, float)),
        "rule": isinstance(state.get("rule"), dict),
        "calibrate": state.get("calibrate") is None
        or (
            isinstance(state["calibrate"], list)
            and all(isinstance(f, (int, float)) for f in state["calibrate"])
        ),
        "history": isinstance(state.get("history"), list)
        and all(isinstance(r, dict) and is_int(r.get("epoch"), 1) for r in state["history"]),
    }
    checks.update(
        {k: isinstance(state.get(k), dict | None) for k in ("homeostasis", "augment", "config")}
    )
    bad = [k for k, ok in checks.items() if not ok]
    if bad:
        raise checkpoint.CheckpointError(
            f"checkpoint {path} has a damaged trainer state: bad {', '.join(bad)}"
        )

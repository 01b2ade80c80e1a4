"""``stidi-rs sweep``: hyperparameter search over train settings, on Optuna.

A study lives in an Optuna storage (SQLite by default, ``DIR/study.db``; any RDB URL
or ``journal:PATH`` lets processes on several machines share it). Each trial trains
the preset with sampled settings and is scored by its final validation accuracy,
carved from the training set; the test set is never read. A TPE sampler proposes
settings and a pruner stops trials whose per-epoch validation accuracy falls
behind. ``--trials N`` is the study's total: running the command again runs only the
trials still missing, and re-runs trials that were interrupted (Ctrl-C, a killed
process). docs/sweeps.md has the details.

Parameters are train settings by name (``tau_rise``, ``lr_decay``, ...), one
layer's value of a per-layer setting (``lr.0``, ``thresholds.1``, ``widths.0``) or a
rule setting (``rule_set.NAME``). A space file holds one table per parameter::

    ["lr.0"]
    low = 3.2
    high = 51.2
    log = true

    [readout_epochs]
    choices = [0, 1, 2]
"""

from __future__ import annotations

import copy
import csv
import inspect
import json
import os
import socket
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tomli_w

from . import config, datasets, presets
from .learning import RULES, DivergenceError

__all__ = ["Param", "default_space", "load_space", "apply", "run", "EXTRA"]

EXTRA = 'pip install "stidi-rs[sweep]"'
# Settings a sweep keeps fixed: what is trained on, and how it is judged.
FIXED = ("preset", "dataset", "rule_set", "train_size", "val_size", "test_size", "seed", "backend")
# Per-layer settings whose values can be searched one layer at a time (NAME.I).
PER_LAYER = ("lr", "thresholds", "widths")
# A running trial updates its "alive" time this often; a trial on another machine
# that has not done so for STALE_AFTER seconds counts as interrupted.
HEARTBEAT = 60.0
STALE_AFTER = 600.0
# Default search spaces: the knobs searched per preset, each in a range around the
# preset's own value for the dataset (see default_space).
KNOBS = {
    "dense": ("lr", "thresholds", "lr_decay"),
    "dense-binary": ("lr", "thresholds", "lr_decay"),
    "csnn": ("lr", "thresholds", "tau_rise", "lr_decay", "readout_lr"),
    "csnn-binary": ("lr", "thresholds", "lr_decay", "readout_lr"),
    "csnn-exact": ("lr", "lr_decay"),
    "csnn-deep": ("lr", "lr_decay"),
    "csnn-deep-exact": ("lr", "lr_decay"),
    "csnn-deep-binary": ("lr", "lr_decay"),
}


def _optuna():
    try:
        import optuna
    except ImportError:
        raise ImportError(f"stidi-rs sweep needs Optuna, which is not installed: {EXTRA}") from None
    return optuna


# ----------------------------------------------------------------------------------
# Search spaces
# ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Param:
    """One searched parameter: a range (``low``..``high``, ``log`` spaced) or a list
    of ``choices``; ``integer`` ranges sample whole numbers."""

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple | None = None
    integer: bool = False

    def suggest(self, trial):
        if self.choices is not None:
            # Optuna stores choices that are numbers, strings or booleans; lists
            # (e.g. widths) go through their JSON text
            plain = [c if not isinstance(c, list) else json.dumps(c) for c in self.choices]
            value = trial.suggest_categorical(self.name, plain)
            return json.loads(value) if isinstance(value, str) and value[:1] == "[" else value
        if self.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log)

    def as_toml(self) -> dict:
        if self.choices is not None:
            return {"choices": list(self.choices)}
        return {"low": self.low, "high": self.high, "log": self.log}


def _layout(settings: dict) -> dict:
    """Per-layer values of a run's settings: its lr, thresholds and hidden widths
    (the preset's where the settings do not give them)."""
    preset = presets.get(settings["preset"])
    specs = presets._vary(
        preset.layers_for(settings["dataset"]), settings.get("widths"), settings.get("thresholds")
    )
    spiking = [s for s in specs if s[0] != "maxpool2d"]
    n = len(spiking)
    lr = settings.get("lr")
    if lr is None:
        lr = inspect.signature(RULES[settings["rule"]]).parameters["lr"].default
    return {
        "lr": [float(v) for v in lr] if isinstance(lr, list) else [float(lr)] * n,
        "thresholds": [float(s[-1]) for s in spiking],
        "widths": [int(s[2]) for s in spiking[:-1]],
    }


def _rule_settings(rule: str) -> list[str]:
    # lr, gamma and displacement are train settings of their own
    skip = {"network", "lr", "gamma", "displacement"}
    return [k for k in inspect.signature(RULES[rule]).parameters if k not in skip]


def _kind(name: str, base: dict):
    """How parameter ``name`` is applied: (checker, integer or None), or None if the
    name is not a searchable setting of this run."""
    if name.startswith("rule_set."):
        key = name[len("rule_set.") :]
        return (lambda v: True, None) if key in _rule_settings(base["rule"]) else None
    key, dot, index = name.partition(".")
    if dot:
        if key not in PER_LAYER or not index.isdigit():
            return None
        if int(index) >= len(_layout(base)[key]):
            return None
        return (config._int(1), True) if key == "widths" else (config._number, False)
    if key not in config.SETTINGS or key in FIXED:
        return None
    ok = config.SETTINGS[key]
    return ok, ok(1) and not ok(1.5)


def _what(ok) -> str:
    return getattr(ok, "what", "a valid value")


def _space_error(where: str, name: str, what: str) -> ValueError:
    return ValueError(f"{where}: parameter {name!r} {what}")


def parse_space(tables: dict, base: dict, where: str) -> list[Param]:
    """Search-space tables (name -> {low, high, log} or {choices}) as Params, checked
    against the run's base settings; an unknown name is an error naming it."""
    unknown = [name for name in tables if _kind(name, base) is None]
    if unknown:
        layout = _layout(base)
        per_layer = ", ".join(
            f"{k}.0" + (f"..{k}.{len(v) - 1}" if len(v) > 1 else "") for k, v in layout.items() if v
        )
        raise ValueError(
            f"{where}: unknown parameter{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(map(repr, unknown))}; a parameter is a train setting "
            f"({', '.join(k for k in config.SETTINGS if k not in FIXED)}), one layer of a "
            f"per-layer setting ({per_layer}) or a rule setting "
            f"(rule_set.{{{','.join(_rule_settings(base['rule']))}}})"
        )
    params = []
    for name, table in tables.items():
        ok, integer = _kind(name, base)
        if not isinstance(table, dict):
            raise _space_error(where, name, "needs a table: low/high[/log] or choices")
        extra = sorted(set(table) - {"low", "high", "log", "choices"})
        if extra:
            raise _space_error(where, name, f"has unknown key(s) {', '.join(extra)}")
        if "choices" in table:
            choices = table["choices"]
            if set(table) != {"choices"}:
                raise _space_error(where, name, "takes either choices or low/high, not both")
            if not isinstance(choices, list) or not choices:
                raise _space_error(where, name, "choices must be a non-empty list")
            for c in choices:
                if not ok(c):
                    raise _space_error(where, name, f"choice {c!r} is not {_what(ok)}")
            params.append(Param(name, choices=tuple(choices)))
            continue
        if "low" not in table or "high" not in table:
            raise _space_error(where, name, "needs low and high (or choices)")
        low, high, log = table["low"], table["high"], table.get("log", False)
        if not (config._number(low) and config._number(high)) or not isinstance(log, bool):
            raise _space_error(where, name, "needs numbers low and high, and log true/false")
        if integer is None:  # a rule setting: whole numbers if both bounds are
            integer = isinstance(low, int) and isinstance(high, int)
        if integer and not (isinstance(low, int) and isinstance(high, int)):
            raise _space_error(where, name, f"takes whole numbers: low = {low}, high = {high}")
        if not low < high:
            raise _space_error(where, name, f"needs low < high, got {low} and {high}")
        if log and low <= 0:
            raise _space_error(where, name, f"is log-spaced: needs low > 0, got {low}")
        for v in (low, high):
            if not ok(v):
                raise _space_error(where, name, f"bound {v!r} is not {_what(ok)}")
        params.append(Param(name, low, high, log, integer=bool(integer)))
    if not params:
        raise ValueError(f"{where}: the search space is empty")
    return params


def load_space(path, base: dict) -> list[Param]:
    return parse_space(config.read_toml(path, "space file"), base, str(path))


def default_space(base: dict) -> list[Param]:
    """The preset's knobs (KNOBS), each in a range around its value in ``base``:
    rates and read-out rates x1/4..x4 and thresholds and tau_rise x1/2..x2 (log
    spaced), lr_decay 0.5..1."""
    layout = _layout(base)
    tables = {}
    for knob in KNOBS[base["preset"]]:
        if knob in ("lr", "thresholds"):
            f = 4.0 if knob == "lr" else 2.0
            for i, v in enumerate(layout[knob]):
                tables[f"{knob}.{i}"] = {"low": _round(v / f), "high": _round(v * f), "log": True}
        elif knob == "tau_rise":
            v = float(base.get("tau_rise", presets.get(base["preset"]).tau_rise))
            tables[knob] = {"low": _round(v / 2), "high": _round(v * 2), "log": True}
        elif knob == "readout_lr":
            v = base.get("readout_lr")
            if config._number(v) and base.get("readout_epochs"):
                tables[knob] = {"low": _round(v / 4), "high": _round(v * 4), "log": True}
        elif knob == "lr_decay" and base.get("epochs", 1) > 1:
            tables[knob] = {"low": 0.5, "high": 1.0, "log": False}
    return parse_space(tables, base, f"default space of {base['preset']}")


def _round(v: float) -> float:
    return float(f"{v:.4g}")


def space_toml(params: list[Param]) -> str:
    return tomli_w.dumps({p.name: p.as_toml() for p in params})


def apply(base: dict, params: dict) -> dict:
    """``base`` settings with sampled ``params``: whole settings first, then single
    layers of per-layer ones, then rule settings."""
    s = copy.deepcopy(base)
    layout = _layout(base)
    for name in sorted(params, key=lambda n: (n.startswith("rule_set."), "." in n)):
        value = params[name]
        if name.startswith("rule_set."):
            s.setdefault("rule_set", {})[name[len("rule_set.") :]] = value
        elif "." in name:
            key, index = name.split(".")
            current = s.get(key)
            if isinstance(current, list):
                values = list(current)
            elif key == "lr" and current is not None:  # one rate for every layer
                values = [current] * len(layout["lr"])
            else:
                values = list(layout[key])
            values[int(index)] = value
            s[key] = values
        else:
            s[name] = value
    return s


# ----------------------------------------------------------------------------------
# Storage and the study's trials
# ----------------------------------------------------------------------------------
def storage(spec: str):
    """An Optuna storage: an RDB URL (sqlite:///PATH, postgresql://..., mysql://...)
    or ``journal:PATH`` (a journal file, for file systems shared between machines)."""
    optuna = _optuna()
    if spec.startswith("journal:"):
        path = spec[len("journal:") :]
        journal = getattr(optuna.storages, "journal", None)
        if journal is not None and hasattr(journal, "JournalFileBackend"):
            backend = journal.JournalFileBackend(path)
        else:  # optuna < 4
            backend = optuna.storages.JournalFileStorage(path)
        return optuna.storages.JournalStorage(backend)
    if "://" not in spec:
        raise ValueError(
            f"--storage {spec!r} is neither a database URL (sqlite:///PATH, "
            "postgresql://..., mysql://...) nor journal:PATH"
        )
    kwargs = {}
    if spec.startswith("sqlite"):  # wait for another process's write instead of failing
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 120}}
    for attempt in range(3):
        try:
            return optuna.storages.RDBStorage(spec, **kwargs)
        except Exception as err:  # noqa: BLE001
            # two processes creating a new database at once: one of them finds the
            # tables half made; they are whole a moment later
            if attempt == 2 or type(err).__name__ != "OperationalError":
                raise
            time.sleep(1.0 + attempt)


def _state(t) -> str:
    return t.state.name.lower()


def counted(trials) -> list:
    """The trials that fill the study's total: all but queued ones (a queued re-run
    takes its slot when it starts), surplus ones (started past the total by a racing
    process) and interrupted ones that are re-run."""
    surplus = {t.number for t in trials if t.user_attrs.get("surplus")}
    retried = {
        t.user_attrs["retry_of"]
        for t in trials
        if "retry_of" in t.user_attrs and t.number not in surplus
    }
    return [
        t
        for t in trials
        if t.number not in surplus
        and _state(t) != "waiting"
        and not (_state(t) == "fail" and t.number in retried)
    ]


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child not yet reaped is a zombie: dead
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _stale(t, now: float) -> bool:
    """A RUNNING trial whose process is gone: on this machine, its process has
    exited; elsewhere, it has not been alive for STALE_AFTER seconds."""
    host, _, pid = str(t.user_attrs.get("worker", "")).rpartition(":")
    if host == socket.gethostname() and pid.isdigit():
        return not _pid_alive(int(pid))
    alive = t.user_attrs.get("alive")
    if alive is None and t.datetime_start is not None:
        alive = t.datetime_start.timestamp()
    return alive is not None and now - float(alive) > STALE_AFTER


def recover(study, store) -> list[int]:
    """Mark stale RUNNING trials failed and queue a re-run of each (same params);
    returns their numbers."""
    optuna = _optuna()
    failed = []
    now = time.time()
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if not _stale(t, now):
            continue
        try:
            store.set_trial_user_attr(t._trial_id, "interrupted", True)
            store.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
        except RuntimeError:  # UpdateFinishedTrialError
            continue  # another process got there first
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
        failed.append(t.number)
    return failed


# ----------------------------------------------------------------------------------
# Trials
# ----------------------------------------------------------------------------------
class _Surplus(Exception):
    """This trial started after the study reached its total (a race between processes)."""


def _load_data(job: dict):
    from .cli import _split

    base = job["base"]
    x, y = datasets.load(base["dataset"], "train", root=job["data"])  # never "test"
    if base.get("train_size"):
        x, y = x[: base["train_size"]], y[: base["train_size"]]
    return _split(x, y, base["val_size"], base["seed"])


def _objective(trial, job: dict, data, store):
    from . import num_threads
    from .cli import _new_trainer

    optuna = _optuna()
    before = [t for t in counted(trial.study.get_trials(deepcopy=False)) if t.number < trial.number]
    if len(before) >= job["trials"]:
        trial.set_user_attr("surplus", True)
        raise _Surplus
    trial.set_user_attr("worker", _worker_id())
    trial.set_user_attr("alive", time.time())
    trial.set_user_attr("threads", num_threads())
    # The sampler is seeded by the sweep's seed and the trial's number (unique in the
    # study): a sweep repeats with its seed, a resumed one does not redraw its first
    # trials, and processes sharing the study do not draw alike.
    trial.study.sampler = _sampler(job["base"]["seed"], trial.number)
    space = [Param(**p) for p in job["space"]]
    params = {p.name: p.suggest(trial) for p in space}
    settings = config.check(apply(job["base"], params), f"trial {trial.number}")
    trial.set_user_attr("settings", settings)
    trainer = _new_trainer(settings, None, progress=False)

    def on_epoch(record):
        trial.report(record["val"]["accuracy"], record["epoch"])
        # the last epoch's accuracy is the trial's value: nothing left to save by pruning
        if record["epoch"] < trainer.epochs and trial.should_prune():
            raise optuna.TrialPruned(f"validation {record['val']['accuracy']:.4f}")

    trainer.on_epoch = on_epoch
    stop = threading.Event()

    def heartbeat():
        while not stop.wait(HEARTBEAT):
            try:
                store.set_trial_user_attr(trial._trial_id, "alive", time.time())
            except Exception:  # noqa: BLE001 - a missed beat only delays recovery
                pass

    beat = threading.Thread(target=heartbeat, daemon=True)
    beat.start()
    train, val = data
    try:
        trainer.fit(*train, val=val)
    except KeyboardInterrupt:
        # Optuna marks the trial failed; a copy of it waits for the next run
        trial.set_user_attr("interrupted", True)
        trial.study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        raise
    except DivergenceError as err:
        trial.set_user_attr("error", str(err))
        raise
    finally:
        stop.set()
    return trainer.history[-1]["val"]["accuracy"]


def _sampler(seed: int, number: int):
    optuna = _optuna()
    state = np.random.SeedSequence([seed, number]).generate_state(1)[0]
    return optuna.samplers.TPESampler(seed=int(state), constant_liar=True)


def _pruner(job: dict):
    optuna = _optuna()
    if job["pruner"] == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=job["prune_after"], n_warmup_steps=0)
    if job["pruner"] == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=job["base"]["epochs"])
    return optuna.pruners.NopPruner()


def _quiet(optuna) -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def work(job: dict, data=None, on_trial=None) -> None:
    """Run trials of the study until it holds ``job["trials"]`` of them."""
    optuna = _optuna()
    _quiet(optuna)
    if job.get("threads"):
        from . import set_num_threads

        set_num_threads(job["threads"])
    store = storage(job["storage"])
    study = optuna.load_study(
        study_name=job["study"],
        storage=store,
        sampler=_sampler(job["base"]["seed"], 0),  # replaced in each trial
        pruner=_pruner(job),
    )
    data = _load_data(job) if data is None else data
    while True:
        recover(study, store)
        if len(counted(study.get_trials(deepcopy=False))) >= job["trials"]:
            return
        study.optimize(
            lambda t: _objective(t, job, data, store),
            n_trials=1,
            catch=(DivergenceError, _Surplus),
            gc_after_trial=False,
        )
        if on_trial is not None:
            on_trial(study)


def _work_process(job: dict) -> None:
    """A --jobs worker process: errors end it with a message, not a traceback."""
    try:
        work(job)
    except KeyboardInterrupt:
        sys.exit(130)
    except (ValueError, OSError, ImportError) as err:
        print(f"stidi-rs: error: {err}", file=sys.stderr)
        sys.exit(2)


# ----------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------
def _seconds(t) -> float | None:
    if t.datetime_start is None or t.datetime_complete is None:
        return None
    return (t.datetime_complete - t.datetime_start).total_seconds()


def write_csv(trials, path: Path) -> Path:
    names = sorted({k for t in trials for k in t.params})
    epochs = max((max(t.intermediate_values, default=0) for t in trials), default=0)
    fields = ["trial", "state", "validation", "seconds", *names]
    fields += [f"val_epoch_{e}" for e in range(1, epochs + 1)] + ["retry_of", "error"]
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fields)
        w.writeheader()
        for t in trials:
            row = {
                "trial": t.number,
                "state": _state(t),
                "validation": t.value if t.values else "",
                "seconds": "" if _seconds(t) is None else f"{_seconds(t):.1f}",
                "retry_of": t.user_attrs.get("retry_of", ""),
                "error": t.user_attrs.get("error", ""),
            }
            row.update(t.params)
            row.update({f"val_epoch_{e}": v for e, v in t.intermediate_values.items()})
            w.writerow(row)
    os.replace(tmp, path)
    return path


def write_best(t, study_name: str, path: Path) -> Path:
    curve = ", ".join(f"{100 * v:.2f}" for _, v in sorted(t.intermediate_values.items()))
    head = (
        f"# The best trial of sweep study {study_name!r}: trial {t.number}, validation "
        f"{100 * t.value:.2f} % (per epoch: {curve}).\n"
        f"# stidi-rs train --config {path} repeats it (--epochs, --val-size vary it).\n"
    )
    tmp = path.with_name(f".{path.name}.tmp")
    config.dump(t.user_attrs["settings"], tmp)
    tmp.write_text(head + tmp.read_text())
    os.replace(tmp, path)
    return path


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def summary(trials, names: list[str], top: int = 10) -> str:
    states = [_state(t) for t in trials]
    lines = [
        f"{len(trials)} trials: {states.count('complete')} complete, "
        f"{states.count('pruned')} pruned, {states.count('fail')} failed"
        + (f", {states.count('running')} running" if "running" in states else "")
    ]
    done = [t for t in trials if _state(t) == "complete"]
    done.sort(key=lambda t: -t.value)
    if not done:
        return lines[0]
    head = ["rank", "trial", "validation", "epochs", "seconds", *names]
    rows = [
        [
            str(i + 1),
            str(t.number),
            f"{100 * t.value:.2f} %",
            str(len(t.intermediate_values)),
            f"{_seconds(t) or 0.0:.1f}",
            *[_fmt(t.params.get(n, "")) for n in names],
        ]
        for i, t in enumerate(done[:top])
    ]
    widths = [max(len(r[c]) for r in [head, *rows]) for c in range(len(head))]
    lines.append(f"the best {len(rows)} of {len(done)} complete trials (by validation):")
    for r in [head, *rows]:
        lines.append("  ".join(cell.rjust(w) for cell, w in zip(r, widths)))
    return "\n".join(lines)


def plot(study, out: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError('sweep --plot needs matplotlib: pip install "stidi-rs[plot]"') from None
    from optuna.visualization import matplotlib as vis

    written = []
    complete = [t for t in study.get_trials(deepcopy=False) if _state(t) == "complete"]
    for name, draw, enough in (
        ("history", vis.plot_optimization_history, 1),
        ("importances", vis.plot_param_importances, 2),
    ):
        if len(complete) < enough:
            continue
        try:
            ax = draw(study)
        except ImportError as err:  # importances need scikit-learn with Optuna < 4
            print(f"stidi-rs: no {name}.png: {err}", file=sys.stderr)
            continue
        fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=100)
        plt.close(fig)
        written.append(out / f"{name}.png")
    return written


class _Monitor:
    """Progress of a sweep: a bar (trials done / total, best so far) on a terminal,
    else a line per finished trial."""

    def __init__(self, total: int, desc: str, progress, study):
        from .progress import progress_bar

        self.total = total
        done = [t for t in counted(study.get_trials(deepcopy=False)) if t.state.is_finished()]
        self.bar = progress_bar(total, desc, "trial", show=progress, initial=min(len(done), total))
        self.seen: set[int] = set()
        self.quiet = progress is False

    def update(self, study) -> None:
        trials = counted(study.get_trials(deepcopy=False))
        finished = [t for t in trials if _state(t) in ("complete", "pruned", "fail")]
        complete = [t for t in finished if _state(t) == "complete"]
        best = max(complete, key=lambda t: t.value, default=None)
        for t in sorted(finished, key=lambda t: t.number):
            if t.number in self.seen:
                continue
            self.seen.add(t.number)
            if self.bar.disable and not self.quiet:
                curve = t.intermediate_values
                if _state(t) == "complete":
                    value = f"validation {100 * t.value:.2f} %"
                elif curve:
                    last = max(curve)
                    value = f"stopped after epoch {last}: validation {100 * curve[last]:.2f} %"
                else:
                    value = t.user_attrs.get("error", "")
                params = ", ".join(f"{k}={_fmt(v)}" for k, v in t.params.items())
                print(f"trial {t.number} {_state(t)}: {value}  ({params})", file=sys.stderr)
        self.bar.n = min(len(finished), self.total)
        if best is not None:
            best_text = f"{100 * best.value:.2f}% (trial {best.number})"
            self.bar.set_postfix(best=best_text, refresh=False)  # drawn by refresh() below
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


# ----------------------------------------------------------------------------------
# The command
# ----------------------------------------------------------------------------------
def _cores() -> int:
    env = os.environ.get("RAYON_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def run(args, base: dict) -> int:
    """``stidi-rs sweep``: ``base`` are the resolved train settings the trials vary."""
    if not base.get("val_size"):
        base = {**base, "val_size": 5000}
        print("stidi-rs: no --val-size: trials hold out 5000 training images", file=sys.stderr)
    base.pop("test_size", None)
    space = load_space(args.space, base) if args.space else default_space(base)
    if args.show_space:
        print(space_toml(space), end="")
        return 0
    optuna = _optuna()
    _quiet(optuna)
    if args.trials < 1 or args.jobs < 1:
        raise ValueError("--trials and --jobs must be at least 1")
    out = Path(args.out) if args.out else Path("sweeps") / f"{base['preset']}-{base['dataset']}"
    out.mkdir(parents=True, exist_ok=True)
    spec = args.storage or f"sqlite:///{(out / 'study.db').resolve()}"
    name = args.study or f"{base['preset']}-{base['dataset']}"
    store = storage(spec)
    study = optuna.create_study(
        study_name=name, storage=store, direction="maximize", load_if_exists=True
    )
    what = json.loads(
        json.dumps({"base": base, "space": [p.as_toml() | {"name": p.name} for p in space]})
    )
    given = study.user_attrs.get("sweep")
    if given is None:
        study.set_user_attr("sweep", what)
    elif given != what:
        diff = sorted(
            k
            for k in set(given["base"]) | set(what["base"])
            if given["base"].get(k) != what["base"].get(k)
        )
        raise ValueError(
            f"study {name!r} in {spec} was run with other "
            + (f"settings ({', '.join(diff)})" if diff else "search space")
            + ": its trials would not compare; pass another --study (or --out)"
        )
    jobs = args.jobs
    threads = max(1, _cores() // jobs) if jobs > 1 else 0
    if jobs > 1 and jobs > _cores():
        print(
            f"stidi-rs: {jobs} jobs on {_cores()} cores: each trial gets 1 thread",
            file=sys.stderr,
        )
    job = {
        "storage": spec,
        "study": name,
        "base": base,
        "space": [p.__dict__ for p in space],
        "trials": args.trials,
        "data": args.data,
        "pruner": args.pruner,
        "prune_after": args.prune_after,
        "threads": threads,
        "jobs": jobs,
    }
    monitor = _Monitor(args.trials, f"sweep {name}", False if args.no_progress else None, study)
    print(
        f"sweep {name}: {base['preset']} on {base['dataset']}, {len(space)} parameters, "
        f"{args.trials} trials in {spec}, {jobs} job{'s' * (jobs > 1)}",
        file=sys.stderr,
    )
    code = 0
    try:
        monitor.update(study)
        if jobs == 1:
            work(job, on_trial=monitor.update)
        else:
            code = _run_jobs(job, study, monitor)
    except KeyboardInterrupt:
        code = 130
    finally:
        monitor.update(study)
        monitor.close()
    trials = counted(study.get_trials(deepcopy=False))
    write_csv(trials, out / "trials.csv")
    names = [p.name for p in space]
    print(summary(trials, names))
    complete = [t for t in trials if _state(t) == "complete"]
    if complete:
        best = max(complete, key=lambda t: t.value)
        path = write_best(best, name, out / "best.toml")
        print(f"best: trial {best.number}, validation {100 * best.value:.2f} %; config {path}")
    if args.plot:
        for path in plot(study, out):
            print(f"wrote {path}")
    if code == 130:
        print(
            "stidi-rs: interrupted: the same command resumes the sweep (interrupted "
            "trials are re-run)",
            file=sys.stderr,
        )
    return code


def _run_jobs(job: dict, study, monitor) -> int:
    import multiprocessing

    # spawn, not fork: a forked child would inherit the engine's thread pool and
    # database connections in an unusable state
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_work_process, args=(job,)) for _ in range(job["jobs"])]
    for p in procs:
        p.start()
    try:
        while any(p.is_alive() for p in procs):
            for p in procs:
                p.join(timeout=1.0 / len(procs))
            monitor.update(study)
    except KeyboardInterrupt:
        for p in procs:  # they got the Ctrl-C too; let them mark their trials
            p.join(timeout=30)
        raise
    bad = [p.exitcode for p in procs if p.exitcode]
    return bad[0] if bad else 0

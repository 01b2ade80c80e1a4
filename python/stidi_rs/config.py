"""Run configurations: the settings of one ``stidi-rs train`` run, as TOML.

A config holds train settings under the names of the ``train`` flags (``lr``,
``readout_epochs``, ...; rule settings by name in a ``[rule_set]`` table). A run's
settings are resolved in three layers, each overriding the one before: the preset's
recipe for the dataset, a config file (``--config``), the flags given. Every run
directory gets the resolved settings as ``config.toml``, so ``stidi-rs train
--config RUN/config.toml --out OTHER`` repeats the run.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import tomli_w

from . import presets
from .learning import RULES
from .network import BACKENDS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["SETTINGS", "RULE_KEYS", "UNSET", "load", "dump", "resolve", "check"]


def _int(low: int):
    def ok(v):
        return isinstance(v, int) and not isinstance(v, bool) and v >= low

    ok.what = f"an integer >= {low}"
    return ok


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_number.what = "a number"


def _rates(v) -> bool:
    return _number(v) or (isinstance(v, list) and len(v) > 0 and all(map(_number, v)))


_rates.what = "a number or a list of numbers (one per spiking layer)"


def _sizes(v) -> bool:
    return isinstance(v, list) and len(v) > 0 and all(map(_int(1), v))


_sizes.what = "a list of sizes >= 1 (one per hidden spiking layer)"


def _numbers(v) -> bool:
    return isinstance(v, list) and len(v) > 0 and all(map(_number, v))


_numbers.what = "a list of numbers (one per spiking layer)"


def _positive(v) -> bool:
    return _number(v) and math.isfinite(v) and v > 0


_positive.what = "a finite number > 0"


def _scales(v) -> bool:
    return isinstance(v, list) and len(v) > 0 and all(map(_positive, v))


_scales.what = "a list of finite numbers > 0 (one per spiking layer)"


def _positive_or_inf(v) -> bool:
    return _number(v) and v > 0


_positive_or_inf.what = "a number > 0 (inf allowed)"


def _or(ok, word: str):
    def either(v):
        return v == word or ok(v)

    either.what = f"{ok.what}, or {word!r}"
    return either


def _choice(*options):
    def ok(v):
        return v in options

    ok.what = "one of " + ", ".join(repr(o) for o in options)
    return ok


def _bool(v) -> bool:
    return isinstance(v, bool)


_bool.what = "true or false"


def _table(v) -> bool:
    return isinstance(v, dict)


_table.what = "a table of rule settings by name"


def _window(v) -> bool:
    return _number(v) and 0 < v <= 1


_window.what = "a number in (0, 1]"


def _ranges(v) -> bool:
    return (
        isinstance(v, list)
        and len(v) > 0
        and all(
            isinstance(r, list) and len(r) == 2 and all(map(_number, r)) and r[0] < r[1] for r in v
        )
    )


_ranges.what = "a list of [low, high] weight ranges with low < high, one per spiking layer"


def _fractions(v) -> bool:
    return (
        isinstance(v, list)
        and len(v) > 0
        and all(_number(f) and 0 <= f < 1 for f in v)
        and any(f > 0 for f in v)
    )


_fractions.what = "a list of firing fractions in [0, 1), one per spiking layer (0: keep)"

# Every setting a config may hold, and what its value must be.
SETTINGS = {
    "preset": _choice(*presets.PRESETS),
    "dataset": _choice(*presets.DATASETS),
    "widths": _sizes,
    "thresholds": _numbers,
    "tau_rise": _positive,
    "tau_fall": _positive_or_inf,
    "input_window": _window,
    "neuron": _choice("psp", "ramp"),
    "calibrate": _fractions,
    "init": _ranges,
    "scale": _scales,
    "epochs": _int(1),
    "batch_size": _int(1),
    "lr": _rates,
    "rule": _choice(*RULES),
    "rule_set": _table,
    "displacement": _choice("exact", "causal"),
    "gamma": _number,
    "readout_epochs": _int(0),
    "readout_lr": _or(_positive, "decay"),
    "readout_average": _or(_int(0), "all"),
    "augment_shift": _int(0),
    "augment_flip": _bool,
    "lr_decay": _number,
    "train_size": _int(0),
    "val_size": _int(0),
    "test_size": _int(0),
    "seed": _int(0),
    "backend": _choice(*BACKENDS),
    "no_homeostasis": _bool,
}
# Settings of the learning rule: a preset's apply only when the run uses its rule.
RULE_KEYS = ("lr", "displacement", "gamma", "rule_set")
# Words that name a trainer default explicitly, so a config can undo a recipe's value.
UNSET = {"readout_lr": "decay", "readout_average": "all"}
_DEFAULTS = {"preset": "dense", "dataset": "mnist", "seed": 0, "backend": "rust"}


def check(settings: dict, where: str) -> dict:
    """``settings`` with every key known and every value of its type, else a
    ValueError naming the key (``where`` says where the settings came from)."""
    for key, value in settings.items():
        if key not in SETTINGS:
            raise ValueError(
                f"{where}: unknown setting {key!r} (known: {', '.join(sorted(SETTINGS))})"
            )
        ok = SETTINGS[key]
        if value is not None and not ok(value):
            raise ValueError(f"{where}: {key} = {value!r} must be {ok.what}")
    return settings


def read_toml(path, what: str = "config file") -> dict:
    """The tables of a TOML file; a missing or malformed file is an error naming it."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path} does not exist") from None
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path} is not valid TOML: {err}") from None


def load(path) -> dict:
    """The settings of a TOML config file, checked."""
    return check(read_toml(path), str(path))


def dump(settings: dict, path) -> Path:
    """Write resolved settings as TOML (``None`` means "not set" and is left out)."""
    path = Path(path)
    plain = {k: v for k, v in settings.items() if v is not None and k != "rule_set"}
    if settings.get("rule_set"):
        plain["rule_set"] = dict(settings["rule_set"])  # a table goes last in TOML
    path.write_text(tomli_w.dumps(plain))
    return path


def resolve(file: dict | None = None, flags: dict | None = None) -> dict:
    """The run's settings: the preset's recipe for the dataset, then ``file``, then
    ``flags`` (settings given on the command line; ``None`` values are not given).
    ``rule_set`` tables merge key by key. Unset settings are left out."""
    file = {k: v for k, v in (file or {}).items() if v is not None}
    flags = check({k: v for k, v in (flags or {}).items() if v is not None}, "command line")
    given = {**file, **flags}
    preset = presets.get(given.get("preset", _DEFAULTS["preset"]))
    dataset = given.get("dataset", _DEFAULTS["dataset"])
    recipe = {k: v for k, v in preset.settings(dataset).items() if v is not None}
    if given.get("rule", preset.rule) != preset.rule:
        recipe = {k: v for k, v in recipe.items() if k not in RULE_KEYS}
    out = {**_DEFAULTS, "rule": preset.rule, **recipe, **file, **flags}
    out["preset"], out["dataset"] = preset.name, dataset
    if not out.get("readout_epochs"):  # the recipe's read-out settings need read-out epochs
        for key in ("readout_lr", "readout_average"):
            if key not in file and key not in flags:
                out.pop(key, None)
    rule_set = {}
    for layer in (recipe, file, flags):
        rule_set.update(layer.get("rule_set") or {})
    if rule_set:
        out["rule_set"] = rule_set
    else:
        out.pop("rule_set", None)
    return check(out, "resolved settings")

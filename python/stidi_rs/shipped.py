"""The trained networks shipped inside the package: one per preset and dataset.

Each is the seed-0 network of its preset's headline run (``stidi-rs train --preset
NAME --dataset D`` trains it again), stored for inference only: binary layers as
their signs, real weights as float32 where that left the test accuracy unchanged.
``networks/manifest.toml`` lists each file with its test accuracy and the commands
that made it.
"""

from __future__ import annotations

from pathlib import Path

from . import checkpoint, presets
from .network import Network

__all__ = ["pretrained", "pretrained_path", "available"]

_DIR = Path(__file__).resolve().parent / "networks"


def pretrained_path(preset: str, dataset: str = "mnist") -> Path:
    """The file of the shipped network of ``preset`` trained on ``dataset``."""
    p = presets.get(preset)
    if dataset not in p.headline:
        known = ", ".join(p.headline) or "none"
        raise ValueError(f"no pretrained {preset} for {dataset!r} (there is: {known})")
    path = _DIR / f"{preset}-{dataset}.npz"
    if not path.is_file():
        raise FileNotFoundError(
            f"the pretrained network {path.name} is missing from this installation ({_DIR})"
        )
    return path


def pretrained(preset: str, dataset: str = "mnist", backend: str = "rust") -> Network:
    """The shipped network of ``preset`` trained on ``dataset``, ready for
    ``predict`` (its test accuracy is ``stidi_rs.presets.get(preset).headline``)."""
    net, _ = checkpoint.load(pretrained_path(preset, dataset), backend=backend)
    return net


def available() -> list[tuple[str, str, float]]:
    """(preset, dataset, headline test accuracy %) of every shipped network."""
    return [
        (name, dataset, accuracy)
        for name, p in presets.PRESETS.items()
        for dataset, (accuracy, _) in p.headline.items()
        if (_DIR / f"{name}-{dataset}.npz").is_file()
    ]

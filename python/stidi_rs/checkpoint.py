"""Checkpoints: weights plus a JSON config in one ``.npz`` file, never pickle.

The file holds ``config`` (UTF-8 JSON as a uint8 array) and, per spiking layer
``i``, ``layer{i}.weight`` (float64, PyTorch layout) and for binary layers
``layer{i}.packed`` (uint64 bit-packed signs, see ``stidi_rs.pack_signs``). It is
read with ``allow_pickle=False``, so loading a file runs no code.

A *signs-only* checkpoint (``save(..., signs_only=True)``, ``stidi-rs export``)
keeps only ``layer{i}.packed`` of its binary layers: the forward pass reads
nothing else, so it evaluates exactly as the full one at 1/64 of the size, but the
real weights that training updates are gone and it cannot be resumed.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from .layers import PSP, Conv2d, Dense, MaxPool2d, pack_signs, unpack_signs
from .network import Network, _layer_spec

__all__ = ["save", "load", "CheckpointError", "FORMAT"]

FORMAT = "stidi-rs/1"


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, or not a stidi-rs checkpoint."""


def network_config(net: Network) -> dict:
    return {
        "input_shape": list(net.input_shape),
        "tmax": net.tmax,
        "psp": {"tau_rise": net.psp.tau_rise, "tau_fall": net.psp.tau_fall},
        "layers": [_layer_spec(layer) for layer in net.layers],
    }


def network_from_config(config: dict, backend: str = "rust") -> Network:
    layers = []
    for spec in config["layers"]:
        spec = dict(spec)
        kind = spec.pop("kind")
        cls = {"conv2d": Conv2d, "dense": Dense, "maxpool2d": MaxPool2d}.get(kind)
        if cls is None:
            raise CheckpointError(f"unknown layer kind {kind!r} in checkpoint")
        layers.append(cls(**spec))
    psp = PSP(config["psp"]["tau_rise"], config["psp"]["tau_fall"])
    return Network(
        layers, config["input_shape"], tmax=config["tmax"], psp=psp, seed=None, backend=backend
    )


def save(path, net: Network, signs_only: bool = False, **extra) -> Path:
    """Write ``net`` (and any JSON-serialisable ``extra`` state) atomically to ``path``.

    ``signs_only`` drops the real weights of binary layers (see the module doc).
    """
    path = Path(path)
    if signs_only and not any(layer.binary for layer in net.spiking_layers):
        raise ValueError("signs_only needs a network with binary layers")
    config = {"format": FORMAT, "network": network_config(net), **extra}
    if signs_only:
        config["signs_only"] = True
    arrays = {"config": np.frombuffer(json.dumps(config).encode(), dtype=np.uint8)}
    for i, layer in enumerate(net.layers):
        if hasattr(layer, "weight"):
            if not (signs_only and layer.binary):
                arrays[f"layer{i}.weight"] = layer.weight
            if layer.binary:
                arrays[f"layer{i}.packed"] = layer.packed
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; a checkpoint is not
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load(path, backend: str = "rust") -> tuple[Network, dict]:
    """Read a checkpoint: the network with its weights, and the saved config dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise CheckpointError(f"checkpoint {path} is not a readable .npz file ({err})") from None
    try:
        config = json.loads(arrays.pop("config").tobytes().decode())
    except (KeyError, ValueError, UnicodeDecodeError):
        raise CheckpointError(f"checkpoint {path} has no valid JSON config") from None
    if config.get("format") != FORMAT:
        raise CheckpointError(
            f"checkpoint {path} has format {config.get('format')!r}, expected {FORMAT!r}"
        )
    net = network_from_config(config["network"], backend=backend)
    for i, layer in enumerate(net.layers):
        if not hasattr(layer, "weight"):
            continue
        key = f"layer{i}.weight"
        if config.get("signs_only") and layer.binary:
            packed = arrays.get(f"layer{i}.packed")
            if (
                packed is None
                or packed.shape != layer.packed.shape
                or packed.dtype != np.dtype("<u8")
            ):
                raise CheckpointError(
                    f"checkpoint {path} lacks layer{i}.packed of shape {layer.packed.shape}"
                )
            arrays[key] = unpack_signs(packed, layer.weight.shape)
        if key not in arrays:
            raise CheckpointError(f"checkpoint {path} lacks {key}")
        try:
            layer.weight = arrays[key]
        except ValueError as err:
            raise CheckpointError(f"checkpoint {path}, {key}: {err}") from None
        if layer.binary and not np.array_equal(
            arrays.get(f"layer{i}.packed"), pack_signs(layer.weight)
        ):
            raise CheckpointError(
                f"checkpoint {path}: layer{i}.packed does not match the "
                "signs of its weights (corrupt file)"
            )
    return net, config

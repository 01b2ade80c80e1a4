"""Checkpoints: weights plus a JSON config in one ``.npz`` file, never pickle.

The file holds ``config`` (UTF-8 JSON as a uint8 array) and, per spiking layer
``i``, ``layer{i}.weight`` (float64, PyTorch layout) and for binary layers
``layer{i}.packed`` (uint64 bit-packed signs, see ``stidi_rs.pack_signs``). It is
read with ``allow_pickle=False``, so loading a file runs no code.

A *signs-only* checkpoint (``save(..., signs_only=True)``, ``stidi-rs export``)
keeps only ``layer{i}.packed`` of its binary layers: the forward pass reads
nothing else, so it evaluates exactly as the full one at 1/64 of the size, but the
real weights that training updates are gone and it cannot be resumed. Likewise a
*float32* checkpoint (``save(..., float32=True)``, ``stidi-rs export --float32``)
stores real weights rounded to float32, half the size; spike times move by the
rounding, so check its accuracy (``stidi-rs eval``) before shipping it.
"""

from __future__ import annotations

import glob
import json
import math
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from .layers import PSP, Conv2d, Dense, MaxPool2d, unpack_signs
from .network import BACKENDS, NEURONS, Network, _layer_spec

__all__ = ["save", "load", "CheckpointError", "CheckpointNotFoundError", "FORMAT"]

FORMAT = "stidi-rs/1"


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, or not a stidi-rs checkpoint."""


def network_config(net: Network) -> dict:
    config = {
        "input_shape": list(net.input_shape),
        "tmax": net.tmax,
        "psp": {"tau_rise": net.psp.tau_rise, "tau_fall": net.psp.tau_fall},
        "layers": [_layer_spec(layer) for layer in net.layers],
    }
    if net.input_window != 1:  # absent otherwise, as in checkpoints written before it
        config["input_window"] = net.input_window
    if net.neuron != "psp":  # likewise
        config["neuron"] = net.neuron
    return config


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
        layers,
        config["input_shape"],
        tmax=config["tmax"],
        psp=psp,
        seed=None,
        backend=backend,
        input_window=config.get("input_window", 1.0),
        neuron=config.get("neuron", "psp"),
    )


def save(path, net: Network, signs_only: bool = False, float32: bool = False, **extra) -> Path:
    """Write ``net`` (and any JSON-serialisable ``extra`` state) atomically to ``path``.

    ``signs_only`` drops the real weights of binary layers, ``float32`` rounds the
    real weights it keeps to float32 (see the module doc).
    """
    path = Path(path)
    if signs_only and not any(layer.binary for layer in net.spiking_layers):
        raise ValueError("signs_only needs a network with binary layers")
    config = {"format": FORMAT, "network": network_config(net), **extra}
    config.pop("signs_only", None)
    config.pop("float32", None)
    if signs_only:
        config["signs_only"] = True
    if float32:
        config["float32"] = True
    arrays = {"config": np.frombuffer(json.dumps(config).encode(), dtype=np.uint8)}
    for i, layer in enumerate(net.layers):
        if hasattr(layer, "weight"):
            if not (signs_only and layer.binary):
                w = layer.weight
                arrays[f"layer{i}.weight"] = w.astype(np.float32) if float32 else w
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
    # Temp files of saves to this path that were killed before they could clean up.
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        stale.unlink(missing_ok=True)
    return path


# Sanity caps, checked before anything of a file's claimed size is allocated: a
# network of more weight values than this (2 GiB as float64) is refused, as is a
# config of more bytes than _MAX_CONFIG or a size above _MAX_SIZE.
_MAX_WEIGHTS = 2**28
_MAX_CONFIG = 64 * 2**20
_MAX_SIZE = 2**31
_MAX_LAYERS = 1000
_LAYER_KEYS = {
    "conv2d": {"in_channels", "out_channels", "kernel_size", "threshold", "binary"},
    "maxpool2d": {"kernel_size"},
    "dense": {"in_features", "out_features", "threshold", "binary"},
}


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint file does not exist."""


def load(path, backend: str = "rust") -> tuple[Network, dict]:
    """Read a checkpoint: the network with its weights, and the saved config dict.

    Every way a file can fail to be a checkpoint is a :class:`CheckpointError` naming
    the file; its config and the shapes of its arrays are checked before the arrays
    are read.
    """
    path = Path(path)
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: choose one of {BACKENDS}")
    if not path.is_file():
        raise CheckpointNotFoundError(f"checkpoint {path} does not exist")
    try:
        return _load(path, backend)
    except CheckpointError:
        raise
    except Exception as err:  # whatever a damaged file makes zipfile, numpy or json raise
        what = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
        raise CheckpointError(f"checkpoint {path} is corrupt ({what})") from None


def _load(path: Path, backend: str) -> tuple[Network, dict]:
    def bad(problem: str):
        return CheckpointError(f"checkpoint {path}: {problem}")

    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PK\x03\x04":
        # np.load would take this for a pickle or a .npy file
        raise bad("not a .npz file (no zip header)")
    size = path.stat().st_size
    with zipfile.ZipFile(path) as zf:
        members = {}
        for info in zf.infolist():
            key = info.filename.removesuffix(".npy")
            if key == info.filename or key in members:
                raise bad(f"unexpected member {info.filename!r}")
            if info.compress_type != zipfile.ZIP_STORED or info.file_size > size:
                # save() stores arrays uncompressed, so no member outgrows the file
                raise bad(f"member {info.filename!r} is compressed or larger than the file")
            members[key] = info
        if "config" not in members:
            raise bad("no config")
        raw = _read_array(zf, members.pop("config"), "|u1", None, bad)
        if raw.size > _MAX_CONFIG:
            raise bad(f"config of {raw.size} bytes (at most {_MAX_CONFIG})")
        try:
            config = json.loads(raw.tobytes().decode())
        except (ValueError, RecursionError):
            raise bad("no valid JSON config") from None
        _check_config(config, bad)
        expected = _expected_arrays(config)
        missing = sorted(set(expected) - set(members))
        if missing:
            raise bad(f"lacks {', '.join(missing)} (its config has that layer)")
        extra = sorted(set(members) - set(expected))
        if extra:
            raise bad(f"holds {', '.join(extra)}, which its config has no place for")
        arrays = {k: _read_array(zf, members[k], *expected[k], bad) for k in expected}
    try:
        net = network_from_config(config["network"], backend=backend)
    except ValueError as err:
        raise bad(f"the config describes no valid network ({err})") from None
    for i, layer in enumerate(net.layers):
        if not hasattr(layer, "weight"):
            continue
        key = f"layer{i}.weight"
        if config.get("signs_only") and layer.binary:
            arrays[key] = unpack_signs(arrays[f"layer{i}.packed"], layer.weight.shape)
        try:
            layer.weight = arrays[key]
        except ValueError as err:
            raise bad(f"{key}: {err}") from None
        if layer.binary and not np.array_equal(arrays[f"layer{i}.packed"], layer.packed):
            raise bad(f"layer{i}.packed does not match the signs of its weights (corrupt file)")
    return net, config


def _read_array(zf: zipfile.ZipFile, info, dtype: str, shape, bad) -> np.ndarray:
    """One ``.npy`` member, its header checked against ``dtype`` and ``shape`` (any
    1-D shape if ``None``) before its data is read; the zip CRC is checked too."""
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version != (1, 0):  # what np.savez writes for arrays of a few dimensions
            raise bad(f"{info.filename} is a .npy file of version {version}, expected (1, 0)")
        got_shape, fortran, got_dtype = np.lib.format.read_array_header_1_0(f)
        want = f"{dtype} {shape if shape is not None else '1-D'}"
        if (
            got_dtype != np.dtype(dtype)
            or fortran
            or (shape is None and len(got_shape) != 1)
            or (shape is not None and got_shape != shape)
        ):
            raise bad(f"{info.filename} holds {got_dtype.str} {got_shape}, expected {want}")
        n = int(np.prod(got_shape)) * got_dtype.itemsize
        if n > info.file_size:
            raise bad(f"{info.filename} is truncated")
        data = f.read(n)
        if len(data) != n or f.read(1):  # reading to the end also checks the CRC
            raise bad(f"{info.filename} has {len(data)} data bytes, expected {n}")
    return np.frombuffer(data, dtype=got_dtype).reshape(got_shape)


def _is_int(v, low: int = 1) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and low <= v <= _MAX_SIZE


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_config(config, bad) -> None:
    """The config's schema: keys, types and sizes (values are checked by the layers)."""
    if not isinstance(config, dict):
        raise bad(f"config is a JSON {type(config).__name__}, not an object")
    if config.get("format") != FORMAT:
        raise bad(f"format {config.get('format')!r}, expected {FORMAT!r}")
    for flag in ("signs_only", "float32"):
        if not isinstance(config.get(flag, False), bool):
            raise bad(f"config {flag} is not true or false")
    if not isinstance(config.get("trainer", {}), dict):
        raise bad("config trainer is not an object")
    net = config.get("network")
    keys = {"input_shape", "tmax", "psp", "layers"}
    if not isinstance(net, dict) or set(net) - {"input_window", "neuron"} != keys:
        raise bad(
            f"config network must be an object with keys {sorted(keys)} (and input_window, neuron)"
        )
    window = net.get("input_window", 1.0)
    if not (_is_number(window) and 0 < window <= 1):
        raise bad(f"input_window must be a number in (0, 1], got {window!r}")
    if net.get("neuron", "psp") not in NEURONS:
        raise bad(f"neuron must be one of {NEURONS}, got {net.get('neuron')!r}")
    shape = net["input_shape"]
    if not (isinstance(shape, list) and len(shape) in (1, 3) and all(map(_is_int, shape))):
        raise bad(f"input_shape must be 1 or 3 sizes in [1, {_MAX_SIZE}], got {shape!r}")
    psp = net["psp"]
    if not (
        isinstance(psp, dict)
        and set(psp) == {"tau_rise", "tau_fall"}
        and all(map(_is_number, psp.values()))
    ):
        raise bad(f"psp must be {{'tau_rise': number, 'tau_fall': number}}, got {psp!r}")
    if not _is_number(net["tmax"]):
        raise bad(f"tmax must be a number, got {net['tmax']!r}")
    layers = net["layers"]
    if not (isinstance(layers, list) and 1 <= len(layers) <= _MAX_LAYERS):
        raise bad(f"layers must be a list of 1 to {_MAX_LAYERS} layers")
    weights = 0
    for i, spec in enumerate(layers):
        kind = spec.get("kind") if isinstance(spec, dict) else None
        if kind not in _LAYER_KEYS:
            raise bad(f"layer {i} has no known kind (conv2d, maxpool2d, dense)")
        keys = _LAYER_KEYS[kind]
        optional = {"scale"} | ({"skip"} if kind == "dense" else set())
        given = set(spec) - {"kind"} - (optional if kind != "maxpool2d" else set())
        if given != keys:
            raise bad(f"layer {i} ({kind}) must have the keys {sorted(keys)}, got {sorted(given)}")
        for key in keys:
            value = spec[key]
            ok = (
                isinstance(value, bool)
                if key == "binary"
                else _is_number(value)
                if key == "threshold"
                else _is_int(value)
            )
            if not ok:
                raise bad(f"layer {i} ({kind}): bad {key} {value!r}")
        if "scale" in spec and not (_is_number(spec["scale"]) and spec["scale"] > 0):
            raise bad(f"layer {i} ({kind}): bad scale {spec['scale']!r}")
        if kind == "dense" and spec.get("skip") is not None and not _is_int(spec["skip"], 0):
            raise bad(f"layer {i} (dense): bad skip {spec['skip']!r}")
        weights += math.prod(_weight_shape(spec))
    if weights > _MAX_WEIGHTS:
        raise bad(f"the network has {weights:,} weights, more than the cap of {_MAX_WEIGHTS:,}")


def _weight_shape(spec: dict) -> tuple[int, ...]:
    if spec["kind"] == "conv2d":
        k = spec["kernel_size"]
        return (spec["out_channels"], spec["in_channels"], k, k)
    if spec["kind"] == "dense":
        return (spec["out_features"], spec["in_features"])
    return (0,)


def _expected_arrays(config: dict) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Members (besides ``config``) a file with this config holds: ``{key: (dtype, shape)}``."""
    out = {}
    for i, spec in enumerate(config["network"]["layers"]):
        if spec["kind"] == "maxpool2d":
            continue
        shape = _weight_shape(spec)
        if not (config.get("signs_only") and spec["binary"]):
            out[f"layer{i}.weight"] = ("<f4" if config.get("float32") else "<f8", shape)
        if spec["binary"]:
            out[f"layer{i}.packed"] = ("<u8", (math.prod(shape[1:]), -(-shape[0] // 64)))
    return out

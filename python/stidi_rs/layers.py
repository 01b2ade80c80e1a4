"""Layer and kernel descriptions shared by both engines.

Layers hold configuration and, for spiking layers, the real-valued weights as a
float64 NumPy array in PyTorch layout. Binary layers also keep the signs
bit-packed (see :func:`pack_signs`), always in sync with the real weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["PSP", "Conv2d", "MaxPool2d", "Dense", "pack_signs", "unpack_signs"]


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _positive_float(name: str, value, allow_inf: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if math.isnan(v) or v <= 0 or (math.isinf(v) and not allow_inf):
        limit = "positive" if allow_inf else "positive and finite"
        raise ValueError(f"{name} must be {limit}, got {value!r}")
    return v


@dataclass(frozen=True)
class PSP:
    """Piecewise-linear postsynaptic potential: rise over ``tau_rise`` to 1,
    then fall over ``tau_fall`` to 0 (``inf``: never falls)."""

    tau_rise: float
    tau_fall: float = math.inf

    def __post_init__(self):
        object.__setattr__(self, "tau_rise", _positive_float("tau_rise", self.tau_rise))
        object.__setattr__(
            self, "tau_fall", _positive_float("tau_fall", self.tau_fall, allow_inf=True)
        )


def pack_signs(weight: np.ndarray) -> np.ndarray:
    """Bit-pack ``sign(w)`` of a ``(out, ...)`` weight (1 = ``w >= 0``).

    Layout (shared with the Rust engine and saved models): viewing the weight as
    ``(out, rows)``, row ``r`` of the result holds ``ceil(out / 64)`` uint64 words
    whose bit ``j % 64`` of word ``j // 64`` is the sign of ``w[j, r]``. Input-major,
    because an input spike updates every output neuron it reaches at once.
    """
    w = np.asarray(weight).reshape(len(weight), -1)
    out, rows = w.shape
    words = -(-out // 64)
    bits = np.zeros((rows, words * 64), dtype=bool)
    bits[:, :out] = (w >= 0).T
    return np.packbits(bits, axis=1, bitorder="little").view("<u8").reshape(rows, words)


def unpack_signs(packed: np.ndarray, shape) -> np.ndarray:
    """Inverse of :func:`pack_signs`: ±1.0 weights of the given shape."""
    out = shape[0]
    bits = np.unpackbits(np.ascontiguousarray(packed).view(np.uint8), axis=1, bitorder="little")
    return np.where(bits[:, :out].T, 1.0, -1.0).reshape(shape)


class _Spiking:
    """A layer of spiking neurons with its own threshold and weights."""

    kind = ""

    def __init__(self, weight_shape, threshold, binary, init, scale=1.0):
        self.threshold = threshold
        self.binary = bool(binary)
        self._scale = _positive_float("scale", scale)
        if self._scale != 1.0 and not self.binary:
            raise ValueError(f"scale applies only to binary layers, got scale={scale}")
        if init is None:
            init = (-0.5, 1.0) if self.binary else (0.0, 1.0)
        low, high = (float(v) for v in init)
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ValueError(f"init must be a finite range (low, high) with low < high, got {init}")
        self.init = (low, high)
        self._weight = np.zeros(weight_shape)
        self._packed = pack_signs(self._weight) if self.binary else None
        self._assigned = False  # weights given by the user, which a Network keeps

    @property
    def threshold(self) -> float:
        """Firing threshold θ; may be reassigned (validated) between runs."""
        return self._threshold

    @threshold.setter
    def threshold(self, value) -> None:
        self._threshold = _positive_float("threshold", value)

    @property
    def scale(self) -> float:
        """Magnitude of a binary layer's forward weights (``±scale``), fixed at
        construction: a Network checks it against its neuron model."""
        return self._scale

    @property
    def weight(self) -> np.ndarray:
        """Real-valued weights, read-only view; assign a new array to change them."""
        view = self._weight.view()
        view.flags.writeable = False
        return view

    @weight.setter
    def weight(self, value) -> None:
        given = np.asarray(value)
        # float64 would take strings ("1.5") and complex values (dropping the
        # imaginary part) without complaint
        if given.dtype == bool or given.dtype.kind not in "iuf":
            name = type(self).__name__
            raise ValueError(f"{name} weight must be a real numeric array, got dtype {given.dtype}")
        w = np.array(given, dtype=np.float64, order="C", copy=True)
        if w.shape != self._weight.shape:
            raise ValueError(
                f"{type(self).__name__} weight must have shape {self._weight.shape}, got {w.shape}"
            )
        if not np.isfinite(w).all():
            raise ValueError(f"{type(self).__name__} weight contains NaN or infinite values")
        self._weight = w
        if self.binary:
            self._packed = pack_signs(w)
        self._assigned = True

    @property
    def packed(self) -> np.ndarray | None:
        """Bit-packed signs of a binary layer (``None`` for real layers), read-only."""
        if self._packed is None:
            return None
        view = self._packed.view()
        view.flags.writeable = False
        return view

    def reset_parameters(self, rng: np.random.Generator, keep_assigned: bool = False) -> None:
        """Draw the weights uniformly from ``init``; with ``keep_assigned``, weights
        assigned to ``weight`` stay (the draw is made either way, so the layers
        after this one get the same weights whether or not it kept its own)."""
        w = rng.uniform(*self.init, size=self._weight.shape)
        if not (keep_assigned and self._assigned):
            self.weight = w
            self._assigned = False


class Conv2d(_Spiking):
    """Spiking 2-D convolution: stride 1, no padding, ``weight`` is ``(out, in, k, k)``.

    A binary layer's forward weights are ``±scale`` (default 1), the signs of
    ``weight``; ``scale`` other than 1 needs ramp neurons (docs/algorithm.md §3a).
    """

    kind = "conv2d"

    def __init__(
        self, in_channels, out_channels, kernel_size, threshold, binary=False, init=None, scale=1.0
    ):
        self.in_channels = _positive_int("in_channels", in_channels)
        self.out_channels = _positive_int("out_channels", out_channels)
        self.kernel_size = _positive_int("kernel_size", kernel_size)
        k = self.kernel_size
        shape = (self.out_channels, self.in_channels, k, k)
        super().__init__(shape, threshold, binary, init, scale)

    def output_shape(self, shape):
        if len(shape) != 3:
            raise ValueError(f"Conv2d needs a (C, H, W) input, got shape {tuple(shape)}")
        c, h, w = shape
        if c != self.in_channels:
            raise ValueError(f"Conv2d expects {self.in_channels} input channels, got {c}")
        if self.kernel_size > min(h, w):
            raise ValueError(
                f"Conv2d kernel_size {self.kernel_size} is larger than its {h}x{w} input"
            )
        return (self.out_channels, h - self.kernel_size + 1, w - self.kernel_size + 1)

    def __repr__(self):
        return (
            f"Conv2d({self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"threshold={self.threshold}, binary={self.binary}{_scale_repr(self)})"
        )


class Dense(_Spiking):
    """Fully connected spiking layer, ``weight`` is ``(out, in)``; flattens its input.

    ``skip=k`` also feeds it the spikes of the network's layer ``k`` (an earlier
    layer than its input), flattened and appended after its input's, so that
    ``in_features`` counts both. The layer's displaced errors go back to both.
    ``scale`` as for :class:`Conv2d`.
    """

    kind = "dense"

    def __init__(
        self, in_features, out_features, threshold, binary=False, init=None, skip=None, scale=1.0
    ):
        self.in_features = _positive_int("in_features", in_features)
        self.out_features = _positive_int("out_features", out_features)
        if skip is not None and (
            isinstance(skip, bool) or not isinstance(skip, (int, np.integer)) or skip < 0
        ):
            raise ValueError(f"skip must be a layer index >= 0 or None, got {skip!r}")
        self.skip = None if skip is None else int(skip)
        super().__init__((self.out_features, self.in_features), threshold, binary, init, scale)

    def output_shape(self, shape, skip_shape=None):
        n = math.prod(shape)
        what = f"input shape {tuple(shape)}"
        if skip_shape is not None:
            n += math.prod(skip_shape)
            what += f" and layer {self.skip}'s {tuple(skip_shape)}"
        if n != self.in_features:
            raise ValueError(f"Dense expects {self.in_features} input features, got {n} ({what})")
        return (self.out_features,)

    def __repr__(self):
        skip = "" if self.skip is None else f", skip={self.skip}"
        return (
            f"Dense({self.in_features}, {self.out_features}, threshold={self.threshold}, "
            f"binary={self.binary}{skip}{_scale_repr(self)})"
        )


def _scale_repr(layer) -> str:
    return f", scale={layer.scale:g}" if layer.scale != 1.0 else ""


class MaxPool2d:
    """Max-pooling in time: the earliest spike of each ``k x k`` window (stride ``k``)."""

    kind = "maxpool2d"
    binary = False

    def __init__(self, kernel_size):
        self.kernel_size = _positive_int("kernel_size", kernel_size)

    def output_shape(self, shape):
        if len(shape) != 3:
            raise ValueError(f"MaxPool2d needs a (C, H, W) input, got shape {tuple(shape)}")
        c, h, w = shape
        if self.kernel_size > min(h, w):
            raise ValueError(
                f"MaxPool2d kernel_size {self.kernel_size} is larger than its {h}x{w} input"
            )
        return (c, h // self.kernel_size, w // self.kernel_size)

    def __repr__(self):
        return f"MaxPool2d({self.kernel_size})"

"""Networks of spiking layers, input encoding and input validation."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from . import reference
from .layers import PSP, Conv2d, Dense, MaxPool2d, _positive_float

__all__ = ["Network", "encode", "BACKENDS", "NEURONS"]

BACKENDS = ("rust", "numpy")
NEURONS = ("psp", "ramp")


def encode(
    images, tmax: float = 256.0, max_value: float = 255.0, window: float = 1.0
) -> np.ndarray:
    """Latency-encode intensities: ``x`` fires once at ``window * tmax * (1 - x / max_value)``.

    ``images`` is any real array with values in ``[0, max_value]`` (uint8 images
    with the default ``max_value=255``); returns float64 spike times of the same
    shape, where ``tmax`` means "no spike" (a zero intensity never fires).
    ``window`` in ``(0, 1]`` is the fraction of ``[0, tmax)`` the input spikes
    span; the rest of the window is left to the layers above (docs/algorithm.md §1).
    """
    tmax = _positive_float("tmax", tmax)
    max_value = _positive_float("max_value", max_value)
    window = _input_window(window)
    x = np.asarray(images)
    if x.dtype == bool or not (
        np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)
    ):
        raise ValueError(f"images must be a real numeric array, got dtype {x.dtype}")
    if x.size and np.isnan(x).any():
        raise ValueError("images contain NaN")
    if x.size and (x.min() < 0 or x.max() > max_value):
        raise ValueError(
            f"image values must lie in [0, {max_value:g}], got [{x.min()}, {x.max()}]"
            + ("; pass max_value=1.0 for images scaled to [0, 1]" if x.max() <= 1 else "")
        )
    return reference.encode(x, tmax, max_value, window)


def _input_window(window) -> float:
    if isinstance(window, bool) or not isinstance(window, (int, float, np.integer, np.floating)):
        raise ValueError(f"input window must be a number in (0, 1], got {window!r}")
    if not 0 < window <= 1:  # also catches NaN
        raise ValueError(f"input window must lie in (0, 1], got {window}")
    return float(window)


def _check_times(times, shape, tmax: float) -> np.ndarray:
    t = np.asarray(times)
    if t.dtype == bool or not (
        np.issubdtype(t.dtype, np.integer) or np.issubdtype(t.dtype, np.floating)
    ):
        raise ValueError(f"spike times must be a real numeric array, got dtype {t.dtype}")
    if t.ndim != len(shape) + 1 or tuple(t.shape[1:]) != tuple(shape):
        raise ValueError(
            f"spike times must have shape (batch, {', '.join(map(str, shape))}), got {t.shape}"
        )
    t = np.ascontiguousarray(t, dtype=np.float64)
    if t.size:
        bad = ~((t >= 0) & (t <= tmax))  # also catches NaN
        if bad.any():
            idx = np.unravel_index(np.argmax(bad), t.shape)
            raise ValueError(
                f"spike times must lie in [0, tmax={tmax:g}] (NaN not allowed); "
                f"found {t[idx]} at index {tuple(int(i) for i in idx)}"
            )
    return t


def _check_labels(labels, batch: int, n_classes: int) -> np.ndarray:
    y = np.asarray(labels)
    if not np.issubdtype(y.dtype, np.integer) or y.dtype == bool:
        raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    if y.shape != (batch,):
        raise ValueError(f"labels must have shape ({batch},), got {y.shape}")
    if batch and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"labels must lie in [0, {n_classes - 1}], got [{y.min()}, {y.max()}]")
    return np.ascontiguousarray(y, dtype=np.int64)


class Network:
    """A feed-forward stack of ``Conv2d``, ``MaxPool2d`` and ``Dense`` layers
    (a ``Dense`` with ``skip`` also reads an earlier layer).

    Parameters
    ----------
    layers : sequence of layers, the last one usually a ``Dense`` with one neuron per class.
    input_shape : ``(C, H, W)`` for images, or ``(N,)`` for a flat input.
    tmax : end of the time window; a spike at ``tmax`` means "no spike".
    psp : the postsynaptic potential kernel, default ``PSP(40.0)`` (never falls).
    input_window : the fraction of ``[0, tmax)`` that :meth:`encode` puts the input
        spikes in (default 1: all of it) [ours].
    neuron : ``"psp"`` (default): every layer shares the window ``[0, tmax)`` and
        integrates ``psp``. ``"ramp"``: every spiking layer has its own window; a
        neuron integrates linear PSPs while the window below is open and then fires
        on a ramp of slope ``1/tmax`` (docs/algorithm.md §3a) [ours]. Its PSP is
        ``PSP(tmax)``, which ``psp`` must be if given.
    seed : seeds the weight initialisation of every spiking layer whose ``weight``
        was not assigned before; assigned weights are kept.
    backend : ``"rust"`` (multithreaded engine) or ``"numpy"`` (the reference).
    """

    def __init__(
        self,
        layers: Sequence,
        input_shape: Sequence[int],
        tmax: float = 256.0,
        psp: PSP | None = None,
        seed: int | None = 0,
        backend: str = "rust",
        input_window: float = 1.0,
        neuron: str = "psp",
    ):
        self.layers = list(layers)
        if not self.layers:
            raise ValueError("a Network needs at least one layer")
        for layer in self.layers:
            if not isinstance(layer, (Conv2d, MaxPool2d, Dense)):
                raise ValueError(f"unsupported layer {layer!r}: use Conv2d, MaxPool2d or Dense")
        if len({id(layer) for layer in self.layers}) != len(self.layers):
            raise ValueError("the same layer object appears twice in the Network")
        shape = tuple(int(s) for s in input_shape)
        if len(shape) not in (1, 3) or min(shape) <= 0:
            raise ValueError(
                f"input_shape must be (C, H, W) or (N,) with positive sizes, got {shape}"
            )
        self.input_shape = shape
        self.tmax = _positive_float("tmax", tmax)
        self.input_window = _input_window(input_window)
        if neuron not in NEURONS:
            raise ValueError(f"unknown neuron {neuron!r}: choose one of {NEURONS}")
        self.neuron = neuron
        default = PSP(self.tmax) if neuron == "ramp" else PSP(40.0)
        self.psp = default if psp is None else psp
        if not isinstance(self.psp, PSP):
            raise ValueError(f"psp must be a stidi_rs.PSP, got {psp!r}")
        if neuron == "ramp" and self.psp != default:
            raise ValueError(
                f"ramp neurons integrate with a linear PSP: psp must be PSP({self.tmax:g}) "
                f"(tau_rise = tmax, tau_fall = inf) or None, got {self.psp!r}"
            )
        for i, layer in enumerate(self.layers):
            if getattr(layer, "scale", 1.0) != 1.0 and neuron != "ramp":
                raise ValueError(
                    f"layer {i} ({layer!r}): scale needs ramp neurons "
                    "(with PSP neurons, scale the threshold instead)"
                )
        self.output_shapes = []
        for i, layer in enumerate(self.layers):
            try:
                if getattr(layer, "skip", None) is None:
                    shape = layer.output_shape(shape)
                elif layer.skip >= i - 1:
                    raise ValueError(
                        f"skip={layer.skip} must name a layer below its input layer {i - 1}"
                    )
                else:
                    shape = layer.output_shape(shape, self.output_shapes[layer.skip])
            except ValueError as err:
                raise ValueError(f"layer {i} ({layer!r}): {err}") from None
            self.output_shapes.append(shape)
        self.seed = seed
        rng = np.random.default_rng(seed)
        for layer in self.spiking_layers:
            layer.reset_parameters(rng, keep_assigned=True)
        self._engine = None
        self.backend = backend

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, name: str) -> None:
        if name not in BACKENDS:
            raise ValueError(f"unknown backend {name!r}: choose one of {BACKENDS}")
        if name == "rust":
            self._rust()
        self._backend = name

    def _rust(self):
        """The Rust engine, rebuilt if what it was built from (a layer's threshold, the
        PSP, tmax) was reassigned since: the NumPy backend reads them on every call."""
        key = (
            [_layer_spec(layer) for layer in self.layers],
            list(self.input_shape),
            self.psp.tau_rise,
            self.psp.tau_fall,
            self.tmax,
            self.neuron,
        )
        if self._engine is None or key != self._engine_key:
            from . import _core

            self._engine, self._engine_key = _core.Engine(*key), key
        return self._engine

    def encode(self, images, max_value: float = 255.0) -> np.ndarray:
        """Spike times of ``images`` for this network: :func:`encode` with its ``tmax``
        and ``input_window``, shaped ``(batch, *input_shape)`` (any shape with that
        many values per image is accepted)."""
        x = np.asarray(images)
        n = math.prod(self.input_shape)
        if x.ndim == 0 or x.size != len(x) * n:
            raise ValueError(
                f"images must hold {n} values each (input_shape {self.input_shape}), "
                f"got shape {x.shape}"
            )
        x = x.reshape(len(x), *self.input_shape)
        return encode(x, tmax=self.tmax, max_value=max_value, window=self.input_window)

    @property
    def spiking_layers(self) -> list:
        return [layer for layer in self.layers if not isinstance(layer, MaxPool2d)]

    @property
    def n_classes(self) -> int:
        return math.prod(self.output_shapes[-1])

    def _params(self):
        weights = [getattr(layer, "_weight", None) for layer in self.layers]
        packed = [getattr(layer, "_packed", None) for layer in self.layers]
        return weights, packed

    def _forward(self, t: np.ndarray):
        if len(t) == 0:
            empty = [np.zeros((0, *s)) for s in self.output_shapes]
            return empty, np.zeros((0, self.n_classes))
        if self.backend == "numpy":
            return reference.forward(self.layers, t, self.psp, self.tmax, self.neuron)
        weights, packed = self._params()
        flat, v_end, self._events = self._rust().forward(weights, packed, t.reshape(len(t), -1))
        times = [f.reshape(len(t), *s) for f, s in zip(flat, self.output_shapes)]
        return times, (v_end if isinstance(self.layers[-1], Dense) else None)

    def forward(self, times) -> list[np.ndarray]:
        """Spike times of every layer, each shaped ``(batch, *layer_output_shape)``."""
        t = _check_times(times, self.input_shape, self.tmax)
        return self._forward(t)[0]

    def synaptic_events(self, times, batch_size: int = 256) -> int:
        """Synaptic events of a forward pass over ``times``: over every ``Conv2d`` and
        ``Dense`` layer, the synapses of its inputs that spike (``t < tmax``), the
        work the event-driven engine does, whether or not its sweep reached them.
        Counted by the engine with ``backend="rust"``, from the reference's spike
        times with ``"numpy"``."""
        t = _check_times(times, self.input_shape, self.tmax)
        batch_size = int(batch_size)
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        total = 0
        # In batches, as predict: the spike times of a whole data set need not fit.
        for lo in range(0, len(t), batch_size):
            chunk = t[lo : lo + batch_size]
            if self.backend == "numpy":
                outs, _ = reference.forward(self.layers, chunk, self.psp, self.tmax, self.neuron)
                total += int(reference.synaptic_events(self.layers, chunk, outs, self.tmax).sum())
            else:
                self._forward(chunk)
                total += int(self._events)
        return total

    def predict(self, times, return_cases: bool = False, batch_size: int = 1024):
        """Predicted class per sample: the first output spike (rule in docs/algorithm.md §4).

        With ``return_cases`` also returns, per sample, how it was decided:
        0 = unique first spike, 1 = tie broken by ``V(tmax)``, 2 = no output spike.
        """
        if not isinstance(self.layers[-1], Dense):
            raise ValueError("predict needs a Dense output layer")
        t = _check_times(times, self.input_shape, self.tmax)
        batch_size = int(batch_size)
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        preds, cases = [], []
        for lo in range(0, len(t), batch_size):
            chunk = t[lo : lo + batch_size]
            if self.backend == "rust" and len(chunk):
                # Decided in the engine: no hidden layer's times come back.
                p, c = self._rust().predict(*self._params(), chunk.reshape(len(chunk), -1))
            else:
                out, v_end = self._forward(chunk)
                p, c = reference.decide(out[-1], v_end, self.tmax)
            preds.append(p)
            cases.append(c)
        pred = np.concatenate(preds) if preds else np.zeros(0, dtype=np.int64)
        case = np.concatenate(cases) if cases else np.zeros(0, dtype=np.int64)
        return (pred, case) if return_cases else pred

    def calibrate_thresholds(self, times, fire=0.5, layers=None, rtol: float = 1e-6):
        """Set thresholds so that a fraction ``fire`` of each layer's neurons fires on
        ``times`` (docs/algorithm.md §7) [ours].

        ``layers`` are indices into ``self.layers`` of spiking layers (default: every
        spiking layer but the output); they are calibrated from the bottom up, each
        with the thresholds below it already set. ``fire`` is one fraction in
        ``(0, 1)`` or one per calibrated layer. A non-leaky neuron fires exactly when
        its threshold is at most the supremum of its potential over the window, so the
        fraction that fires falls as θ rises; θ is bisected (relative tolerance
        ``rtol``) to the smallest value at which at most ``fire`` of the neurons fire,
        over all neurons and samples of the batch (a Conv2d counts every position).
        Returns the new thresholds, one per calibrated layer. Raises ``ValueError`` if
        no positive threshold makes more than ``fire`` of a layer fire (too many of
        its neurons never reach any positive potential on the batch).
        """
        t = _check_times(times, self.input_shape, self.tmax)
        if len(t) == 0:
            raise ValueError("calibrate_thresholds needs a non-empty batch")
        spiking = [i for i, layer in enumerate(self.layers) if not isinstance(layer, MaxPool2d)]
        if layers is None:
            layers = spiking[:-1]
        layers = sorted(int(i) for i in layers)
        for i in layers:
            if i not in spiking:
                raise ValueError(f"layer {i} is not a spiking layer of this Network")
        if len(set(layers)) != len(layers):
            raise ValueError("a layer is named twice in layers")
        fires = list(fire) if isinstance(fire, Sequence) else [fire] * len(layers)
        if len(fires) != len(layers):
            raise ValueError(f"fire needs one value per calibrated layer ({len(layers)})")
        fires = [float(f) for f in fires]
        for f in fires:
            if not 0 < f < 1:
                raise ValueError(f"fire must lie in (0, 1), got {f}")
        if not (math.isfinite(rtol) and 0 < rtol < 1):
            raise ValueError(f"rtol must lie in (0, 1), got {rtol}")

        def fraction(i, theta):
            self.layers[i].threshold = theta
            return float((self._forward(t)[0][i] < self.tmax).mean())

        out = []
        for i, f in zip(layers, fires):
            old = self.layers[i].threshold
            lo = hi = old
            while fraction(i, hi) > f:  # raise θ until few enough fire
                lo, hi = hi, hi * 2.0
            if lo == hi:  # lower θ until too many fire
                while fraction(i, lo) <= f:
                    hi, lo = lo, lo / 2.0
                    if lo < old * 1e-12:
                        self.layers[i].threshold = old
                        raise ValueError(
                            f"layer {i}: no positive threshold makes more than {f} of its "
                            "neurons fire on this batch"
                        )
            while hi - lo > rtol * hi:  # fraction(lo) > f >= fraction(hi)
                mid = 0.5 * (lo + hi)
                if fraction(i, mid) > f:
                    lo = mid
                else:
                    hi = mid
            self.layers[i].threshold = hi
            out.append(hi)
        return out

    def __repr__(self):
        body = ",\n  ".join(repr(layer) for layer in self.layers)
        return (
            f"Network([\n  {body}\n], input_shape={self.input_shape}, tmax={self.tmax:g}, "
            f"psp={self.psp}, "
            + (f"input_window={self.input_window:g}, " if self.input_window != 1 else "")
            + (f"neuron={self.neuron!r}, " if self.neuron != "psp" else "")
            + f"backend={self.backend!r})"
        )


def _layer_spec(layer) -> dict:
    if isinstance(layer, MaxPool2d):
        return {"kind": "maxpool2d", "kernel_size": layer.kernel_size}
    if isinstance(layer, Conv2d):
        return {
            "kind": "conv2d",
            "in_channels": layer.in_channels,
            "out_channels": layer.out_channels,
            "kernel_size": layer.kernel_size,
            "threshold": layer.threshold,
            "binary": layer.binary,
            **_scale(layer),
        }
    spec = {
        "kind": "dense",
        "in_features": layer.in_features,
        "out_features": layer.out_features,
        "threshold": layer.threshold,
        "binary": layer.binary,
    }
    if layer.skip is not None:  # absent otherwise, as in checkpoints written before skips
        spec["skip"] = layer.skip
    spec.update(_scale(layer))
    return spec


def _scale(layer) -> dict:
    # Absent when 1, as in checkpoints written before binary scales.
    return {"scale": layer.scale} if layer.scale != 1.0 else {}

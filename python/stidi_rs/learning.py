"""The STiDi-BP learning rule (docs/algorithm.md §5)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from . import reference
from .layers import Dense, _positive_float
from .network import Network, _check_labels, _check_times

__all__ = ["STiDiBP", "Homeostasis"]


def _per_layer(name: str, value, n: int, allow_zero: bool) -> list[float]:
    values = list(value) if isinstance(value, Sequence) else [value] * n
    if len(values) != n:
        raise ValueError(f"{name} needs one value per spiking layer ({n}), got {len(values)}")
    out = []
    for v in values:
        v = float(v)
        if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
            raise ValueError(
                f"{name} values must be finite and {'>= 0' if allow_zero else '> 0'}, got {v}"
            )
        out.append(v)
    return out


class STiDiBP:
    """Spike-time-displacement backpropagation for a :class:`Network`.

    Parameters
    ----------
    network : the network to train (its last layer must be ``Dense``).
    lr : learning rate, one value or one per spiking layer.
    gamma : target margin of the output layer (in time units).
    beta : displacement scale, one value or one per spiking layer.
    normalize : divide every layer's errors by their L2 norm (per sample).
    weight_decay : L2 decay ``λ`` (the step subtracts ``lr * λ * w``).
    conv_reduce : ``"sum"`` or ``"mean"`` of a shared conv weight's updates over positions.
    displacement : PSP slope in the displacement of the layer below: ``"exact"``
        (``ε'``, zero once a PSP has peaked when ``τ2 = ∞``) or ``"causal"`` (``1/τ1``
        for every earlier input, as S4NN's backward pass).
    """

    def __init__(
        self,
        network: Network,
        lr: float | Sequence[float] = 1.0,
        gamma: float = 3.0,
        beta: float | Sequence[float] = 1.0,
        normalize: bool = True,
        weight_decay: float = 0.0,
        conv_reduce: str = "sum",
        displacement: str = "exact",
    ):
        if not isinstance(network, Network):
            raise ValueError(f"STiDiBP needs a stidi_rs.Network, got {type(network).__name__}")
        if not isinstance(network.layers[-1], Dense):
            raise ValueError("STiDiBP needs a Dense output layer (one neuron per class)")
        n = len(network.spiking_layers)
        self.network = network
        self.lr = _per_layer("lr", lr, n, allow_zero=True)
        self.beta = _per_layer("beta", beta, n, allow_zero=True)
        self.gamma = _positive_float("gamma", gamma)
        self.normalize = bool(normalize)
        self.weight_decay = float(weight_decay)
        if not math.isfinite(self.weight_decay) or self.weight_decay < 0:
            raise ValueError(f"weight_decay must be finite and >= 0, got {weight_decay}")
        if conv_reduce not in ("sum", "mean"):
            raise ValueError(f"conv_reduce must be 'sum' or 'mean', got {conv_reduce!r}")
        self.conv_reduce = conv_reduce
        if displacement not in ("exact", "causal"):
            raise ValueError(f"displacement must be 'exact' or 'causal', got {displacement!r}")
        self.displacement = displacement

    def steps(self, times, labels, batch_size: int = 1) -> dict:
        """Consecutive steps over ``batch_size`` slices of ``times`` (the last may be
        smaller), exactly as calling :meth:`step` on each slice in order, but in one
        engine call: per-sample updates without Python overhead per sample.

        Returns ``predictions`` and ``cases`` per sample (from the forward pass of the
        step that sample was in), ``accuracy`` over all samples, and per step
        ``loss`` ``(steps,)`` and ``fired`` ``(steps, layers)``.
        """
        batch_size = int(batch_size)
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        return self._run(times, labels, batch_size)

    def step(self, times, labels) -> dict:
        """Apply one update from a batch (the per-sample updates are averaged).

        Returns statistics of the forward pass the update came from: ``loss``
        (mean over the batch of ``½ Σ e²`` of the output layer), ``accuracy``,
        ``predictions``, ``cases`` (see ``Network.predict``) and ``fired``
        (per layer, the mean fraction of neurons that spiked).
        """
        out = self._run(times, labels, None)
        return {**out, "loss": float(out["loss"][0]), "fired": out["fired"][0].tolist()}

    def _run(self, times, labels, batch_size: int | None) -> dict:
        net = self.network
        t = _check_times(times, net.input_shape, net.tmax)
        y = _check_labels(labels, len(t), net.n_classes)
        if len(t) == 0:
            raise ValueError("a learning step needs a non-empty batch")
        batch_size = batch_size or len(t)
        hyper = (
            self.lr,
            self.gamma,
            self.beta,
            self.normalize,
            self.weight_decay,
            self.conv_reduce,
            self.displacement,
        )
        if net.backend == "rust":
            weights, packed = net._params()
            out = net._rust().train_steps(
                weights, packed, t.reshape(len(t), -1), y, batch_size, hyper
            )
            pred, cases = np.asarray(out["predictions"]), np.asarray(out["cases"])
            loss, fired = np.asarray(out["loss"]), np.asarray(out["fired"])
        else:
            preds, case_list, loss, fired = [], [], [], []
            for lo in range(0, len(t), batch_size):
                xb, yb = t[lo : lo + batch_size], y[lo : lo + batch_size]
                deltas, (outs, v_end), e_out = reference.updates(
                    net.layers, xb, yb, net.psp, net.tmax, *hyper
                )
                for layer, delta in zip(net.layers, deltas):
                    if delta is not None:
                        layer.weight = layer._weight + delta
                p, c = reference.decide(outs[-1], v_end, net.tmax)
                preds.append(p)
                case_list.append(c)
                loss.append(0.5 * (e_out**2).sum(axis=1).mean())
                fired.append([(o < net.tmax).reshape(len(o), -1).mean() for o in outs])
            pred, cases = np.concatenate(preds), np.concatenate(case_list)
            loss, fired = np.array(loss), np.array(fired)
        return {
            "loss": loss,
            "accuracy": float((pred == y).mean()),
            "predictions": pred,
            "cases": cases,
            "fired": fired,
        }


class Homeostasis:
    """Keeps hidden layers firing: a guard against silent layers, not part of STiDi-BP.

    A hidden neuron that stops firing gets no displacement and so never learns to
    fire again (docs/algorithm.md §5). Every call measures, on a probe batch, the
    fraction of samples in which each hidden unit fires (a Conv2d channel counts
    all its positions); units below ``low`` get ``+delta`` on every weight, units
    above ``high`` get ``-delta``. The output layer is left alone.
    """

    def __init__(self, low: float = 0.1, high: float = 0.6, delta: float = 0.01, probe: int = 100):
        if not 0 <= low < high <= 1:
            raise ValueError(f"need 0 <= low < high <= 1, got low={low}, high={high}")
        if not (math.isfinite(delta) and delta > 0):
            raise ValueError(f"delta must be positive and finite, got {delta}")
        if int(probe) < 1:
            raise ValueError(f"probe must be at least 1, got {probe}")
        self.low, self.high, self.delta, self.probe = low, high, float(delta), int(probe)

    def config(self) -> dict:
        return {"low": self.low, "high": self.high, "delta": self.delta, "probe": self.probe}

    def __call__(self, network: Network, times) -> int:
        """Nudge the hidden layers of ``network`` using the first ``probe`` samples of
        ``times``; returns how many units were nudged."""
        outputs = network.forward(np.asarray(times)[: self.probe])
        nudged = 0
        for layer, out in zip(network.layers[:-1], outputs[:-1]):
            if not hasattr(layer, "weight"):
                continue
            fired = out < network.tmax
            rate = fired.mean(axis=(0, 2, 3)) if fired.ndim == 4 else fired.mean(axis=0)
            step = np.where(rate < self.low, self.delta, np.where(rate > self.high, -self.delta, 0))
            if step.any():
                shape = (-1,) + (1,) * (layer.weight.ndim - 1)
                layer.weight = layer.weight + step.reshape(shape)
                nudged += int(np.count_nonzero(step))
        return nudged

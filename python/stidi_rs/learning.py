"""Learning rules (docs/algorithm.md §5 and §10) behind one interface, :class:`Rule`."""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence

import numpy as np

from . import reference
from ._core import DivergenceError
from .layers import Dense, _positive_float
from .network import Network, _check_labels, _check_times

__all__ = [
    "Rule",
    "STiDiBP",
    "ExactGradient",
    "Homeostasis",
    "RULES",
    "make_rule",
    "DivergenceError",
]


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


def _choice(name: str, value, choices: tuple) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


class _NonFinite(Exception):
    """A step's new weight of layer ``args[0]`` (``args[1]``) is not finite."""


class Rule:
    """What the trainer, checkpoints and CLI know of a learning rule.

    A rule trains the :class:`Network` it was built with. ``lr`` holds one rate per
    spiking layer and may be reassigned between calls (schedules do). ``name`` and
    :meth:`config` rebuild it: ``make_rule(rule.name, network, **rule.config())``.
    """

    name = ""

    def __init__(self, network: Network, lr):
        if not isinstance(network, Network):
            raise ValueError(
                f"{type(self).__name__} needs a stidi_rs.Network, got {type(network).__name__}"
            )
        if not isinstance(network.layers[-1], Dense):
            raise ValueError(
                f"{type(self).__name__} needs a Dense output layer (one neuron per class)"
            )
        self.network = network
        self.lr = _per_layer("lr", lr, len(network.spiking_layers), allow_zero=True)

    def config(self) -> dict:
        """The rule's settings by name (``lr`` included)."""
        raise NotImplementedError

    def _settings(self) -> dict:
        """The settings the engines read, by name, with the current ``lr``."""
        raise NotImplementedError

    def _check(self, times, labels):
        net = self.network
        t = _check_times(times, net.input_shape, net.tmax)
        y = _check_labels(labels, len(t), net.n_classes)
        if len(t) == 0:
            raise ValueError("a learning step needs a non-empty batch")
        return t, y

    def steps(self, times, labels, batch_size: int = 1) -> dict:
        """Consecutive steps over ``batch_size`` slices of ``times`` (the last may be
        smaller), exactly as calling :meth:`step` on each slice in order, but in one
        engine call: per-sample updates without Python overhead per sample.

        Returns ``predictions`` and ``cases`` per sample (from the forward pass of the
        step that sample was in), ``accuracy`` over all samples, and per step
        ``loss`` ``(steps,)``, ``fired`` ``(steps, layers)`` and ``events`` ``(steps,)``
        (synaptic events of the step's forward passes, see
        :meth:`Network.synaptic_events`).
        """
        batch_size = int(batch_size)
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        t, y = self._check(times, labels)
        # a batch larger than the data is one step over all of it (and fits a usize)
        batch_size = min(batch_size, len(t))
        if self.network.backend == "rust":
            out = self._rust_steps(t, y, batch_size)
        else:
            out = self._numpy_steps(t, y, batch_size)
        return {**out, "accuracy": float((out["predictions"] == y).mean())}

    def step(self, times, labels) -> dict:
        """One update from a batch (its per-sample contributions averaged).

        Returns statistics of the forward pass the update came from: ``loss``
        (batch mean of the rule's loss), ``accuracy``, ``predictions``, ``cases``
        (see ``Network.predict``), ``fired`` (per layer, the mean fraction of
        neurons that spiked) and ``events`` (synaptic events of the forward pass,
        see ``Network.synaptic_events``).
        """
        out = self.steps(times, labels, batch_size=max(1, len(np.asarray(times))))
        return {
            **out,
            "loss": float(out["loss"][0]),
            "fired": out["fired"][0].tolist(),
            "events": int(out["events"][0]),
        }

    def gradients(self, times, labels) -> tuple[float, list[np.ndarray]]:
        """``(loss, grads)`` of a batch without changing the weights: the batch-mean
        loss and, per spiking layer, an array shaped like its weight such that a
        plain SGD step at rate ``lr`` is ``w - lr * grad`` (for STiDi-BP, whose
        update is no gradient, the direction of its step)."""
        t, y = self._check(times, labels)
        net = self.network
        if net.backend == "rust":
            weights, packed = net._params()
            loss, grads = net._rust().gradients(
                weights, packed, t.reshape(len(t), -1), y, self._settings()
            )
            grads = [
                np.asarray(g).reshape(w.shape) for g, w in zip(grads, weights) if g is not None
            ]
            return float(loss), grads
        loss, grads = self._numpy_gradients(t, y)
        return float(loss), [g for g in grads if g is not None]

    def _rust_steps(self, t, y, batch_size):
        net = self.network
        weights, packed = net._params()
        out = net._rust().train_steps(
            weights,
            packed,
            t.reshape(len(t), -1),
            y,
            batch_size,
            self._settings(),
            self._moments(),
        )
        self._after_rust(out)
        keys = ("predictions", "cases", "loss", "fired", "events")
        return {k: np.asarray(out[k]) for k in keys}

    def _moments(self):
        return None

    def _after_rust(self, out) -> None:
        pass

    def _set(self, layer, weight) -> None:
        """Assign a step's new weight, refusing a non-finite one (see _numpy_steps)."""
        if not np.isfinite(weight).all():
            raise _NonFinite(self.network.layers.index(layer), weight)
        layer.weight = weight

    def _numpy_steps(self, t, y, batch_size):
        net = self.network
        preds, case_list, loss, fired, events = [], [], [], [], []
        # A diverging step puts back the weights and the rule's own state (Adam's
        # moments) the call started from, as the Rust engine does.
        weights = [getattr(layer, "_weight", None) for layer in net.layers]
        state = {k: list(v) if isinstance(v, list) else v for k, v in vars(self).items()}
        for step, lo in enumerate(range(0, len(t), batch_size)):
            xb, yb = t[lo : lo + batch_size], y[lo : lo + batch_size]
            try:
                value, (outs, v_end) = self._numpy_update(xb, yb)
            except _NonFinite as err:
                for layer, w in zip(net.layers, weights):
                    if w is not None:
                        layer.weight = w
                vars(self).update(state)
                i, w = err.args
                bad = int(np.argmax(~np.isfinite(w.reshape(-1))))
                raise DivergenceError(
                    f"layer {i} ({type(net.layers[i]).__name__}): step {step} of this call "
                    f"would make weight {w.reshape(-1)[bad]} at index {bad} non-finite "
                    "(learning rate or weight decay too large?); the weights are left as "
                    "they were before the call"
                ) from None
            p, c = reference.decide(outs[-1], v_end, net.tmax)
            preds.append(p)
            case_list.append(c)
            loss.append(value)
            fired.append([(o < net.tmax).reshape(len(o), -1).mean() for o in outs])
            events.append(reference.synaptic_events(net.layers, xb, outs, net.tmax).sum())
        return {
            "predictions": np.concatenate(preds),
            "cases": np.concatenate(case_list),
            "loss": np.array(loss),
            "fired": np.array(fired),
            "events": np.array(events, dtype=np.int64),
        }


class STiDiBP(Rule):
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
    slope : what stands for ``−dt_j/dV_j``: ``"paper"`` (``t_j/θ``) or ``"exact"``
        (``1/V'_j``; ``T`` for ramp neurons) [ours].
    targets : the output errors: ``"relative"`` (the paper's targets, margin
        ``gamma``) or ``"softmax"`` (the displacement that lowers the cross-entropy
        of ``softmax(−t/tau_soft)``) [ours].
    tau_soft : softmax temperature of ``targets="softmax"``, in time units.
    """

    name = "stidi-bp"

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
        slope: str = "paper",
        targets: str = "relative",
        tau_soft: float = 16.0,
    ):
        super().__init__(network, lr)
        n = len(network.spiking_layers)
        self.beta = _per_layer("beta", beta, n, allow_zero=True)
        self.gamma = _positive_float("gamma", gamma)
        self.normalize = bool(normalize)
        self.weight_decay = float(weight_decay)
        if not math.isfinite(self.weight_decay) or self.weight_decay < 0:
            raise ValueError(f"weight_decay must be finite and >= 0, got {weight_decay}")
        self.conv_reduce = _choice("conv_reduce", conv_reduce, ("sum", "mean"))
        self.displacement = _choice("displacement", displacement, ("exact", "causal"))
        self.slope = _choice("slope", slope, ("paper", "exact"))
        self.targets = _choice("targets", targets, ("relative", "softmax"))
        self.tau_soft = _positive_float("tau_soft", tau_soft)

    def config(self) -> dict:
        return {
            "lr": list(self.lr),
            "gamma": self.gamma,
            "beta": list(self.beta),
            "normalize": self.normalize,
            "weight_decay": self.weight_decay,
            "conv_reduce": self.conv_reduce,
            "displacement": self.displacement,
            "slope": self.slope,
            "targets": self.targets,
            "tau_soft": self.tau_soft,
        }

    def _settings(self) -> dict:
        return {"name": self.name, **self.config()}

    def _reference(self, t, y, lr):
        return reference.updates(
            self.network.layers,
            t,
            y,
            self.network.psp,
            self.network.tmax,
            lr,
            self.gamma,
            self.beta,
            self.normalize,
            self.weight_decay,
            self.conv_reduce,
            self.displacement,
            self.network.neuron,
            self.slope,
            self.targets,
            self.tau_soft,
        )

    def _numpy_update(self, t, y):
        deltas, fwd, loss = self._reference(t, y, self.lr)
        for layer, delta in zip(self.network.layers, deltas):
            if delta is not None:
                self._set(layer, layer._weight + delta)
        return loss.mean(), fwd

    def _numpy_gradients(self, t, y):
        ones = [1.0] * len(self.lr)
        deltas, _, loss = self._reference(t, y, ones)
        grads = [None if d is None else -d for d in deltas]
        return loss.mean(), grads


class ExactGradient(Rule):
    """Gradient descent on exact spike-time derivatives (docs/algorithm.md §10).

    At a spike ``V_j(t_j) = θ``, ``dt_j/dw_ji = −ε(t_j − t_i)/V'_j(t_j)`` and
    ``dt_j/dt_i = w_ji ε'(t_j − t_i)/V'_j(t_j)``, chained from the loss of the output
    spike times down to the first layer (max-pooling routes to each window's
    winner; binary layers pass the gradient straight through to their real weights).

    Parameters
    ----------
    network : the network to train (its last layer must be ``Dense``).
    loss : ``"cross_entropy"`` (softmax of ``−t_out/tau_soft``) or ``"stidi"``
        (the relative targets of STiDi-BP, margin ``gamma``, as a squared error).
    optimizer : ``"adam"`` or ``"sgd"``.
    lr : learning rate, one value or one per spiking layer.
    tau_soft : softmax temperature in time units (``"cross_entropy"``).
    gamma : target margin in time units (``"stidi"``).
    min_slope : floor of ``V'`` at a spike, in units of ``θ / tmax`` [ours].
    silent_push : a silent neuron whose loss wants it earlier gets the gradient of a
        spike at ``tmax`` with slope ``θ / tmax``, times this factor [ours]; 0 = off.
    silent_down : such a silent neuron also sends ``silent_down`` times that push to
        the layer below, through ``ε'(tmax − t_i)`` of its causal inputs, as if it
        fired at ``tmax`` [ours]; 0 = off (a spike that did not happen moves nothing).
    weight_decay : L2 decay added to the gradient, ``grad + λ w``.
    sum_hinge : weight ``λ`` of ``max(0, θ − Σ_i w̃_ji)`` per neuron, added to the
        loss, so that every neuron keeps weights that can make it fire [ours]; 0 = off.
    activity : weight of each hidden spiking layer's mean spike time ``t/T`` (silent
        neurons at ``T``) in the loss: it asks every hidden neuron to fire earlier,
        and with ``silent_push`` wakes silent ones [ours]; 0 = off.
    betas, eps : Adam's moment decays and denominator term.
    """

    name = "exact"

    def __init__(
        self,
        network: Network,
        loss: str = "cross_entropy",
        optimizer: str = "adam",
        lr: float | Sequence[float] = 1e-3,
        tau_soft: float = 16.0,
        gamma: float = 3.0,
        min_slope: float = 0.1,
        silent_push: float = 0.0,
        silent_down: float = 0.0,
        weight_decay: float = 0.0,
        sum_hinge: float = 0.0,
        activity: float = 0.0,
        betas: Sequence[float] = (0.9, 0.999),
        eps: float = 1e-8,
    ):
        super().__init__(network, lr)
        self.loss = _choice("loss", loss, ("cross_entropy", "stidi"))
        self.optimizer = _choice("optimizer", optimizer, ("adam", "sgd"))
        self.tau_soft = _positive_float("tau_soft", tau_soft)
        self.gamma = _positive_float("gamma", gamma)
        for name, v in (
            ("min_slope", min_slope),
            ("silent_push", silent_push),
            ("silent_down", silent_down),
            ("weight_decay", weight_decay),
            ("sum_hinge", sum_hinge),
            ("activity", activity),
        ):
            if not (math.isfinite(float(v)) and float(v) >= 0):
                raise ValueError(f"{name} must be finite and >= 0, got {v}")
        self.min_slope = float(min_slope)
        self.silent_push = float(silent_push)
        self.silent_down = float(silent_down)
        self.weight_decay = float(weight_decay)
        self.sum_hinge = float(sum_hinge)
        self.activity = float(activity)
        b1, b2 = (float(b) for b in betas)
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ValueError(f"betas must lie in [0, 1), got {tuple(betas)}")
        self.betas = (b1, b2)
        self.eps = _positive_float("eps", eps)
        # Adam's moments, one pair per spiking layer, and its step count.
        self.adam_step = 0
        self._m = [np.zeros_like(layer._weight) for layer in network.spiking_layers]
        self._v = [np.zeros_like(layer._weight) for layer in network.spiking_layers]

    def config(self) -> dict:
        return {
            "loss": self.loss,
            "optimizer": self.optimizer,
            "lr": list(self.lr),
            "tau_soft": self.tau_soft,
            "gamma": self.gamma,
            "min_slope": self.min_slope,
            "silent_push": self.silent_push,
            "silent_down": self.silent_down,
            "weight_decay": self.weight_decay,
            "sum_hinge": self.sum_hinge,
            "activity": self.activity,
            "betas": list(self.betas),
            "eps": self.eps,
        }

    def _settings(self) -> dict:
        return {"name": self.name, **self.config(), "adam_step": self.adam_step}

    def _moments(self):
        it = iter(zip(self._m, self._v))
        pairs = [None if layer.kind == "maxpool2d" else next(it) for layer in self.network.layers]
        return [p and p[0] for p in pairs], [p and p[1] for p in pairs]

    def _after_rust(self, out) -> None:
        self.adam_step = int(out["adam_step"])

    def _numpy_gradients(self, t, y):
        net = self.network
        loss, grads, fwd = reference.exact_gradients(
            net.layers,
            t,
            y,
            net.psp,
            net.tmax,
            self.loss,
            self.gamma,
            self.tau_soft,
            self.min_slope,
            self.silent_push,
            self.activity,
            self.silent_down,
            net.neuron,
        )
        penalty, hinge = reference.sum_hinge(net.layers, self.sum_hinge)
        grads = [
            None if g is None else g + self.weight_decay * layer._weight + h
            for g, h, layer in zip(grads, hinge, net.layers)
        ]
        loss += penalty
        self._fwd = fwd
        return loss, grads

    def _numpy_update(self, t, y):
        loss, grads = self._numpy_gradients(t, y)
        self.adam_step += 1
        b1, b2 = self.betas
        grads = [g for g in grads if g is not None]
        for s, (layer, g) in enumerate(zip(self.network.spiking_layers, grads)):
            if self.lr[s] == 0.0:
                continue
            if self.optimizer == "sgd":
                step = g
            else:
                self._m[s] = b1 * self._m[s] + (1 - b1) * g
                self._v[s] = b2 * self._v[s] + (1 - b2) * g * g
                m_hat = self._m[s] / (1 - b1**self.adam_step)
                v_hat = self._v[s] / (1 - b2**self.adam_step)
                step = m_hat / (np.sqrt(v_hat) + self.eps)
            self._set(layer, layer._weight - self.lr[s] * step)
        return loss, self._fwd


RULES = {"stidi-bp": STiDiBP, "exact": ExactGradient}


def make_rule(name: str, network: Network, **settings) -> Rule:
    """The rule called ``name`` (``"stidi-bp"`` or ``"exact"``) for ``network``."""
    if name not in RULES:
        raise ValueError(f"unknown rule {name!r}: choose one of {tuple(RULES)}")
    known = set(inspect.signature(RULES[name]).parameters) - {"network"}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ValueError(
            f"rule {name!r} has no setting {', '.join(map(repr, unknown))}; "
            f"its settings are {', '.join(sorted(known))}"
        )
    return RULES[name](network, **settings)


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

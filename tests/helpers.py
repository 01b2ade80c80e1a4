"""Shared test utilities: direct (non-swept) evaluation of the neuron model."""

from __future__ import annotations

import numpy as np
import stidi_rs as sr
from stidi_rs import reference as R


def breakpoints(t_in: np.ndarray, tau_rise: float, tau_fall: float, tmax: float) -> np.ndarray:
    """All PSP breakpoints of one row of inputs inside [0, tmax], plus tmax."""
    active = t_in[t_in < tmax]
    pts = [active, active + tau_rise, active + tau_rise + tau_fall, [tmax]]
    b = np.concatenate([np.asarray(p, dtype=float) for p in pts])
    return np.unique(b[np.isfinite(b) & (b <= tmax)])


def v_direct(t_in_row, w, t, tau_rise, tau_fall, tmax):
    """V_j(t) for every neuron, summing eps directly (inputs at tmax never act)."""
    t_in_row = np.asarray(t_in_row, dtype=float)
    k = R.eps(t - t_in_row, tau_rise, tau_fall) * (t_in_row < tmax)
    return w @ k


def tangent_margin(t_in: np.ndarray, w: np.ndarray, threshold, tau_rise, tau_fall, tmax):
    """Smallest relative distance of V to threshold at any breakpoint, over all rows.

    A near-zero margin marks inputs on which two correct engines may disagree about
    *whether* a neuron fires (V touches theta within rounding).
    """
    scale = 1.0 + np.abs(w).sum(axis=1).max() + threshold
    best = np.inf
    for row in np.atleast_2d(t_in):
        b = breakpoints(row, tau_rise, tau_fall, tmax)
        v = np.stack([v_direct(row, w, x, tau_rise, tau_fall, tmax) for x in b])
        best = min(best, float(np.abs(v - threshold).min()) / scale)
    return best


def toeplitz(w: np.ndarray, h: int, width: int) -> np.ndarray:
    """Dense matrix of a stride-1 valid Conv2d over a (C, h, width) input, C order."""
    c_out, c_in, k, _ = w.shape
    ho, wo = h - k + 1, width - k + 1
    big = np.zeros((c_out, ho, wo, c_in, h, width))
    for y in range(ho):
        for x in range(wo):
            big[:, y, x, :, y : y + k, x : x + k] = w
    return big.reshape(c_out * ho * wo, c_in * h * width)


def tiny(binary=False, seed=0):
    """A conv-pool-dense net on 8x8 images: the smallest trainer-level case."""
    layers = [
        sr.Conv2d(1, 3, 3, 2.0, binary=binary),
        sr.MaxPool2d(2),
        sr.Dense(3 * 3 * 3, 4, 2.0, binary=binary),
    ]
    return sr.Network(layers, (1, 8, 8), seed=seed)


def fake_images(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 8, 8)).astype(np.uint8), rng.integers(0, 4, n)


def random_inputs(seed: int, shape, tmax: float, batch: int = 4, classes: int = 3):
    """Spike times uniform in [0, tmax), 30 % silent (tmax), and random labels."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, tmax, size=(batch, *shape))
    x[rng.random(x.shape) < 0.3] = tmax
    return x, rng.integers(0, classes, batch)


def pool_winners(net, x) -> list:
    """The winner index of every max-pooling window, per pooling layer."""
    times = net.forward(x)
    return [
        R.maxpool2d_forward(times[i - 1], layer.kernel_size)[1]
        for i, layer in enumerate(net.layers)
        if layer.kind == "maxpool2d"
    ]

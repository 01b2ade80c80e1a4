"""Readable NumPy reference of the maths in ``docs/algorithm.md``.

This module is the oracle the Rust engine is tested against, so it favours
clarity over speed: float64 throughout, vectorised over the batch, one function
per equation of the contract. Section numbers (§) refer to ``docs/algorithm.md``.

Spike times are arrays whose value ``tmax`` means "no spike". Every spiking
layer is written in one "rows" form: ``t_in`` of shape ``(R, n)`` (one row per
neuron group that shares inputs: a sample for Dense, a sample and position for
Conv2d) against weights ``(m, n)``, giving ``(R, m)``.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "eps",
    "deps",
    "encode",
    "spike_times",
    "potential",
    "unfold",
    "fold",
    "dense_forward",
    "conv2d_forward",
    "ramp_drive",
    "ramp_times",
    "maxpool2d_forward",
    "maxpool2d_route",
    "decide",
    "output_targets",
    "normalise",
    "layer_update",
    "displacement",
    "slope_factor",
    "ramp_pins",
    "forward",
    "synaptic_events",
    "updates",
    "output_loss",
    "output_errors",
    "exact_factor",
    "ramp_factor",
    "exact_gradients",
    "sum_hinge",
]

# Rows of (events x outputs) floats handled at once by spike_times; bounds memory.
_CHUNK_ELEMENTS = 1 << 23


# §1 ---------------------------------------------------------------------------
def encode(
    images: np.ndarray, tmax: float = 256.0, max_value: float = 255.0, window: float = 1.0
) -> np.ndarray:
    """Latency code: intensity ``x > 0`` fires at ``window * tmax * (1 - x / max_value)``,
    ``x = 0`` never (``tmax``)."""
    x = np.asarray(images, dtype=np.float64)
    return np.where(x > 0, window * tmax * (1.0 - x / max_value), tmax)


# §2 ---------------------------------------------------------------------------
def eps(s: np.ndarray, tau_rise: float, tau_fall: float) -> np.ndarray:
    """Piecewise-linear PSP: rise over ``tau_rise`` to 1, fall over ``tau_fall`` to 0."""
    s = np.asarray(s, dtype=np.float64)
    rise = s / tau_rise
    fall = (tau_rise + tau_fall - s) / tau_fall if np.isfinite(tau_fall) else np.ones_like(s)
    return np.where(s <= 0, 0.0, np.where(s <= tau_rise, rise, np.maximum(fall, 0.0)))


def deps(s: np.ndarray, tau_rise: float, tau_fall: float) -> np.ndarray:
    """Slope of ``eps``, taking the left segment's value at a breakpoint."""
    s = np.asarray(s, dtype=np.float64)
    fall = -1.0 / tau_fall  # -0.0 when tau_fall is infinite
    out = np.where((s > 0) & (s <= tau_rise), 1.0 / tau_rise, 0.0)
    return np.where((s > tau_rise) & (s <= tau_rise + tau_fall), fall, out)


# §3 ---------------------------------------------------------------------------
def _breakpoints(t_in: np.ndarray, w: np.ndarray, tau_rise: float, tau_fall: float):
    """Breakpoint times ``(R, E)`` and the slope change each one brings ``(E, m)``."""
    times = [t_in, t_in + tau_rise]
    slopes = [w.T / tau_rise, -w.T / tau_rise - w.T / tau_fall]
    if np.isfinite(tau_fall):
        times.append(t_in + tau_rise + tau_fall)
        slopes.append(w.T / tau_fall)
    return np.concatenate(times, axis=1), np.concatenate(slopes, axis=0)


def spike_times(
    t_in: np.ndarray,
    w: np.ndarray,
    threshold: float,
    tau_rise: float,
    tau_fall: float,
    tmax: float,
) -> np.ndarray:
    """Exact first threshold crossing of ``V_j(t) = sum_i w_ji eps(t - t_i)``.

    ``t_in`` is ``(R, n)``, ``w`` is ``(m, n)``; returns ``(R, m)``.
    """
    t_in = np.asarray(t_in, dtype=np.float64)
    rows, _ = t_in.shape
    m = w.shape[0]
    b_all, d_slope = _breakpoints(t_in, w, tau_rise, tau_fall)
    # Inputs at tmax (and breakpoints past it) only act at tmax, where nothing counts.
    b_all = np.minimum(b_all, tmax)
    out = np.empty((rows, m))
    step = max(1, _CHUNK_ELEMENTS // max(1, b_all.shape[1] * m))
    for lo in range(0, rows, step):
        b = b_all[lo : lo + step]
        order = np.argsort(b, axis=1, kind="stable")
        b = np.take_along_axis(b, order, axis=1)  # (r, E) sorted breakpoints
        slope = np.cumsum(d_slope[order], axis=1)  # (r, E, m): slope after each breakpoint
        seg = np.diff(b, axis=1, append=tmax)  # segment k runs from b_k to b_{k+1} (or tmax)
        v_end = np.cumsum(slope * seg[:, :, None], axis=1)  # V at the end of each segment
        v_start = v_end - slope * seg[:, :, None]
        crossed = v_end >= threshold
        fires = crossed.any(axis=1)  # (r, m)
        k = np.argmax(crossed, axis=1)  # first segment that reaches threshold
        v0 = np.take_along_axis(v_start, k[:, None, :], axis=1)[:, 0, :]
        s0 = np.take_along_axis(slope, k[:, None, :], axis=1)[:, 0, :]
        b0 = np.take_along_axis(b, k, axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = b0 + (threshold - v0) / s0
        out[lo : lo + step] = np.where(fires, np.minimum(t, tmax), tmax)
    return out


def potential(t_in: np.ndarray, w: np.ndarray, t: float, tau_rise: float, tau_fall: float):
    """``V_j(t)`` for every row and neuron: ``(R, n), (m, n) -> (R, m)``."""
    return eps(t - np.asarray(t_in, dtype=np.float64), tau_rise, tau_fall) @ w.T


# §3 layers --------------------------------------------------------------------
def unfold(x: np.ndarray, k: int) -> np.ndarray:
    """Receptive fields: ``(B, C, H, W) -> (B, Ho, Wo, C*k*k)`` in weight order."""
    win = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(2, 3))  # B,C,Ho,Wo,k,k
    b, c, ho, wo = win.shape[:4]
    return win.transpose(0, 2, 3, 1, 4, 5).reshape(b, ho, wo, c * k * k)


def fold(patches: np.ndarray, channels: int, k: int) -> np.ndarray:
    """Adjoint of ``unfold``: sum ``(B, Ho, Wo, C*k*k)`` back onto ``(B, C, H, W)``."""
    b, ho, wo, _ = patches.shape
    p = patches.reshape(b, ho, wo, channels, k, k)
    out = np.zeros((b, channels, ho + k - 1, wo + k - 1))
    for ky in range(k):
        for kx in range(k):
            out[:, :, ky : ky + ho, kx : kx + wo] += p[:, :, :, :, ky, kx].transpose(0, 3, 1, 2)
    return out


def dense_forward(t_in, w, threshold, psp, tmax):
    """Dense layer: ``(B, n) -> (B, m)``."""
    return spike_times(t_in, w, threshold, psp.tau_rise, psp.tau_fall, tmax)


def _conv_rows(t_in: np.ndarray, w: np.ndarray):
    c_out, _, k, _ = w.shape
    patches = unfold(t_in, k)
    b, ho, wo, n = patches.shape
    return patches.reshape(-1, n), w.reshape(c_out, n), (b, ho, wo, c_out)


def conv2d_forward(t_in, w, threshold, psp, tmax):
    """Conv2d, stride 1, no padding: ``(B, C, H, W) -> (B, C_out, Ho, Wo)``."""
    rows, w2, (b, ho, wo, c_out) = _conv_rows(t_in, w)
    t = spike_times(rows, w2, threshold, psp.tau_rise, psp.tau_fall, tmax)
    return t.reshape(b, ho, wo, c_out).transpose(0, 3, 1, 2)


# §3a ramp neurons ---------------------------------------------------------------
def ramp_drive(t_in: np.ndarray, w: np.ndarray, tmax: float) -> np.ndarray:
    """``u_j = Σ_i w_ji (T − t_i)`` over the inputs that spiked: ``(R, n), (m, n) -> (R, m)``."""
    return (tmax - np.asarray(t_in, dtype=np.float64)) @ w.T


def ramp_times(u: np.ndarray, threshold: float, tmax: float) -> np.ndarray:
    """A ramp neuron fires at ``θ·T − u`` of its window, at 0 if that is negative,
    never (``T``) if it is ``≥ T``."""
    t = threshold * tmax - u
    return np.where(t >= tmax, tmax, np.maximum(t, 0.0))


def _ramp_layer(t_in, w, threshold, tmax, conv: bool):
    if conv:
        rows, w2, (b, ho, wo, c_out) = _conv_rows(t_in, w)
        u = ramp_drive(rows, w2, tmax).reshape(b, ho, wo, c_out).transpose(0, 3, 1, 2)
        return ramp_times(u, threshold, tmax), u
    u = ramp_drive(t_in, w, tmax)
    return ramp_times(u, threshold, tmax), u


def _windows(x: np.ndarray, p: int) -> np.ndarray:
    b, c, h, w = x.shape
    hp, wp = h // p, w // p
    x = x[:, :, : hp * p, : wp * p].reshape(b, c, hp, p, wp, p)
    return x.transpose(0, 1, 2, 4, 3, 5).reshape(b, c, hp, wp, p * p)


def maxpool2d_forward(t_in: np.ndarray, p: int):
    """Earliest spike of each ``p x p`` window, and the window index of the winner."""
    win = _windows(t_in, p)
    return win.min(axis=-1), win.argmin(axis=-1)  # argmin: first minimum, row-major


def maxpool2d_route(e_out: np.ndarray, winner: np.ndarray, in_shape, k: int) -> np.ndarray:
    """Send each pooled neuron's error to its ``k x k`` window's winner (others get 0)."""
    b, c, hp, wp = e_out.shape
    h, w = in_shape[-2:]
    e_win = np.zeros((b, c, hp, wp, k * k))
    np.put_along_axis(e_win, winner[..., None], e_out[..., None], axis=-1)
    e_in = np.zeros((b, c, h, w))
    e_in[:, :, : hp * k, : wp * k] = (
        e_win.reshape(b, c, hp, wp, k, k).transpose(0, 1, 2, 4, 3, 5).reshape(b, c, hp * k, wp * k)
    )
    return e_in


# §4 ---------------------------------------------------------------------------
def decide(t_out: np.ndarray, v_end: np.ndarray, tmax: float):
    """First spike wins; ties (and no spike) go to the largest ``V(T)``, then lowest index.

    Returns ``(predictions, cases)`` with cases 0 = unique first spike, 1 = tie,
    2 = no output spike.
    """
    t_min = t_out.min(axis=1, keepdims=True)
    tied = t_out == t_min
    # argmax returns the lowest index among equal maxima.
    pred = np.argmax(np.where(tied, v_end, -np.inf), axis=1)
    cases = np.where(t_min[:, 0] >= tmax, 2, np.where(tied.sum(axis=1) == 1, 0, 1))
    return pred, cases


# §5 ---------------------------------------------------------------------------
def output_targets(t_out: np.ndarray, labels: np.ndarray, gamma: float, tmax: float):
    """Relative targets of the output layer (S4NN family)."""
    rows = np.arange(len(labels))
    t_min = t_out.min(axis=1, keepdims=True)
    target = np.where(t_out - t_min < gamma, np.minimum(t_min + gamma, tmax), t_out)
    target[rows, labels] = t_min[:, 0]
    silent = t_min[:, 0] >= tmax
    target[silent] = tmax
    target[rows[silent], labels[silent]] = tmax - gamma
    return target


def normalise(e: np.ndarray) -> np.ndarray:
    """Divide each sample's errors by their L2 norm (a zero vector stays zero)."""
    flat = e.reshape(len(e), -1)
    norm = np.linalg.norm(flat, axis=1, keepdims=True)
    return (flat / np.where(norm > 0, norm, 1.0)).reshape(e.shape)


def layer_update(t_in, t_out, e, threshold, psp, tmax, t_kernel=None, dtdv=None):
    """``sum_rows -e_j (t_j/theta) eps(t_j - t_i) / T`` for rows ``(R, n), (R, m), (R, m)``.

    Returns ``(m, n)`` before the learning rate, summed over rows.
    The causal mask ``t_i < t_j`` is built into ``eps`` (zero for ``s <= 0``).
    ``t_kernel`` (default ``t_out``) is where the kernels are evaluated: ``T`` for
    ramp neurons (§3a). ``dtdv`` replaces the paper's ``t_j/θ`` (see :func:`slope_factor`).
    """
    factor = e * (t_out / threshold if dtdv is None else dtdv)  # (R, m)
    tk = t_out if t_kernel is None else t_kernel
    k = eps(tk[:, :, None] - t_in[:, None, :], psp.tau_rise, psp.tau_fall)  # (R, m, n)
    return -np.einsum("rm,rmn->mn", factor, k) / tmax


def displacement(
    t_in, t_out, e, w_fwd, threshold, psp, beta, mode="exact", t_kernel=None, dtdv=None
):
    """``d_i = beta sum_j e_j (t_j/theta) w_ji eps'(t_j - t_i)`` for rows: ``(R, n)``.

    ``mode="causal"`` puts ``1/tau_rise`` in place of ``eps'`` for every earlier input.
    ``t_kernel`` and ``dtdv`` as in :func:`layer_update`.
    """
    factor = e * (t_out / threshold if dtdv is None else dtdv)
    tk = t_out if t_kernel is None else t_kernel
    s = tk[:, :, None] - t_in[:, None, :]
    if mode == "causal":
        k = np.where(s > 0, 1.0 / psp.tau_rise, 0.0)
    else:
        k = deps(s, psp.tau_rise, psp.tau_fall)
    return beta * np.einsum("rm,mn,rmn->rn", factor, w_fwd, k)


def slope_factor(t_in, t_out, w_fwd, threshold, psp, tmax, neuron="psp", slope="paper"):
    """What STiDi-BP puts for ``−dt_j/dV_j``: the paper's ``t_j/θ``, or with
    ``slope="exact"`` ``1/V'_j`` (floored at ``0.1 θ/T``; ``T/θ`` for a silent
    neuron), which for ramp neurons is ``T`` (see :func:`ramp_pins` for the
    neurons at either end of their window) [ours]."""
    if slope == "paper":
        return t_out / threshold
    if neuron == "ramp":
        return np.full_like(t_out, tmax)  # the caller zeroes pushes into a pin
    s = t_out[:, :, None] - t_in[:, None, :]
    v1 = np.einsum("rmn,mn->rm", deps(s, psp.tau_rise, psp.tau_fall), w_fwd)
    v1 = np.maximum(v1, 0.1 * threshold / tmax)
    return np.where(t_out < tmax, 1.0 / v1, tmax / threshold)


def ramp_pins(t_out, e, tmax):
    """Ramp neurons that ``slope="exact"`` leaves alone: pinned at the window start
    with an error asking for earlier, or silent with one asking for later."""
    return ((t_out <= 0) & (e < 0)) | ((t_out >= tmax) & (e > 0))


# Network level ----------------------------------------------------------------
def _forward_weight(layer) -> np.ndarray:
    w = np.asarray(layer.weight, dtype=np.float64)
    return np.where(w >= 0, layer.scale, -layer.scale) if layer.binary else w


def layer_input(layers, li: int, t_in: np.ndarray, times) -> np.ndarray:
    """What layer ``li`` reads: the layer below's spikes (or the input), and for a
    Dense with ``skip`` those of layer ``skip`` too, each flattened, concatenated."""
    x = times[li - 1] if li else t_in
    skip = getattr(layers[li], "skip", None)
    if skip is None:
        return x
    return np.concatenate([x.reshape(len(x), -1), times[skip].reshape(len(x), -1)], axis=1)


def forward(layers, t_in: np.ndarray, psp, tmax: float, neuron: str = "psp"):
    """Spike times of every layer, and ``V(T)`` of the last layer (if it is Dense).
    With ``neuron="ramp"`` times are relative to each layer's window (§3a)."""
    times = []
    u = None
    for li, layer in enumerate(layers):
        x = layer_input(layers, li, t_in, times)
        if layer.kind == "maxpool2d":
            x = maxpool2d_forward(x, layer.kernel_size)[0]
        else:
            w = _forward_weight(layer)
            if neuron == "ramp":
                conv = layer.kind == "conv2d"
                x_in = x if conv else x.reshape(len(x), -1)
                x, u = _ramp_layer(x_in, w, layer.threshold, tmax, conv)
            elif layer.kind == "conv2d":
                x = conv2d_forward(x, w, layer.threshold, psp, tmax)
            else:
                x = dense_forward(x.reshape(len(x), -1), w, layer.threshold, psp, tmax)
        times.append(x)
    last = layers[-1]
    v_end = None
    if last.kind == "dense" and neuron == "ramp":
        v_end = (u + tmax) / tmax  # V at the end of the output's window
    elif last.kind == "dense":
        prev = layer_input(layers, len(layers) - 1, t_in, times)
        v_end = potential(
            prev.reshape(len(prev), -1), _forward_weight(last), tmax, psp.tau_rise, psp.tau_fall
        )
    return times, v_end


def synaptic_events(layers, t_in: np.ndarray, times, tmax: float) -> np.ndarray:
    """Synaptic events of each sample's forward pass (``times`` from :func:`forward`):
    over every Conv2d and Dense layer, the synapses of its inputs that spike
    (``t < tmax``). A Conv2d input's synapses are its output neurons whose
    receptive field holds it."""
    total = np.zeros(len(t_in), dtype=np.int64)
    for li, layer in enumerate(layers):
        if layer.kind == "maxpool2d":
            continue
        x = layer_input(layers, li, t_in, times)
        fires = np.asarray(x) < tmax
        if layer.kind == "dense":
            total += fires.reshape(len(x), -1).sum(axis=1) * layer.out_features
        else:
            k = layer.kernel_size
            _, _, h, w = x.shape
            # How many output positions read each input: all-ones patches folded back.
            reach = fold(np.ones((1, h - k + 1, w - k + 1, k * k)), 1, k)[0, 0].astype(np.int64)
            total += (fires * reach).reshape(len(x), -1).sum(axis=1) * layer.out_channels
    return total


def updates(
    layers,
    t_in,
    labels,
    psp,
    tmax,
    lr,
    gamma,
    beta,
    normalize,
    weight_decay,
    conv_reduce="sum",
    displacement_mode="exact",
    neuron="psp",
    slope="paper",
    targets="relative",
    tau_soft=16.0,
):
    """One STiDi-BP step: the weight change of every layer (``None`` for pooling).

    ``lr`` and ``beta`` hold one value per spiking layer. Also returns the forward
    pass ``(times, v_end)`` the step was computed from and the per-sample output
    loss (:func:`output_errors`).
    """
    times, v_end = forward(layers, t_in, psp, tmax, neuron)
    batch = len(t_in)
    spiking = [i for i, layer in enumerate(layers) if layer.kind != "maxpool2d"]
    deltas: list = [None] * len(layers)
    loss, e_out = output_errors(times[-1], labels, gamma, tmax, targets, tau_soft)
    e = e_out
    skipped: dict = {}  # layer -> the errors a skip sends it, added to the chain's
    for li in reversed(range(len(layers))):
        layer, x, y = layers[li], layer_input(layers, li, t_in, times), times[li]
        if li in skipped:
            e = e + skipped.pop(li).reshape(e.shape)
        if layer.kind == "maxpool2d":
            e = maxpool2d_route(
                e, maxpool2d_forward(x, layer.kernel_size)[1], x.shape, layer.kernel_size
            )
            continue
        s = spiking.index(li)
        e_hat = normalise(e) if normalize else e
        w = np.asarray(layer.weight, dtype=np.float64)
        if layer.kind == "conv2d":
            c_out, c_in, k, _ = w.shape
            rows_in = unfold(x, k).reshape(-1, c_in * k * k)
            rows_out = y.transpose(0, 2, 3, 1).reshape(-1, c_out)
            rows_e = e_hat.transpose(0, 2, 3, 1).reshape(-1, c_out)
        else:
            rows_in, rows_out, rows_e = x.reshape(batch, -1), y, e_hat
        rows_k = np.full_like(rows_out, tmax) if neuron == "ramp" else rows_out
        w_fwd = _forward_weight(layer).reshape(len(w), -1)
        dtdv = slope_factor(rows_in, rows_out, w_fwd, layer.threshold, psp, tmax, neuron, slope)
        if neuron == "ramp" and slope == "exact":
            dtdv = np.where(ramp_pins(rows_out, rows_e, tmax), 0.0, dtdv)
        grad = layer_update(rows_in, rows_out, rows_e, layer.threshold, psp, tmax, rows_k, dtdv)
        if layer.kind == "conv2d":
            if conv_reduce == "mean":
                grad /= y.shape[2] * y.shape[3]
            grad = grad.reshape(w.shape)
        deltas[li] = lr[s] * (grad / batch - weight_decay * w)
        if s == 0:
            break
        d = displacement(
            rows_in, rows_out, rows_e, w_fwd, layer.threshold, psp, beta[s], displacement_mode,
            rows_k, dtdv,
        )  # fmt: skip
        if layer.kind == "conv2d":
            ho, wo = y.shape[2:]
            d = fold(d.reshape(batch, ho, wo, -1), x.shape[1], k)
        d = d.reshape(x.shape)
        e = (np.clip(x + tmax * d, 0.0, tmax) - x) / tmax
        if getattr(layer, "skip", None) is not None:
            below = times[li - 1]
            n = below[0].size
            skipped[layer.skip] = e[:, n:]
            e = e[:, :n].reshape(below.shape)
    return deltas, (times, v_end), loss


def output_errors(t_out, labels, gamma, tmax, targets="relative", tau_soft=16.0):
    """STiDi-BP's output errors and per-sample loss. ``"relative"`` (the paper):
    ``e = (target − t)/T`` with the relative targets, loss ``½ Σ e²``.
    ``"softmax"`` [ours]: ``e_k = τ_soft (p_k − [k = label]) / T`` with ``p =
    softmax(−t/τ_soft)``, loss the cross-entropy: the displacement that lowers it."""
    if targets == "softmax":
        value, dt = output_loss(t_out, labels, tmax, "cross_entropy", tau_soft=tau_soft)
        return value, -(tau_soft**2) * dt / tmax
    e = (output_targets(t_out, labels, gamma, tmax) - t_out) / tmax
    return 0.5 * (e**2).sum(axis=1), e


# §10 Exact spike-time gradients ------------------------------------------------
def output_loss(t_out, labels, tmax, loss="cross_entropy", gamma=3.0, tau_soft=16.0):
    """Per-sample loss of the output spike times and its derivative ``dL/dt``.

    ``"stidi"``: ``½ Σ_k ((target_k − t_k)/T)²`` with the relative targets of §5,
    differentiated through the targets too (they move with the earliest spike).
    ``"cross_entropy"``: ``−log softmax(−t/τ_soft)[label]``.
    """
    rows = np.arange(len(labels))
    if loss == "cross_entropy":
        z = -t_out / tau_soft
        z = z - z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        value = -np.log(p[rows, labels])
        onehot = np.zeros_like(p)
        onehot[rows, labels] = 1.0
        return value, -(p - onehot) / tau_soft
    target = output_targets(t_out, labels, gamma, tmax)
    r = (target - t_out) / tmax
    value = 0.5 * (r**2).sum(axis=1)
    first = np.argmin(t_out, axis=1)  # the earliest spike, lowest index among ties
    t_min = t_out[rows, first]
    # Targets that are t_min (the label) or t_min + γ (a rival within γ, below tmax).
    moving = (t_out - t_min[:, None] < gamma) & (t_min[:, None] + gamma < tmax)
    moving[rows, labels] = True
    moving[t_min >= tmax] = False
    dt = -r / tmax
    dt[rows, first] += (r * moving).sum(axis=1) / tmax
    return value, dt


def exact_factor(
    t_in, t_out, delta, w_fwd, threshold, psp, tmax, min_slope, silent_push, silent_down=0.0
):
    """Per neuron ``a_j = (dL/dt_j) / V'_j(t_j)`` for rows ``(R, n), (R, m)``.

    ``V'`` is floored at ``min_slope · θ / T`` [ours]. A silent neuron whose loss
    wants it earlier (``dL/dt_j > 0``: descent lowers ``t_j``) gets
    ``push = silent_push · (dL/dt_j) · T/θ``, as if it fired at ``T`` on a ramp that
    crosses θ over the window [ours]; others get 0.
    Returns ``(a, a_prop)``: ``a_prop``, what the layer below hears, is ``a`` for
    neurons that fired and ``silent_down · push`` for silent ones [ours] (0 by
    default: a spike that did not happen has no input times to move). Silent
    neurons' times are ``T``, so the caller's ``ε'(t_j − t_i)`` is taken at
    ``T − t_i``.
    """
    fired = t_out < tmax
    s = t_out[:, :, None] - t_in[:, None, :]
    slope = np.einsum("rmn,mn->rm", deps(s, psp.tau_rise, psp.tau_fall), w_fwd)
    slope = np.maximum(slope, min_slope * threshold / tmax)
    push = np.where(delta > 0, silent_push * delta * tmax / threshold, 0.0)
    safe = np.where(fired, slope, 1.0)  # silent neurons' slope may be 0 with no floor
    a = np.where(fired, delta / safe, push)
    return a, np.where(fired, a, silent_down * push)


def ramp_factor(t_out, delta, tmax, silent_push, silent_down=0.0):
    """``a_j`` and ``a_prop`` of :func:`exact_factor` for ramp neurons (§3a, §10):
    ``V' = 1/T``, so ``a = (dL/dt_j)·T`` inside the window. A neuron pinned at the
    window start (``t_j = 0``) does not move with its weights; like a silent one it
    gets ``silent_push · (dL/dt_j) · T`` when the loss pushes it out of the pin
    (later for a pinned one, earlier for a silent one) and passes ``silent_down``
    times that down [ours]."""
    inside = (t_out > 0) & (t_out < tmax)
    pinned = ((t_out >= tmax) & (delta > 0)) | ((t_out <= 0) & (delta < 0))
    push = np.where(pinned, silent_push * delta * tmax, 0.0)
    a = np.where(inside, delta * tmax, push)
    return a, np.where(inside, a, silent_down * push)


def exact_gradients(
    layers,
    t_in,
    labels,
    psp,
    tmax,
    loss="cross_entropy",
    gamma=3.0,
    tau_soft=16.0,
    min_slope=0.1,
    silent_push=0.0,
    activity=0.0,
    silent_down=0.0,
    neuron="psp",
):
    """Batch-mean loss and ``dL/dw`` of every layer (``None`` for pooling).

    At a spike ``V_j(t_j) = θ``: ``dt_j/dw_ji = −ε(t_j − t_i)/V'_j`` and
    ``dt_j/dt_i = w_ji ε'(t_j − t_i)/V'_j``, chained from the output loss to the
    first layer through max-pooling winners and skips. Binary layers use their
    signs forward and pass the gradient straight through to the real weights.
    Also returns the forward pass ``(times, v_end)``.
    """
    times, v_end = forward(layers, t_in, psp, tmax, neuron)
    batch = len(t_in)
    value, delta = output_loss(times[-1], labels, tmax, loss, gamma, tau_soft)
    hidden = [i for i, layer in enumerate(layers[:-1]) if layer.kind != "maxpool2d"]
    for i in hidden:  # the activity term: mean hidden spike time, silent ones at T
        value = value + activity * times[i].reshape(batch, -1).mean(axis=1) / tmax
    grads: list = [None] * len(layers)
    skipped: dict = {}
    for li in reversed(range(len(layers))):
        layer, x, y = layers[li], layer_input(layers, li, t_in, times), times[li]
        if li in skipped:
            delta = delta + skipped.pop(li).reshape(delta.shape)
        if layer.kind == "maxpool2d":
            winner = maxpool2d_forward(x, layer.kernel_size)[1]
            delta = maxpool2d_route(delta, winner, x.shape, layer.kernel_size)
            continue
        w = np.asarray(layer.weight, dtype=np.float64)
        w_fwd = _forward_weight(layer).reshape(len(w), -1)
        if li in hidden:
            delta = delta + activity / (tmax * y[0].size)
        if layer.kind == "conv2d":
            c_out, c_in, k, _ = w.shape
            rows_in = unfold(x, k).reshape(-1, c_in * k * k)
            rows_out = y.transpose(0, 2, 3, 1).reshape(-1, c_out)
            rows_d = delta.transpose(0, 2, 3, 1).reshape(-1, c_out)
        else:
            rows_in, rows_out, rows_d = x.reshape(batch, -1), y, delta
        if neuron == "ramp":
            a, a_prop = ramp_factor(rows_out, rows_d, tmax, silent_push, silent_down)
            rows_k = np.full_like(rows_out, tmax)
        else:
            a, a_prop = exact_factor(
                rows_in, rows_out, rows_d, w_fwd, layer.threshold, psp, tmax, min_slope,
                silent_push, silent_down,
            )  # fmt: skip
            rows_k = rows_out
        k_eps = eps(rows_k[:, :, None] - rows_in[:, None, :], psp.tau_rise, psp.tau_fall)
        grads[li] = (-np.einsum("rm,rmn->mn", a, k_eps) / batch).reshape(w.shape)
        s = rows_k[:, :, None] - rows_in[:, None, :]
        d = np.einsum("rm,mn,rmn->rn", a_prop, w_fwd, deps(s, psp.tau_rise, psp.tau_fall))
        if layer.kind == "conv2d":
            ho, wo = y.shape[2:]
            d = fold(d.reshape(batch, ho, wo, -1), x.shape[1], k)
        delta = d.reshape(x.shape)
        if getattr(layer, "skip", None) is not None:
            below = times[li - 1]
            n = below[0].size
            skipped[layer.skip] = delta[:, n:]
            delta = delta[:, :n].reshape(below.shape)
    return float(value.mean()), grads, (times, v_end)


def sum_hinge(layers, lam):
    """``λ Σ_j max(0, θ − Σ_i w̃_ji)`` over every spiking layer's neurons (a Conv2d's
    channels), and its gradient per layer (``None`` for pooling): a neuron whose
    forward weights sum below θ cannot fire even when all its inputs do."""
    value, grads = 0.0, []
    for layer in layers:
        if layer.kind == "maxpool2d":
            grads.append(None)
            continue
        w = _forward_weight(layer).reshape(len(layer.weight), -1)
        gap = layer.threshold - w.sum(axis=1)
        value += lam * np.maximum(gap, 0.0).sum()
        g = np.where(gap > 0, -lam, 0.0)[:, None] * np.ones_like(w)
        grads.append(g.reshape(layer.weight.shape))
    return value, grads

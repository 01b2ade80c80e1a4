"""Figures of runs and networks: training curves, spike-time maps, output rasters, confusion.

matplotlib is optional (``pip install 'stidi-rs[plot]'``) and is imported only when a
function here is called. Figures are drawn with ``matplotlib.figure.Figure`` on an Agg
canvas, without pyplot, so nothing here touches global state or needs a display.
Every function returns the ``Figure``; with ``path`` it also writes a PNG there.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

__all__ = [
    "read_metrics",
    "training_curves",
    "spike_time_maps",
    "output_raster",
    "confusion_matrix",
]

_MISSING = "plotting needs matplotlib: pip install 'stidi-rs[plot]'"
_CMAP = "viridis_r"  # early spikes bright, late spikes dark
_SILENT = "#d4d4d4"  # neurons that never fire (t == tmax)
_DPI = 120


def _require():
    try:
        import matplotlib  # noqa: F401
    except ImportError as err:
        raise ImportError(_MISSING) from err


def _figure(figsize):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _finish(fig, path):
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=_DPI, format="png", facecolor="white")
    return fig


def _time_cmap():
    import matplotlib

    return matplotlib.colormaps[_CMAP].with_extremes(bad=_SILENT)


# ---------------------------------------------------------------------------- curves
def read_metrics(metrics) -> tuple[list[dict], dict | None]:
    """Epoch records and the final test record of a run.

    ``metrics`` is a run directory, a ``metrics.jsonl`` path or a list of dicts. An
    epoch that appears twice (a run resumed from an earlier checkpoint) keeps its last
    record. The test record is the last ``{"test": ...}`` line, returned as its metrics
    dict plus ``test_size`` and ``after_epoch`` (the last epoch logged before it), or
    ``None``.
    """
    if isinstance(metrics, (str, Path)):
        path = Path(metrics)
        if path.is_dir():
            path = path / "metrics.jsonl"
        with open(path) as f:
            records = [json.loads(line) for line in f if line.strip()]
    else:
        records = list(metrics)
    epochs: dict[int, dict] = {}
    test = None
    last_epoch = None
    for r in records:
        if "test" in r:
            test = {**r["test"], "test_size": r.get("test_size"), "after_epoch": last_epoch}
        elif "epoch" in r:
            last_epoch = int(r["epoch"])
            epochs[last_epoch] = r
    return [epochs[e] for e in sorted(epochs)], test


def training_curves(metrics_path_or_records, path=None):
    """Accuracy (running train, validation) and train loss per epoch; marks the test accuracy.

    ``metrics_path_or_records``: a run directory, its ``metrics.jsonl``, or the list of
    records (``Trainer.history``).
    """
    _require()
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    epochs, test = read_metrics(metrics_path_or_records)
    if not epochs and test is None:
        raise ValueError("no epoch or test records to plot")
    x = [r["epoch"] for r in epochs]
    fig = _figure((10, 4))
    ax_acc, ax_loss = fig.subplots(1, 2)

    train = [100 * r["train_accuracy"] for r in epochs]
    ax_acc.plot(x, train, "o-", color="C0", label="train (running, during epoch)", gid="train")
    val = [(r["epoch"], 100 * r["val"]["accuracy"]) for r in epochs if r.get("val")]
    if val:
        vx, vy = zip(*val)
        ax_acc.plot(vx, vy, "s-", color="C1", label="validation (end of epoch)", gid="val")
    if test is not None:
        acc = 100 * test["accuracy"]
        n = test.get("test_size")
        label = f"test {acc:.2f}%" + (f" (n = {n:,})" if n else "")
        ax_acc.axhline(acc, color="C3", ls="--", lw=1, zorder=1)
        tx = test["after_epoch"] if test["after_epoch"] is not None else (x[-1] if x else 0)
        ax_acc.plot([tx], [acc], "*", color="C3", ms=14, label=label, gid="test", zorder=3)
    readout = [r["epoch"] for r in epochs if r.get("readout_only")]
    if readout:  # epochs that trained only the output layer (--readout-epochs)
        for ax in (ax_acc, ax_loss):
            span = (min(readout) - 0.5, max(readout) + 0.5)
            ax.axvspan(*span, color="0.9", zorder=0, gid="readout")
        ax_acc.plot([], [], "s", color="0.9", ms=10, label="read-out only epochs")
    ax_acc.set(title="Accuracy", xlabel="epoch", ylabel="accuracy")
    # Steps of 1, 2 or 5 (times a power of ten) so that the labels' decimals are exact.
    ax_acc.yaxis.set_major_locator(MaxNLocator(steps=[1, 2, 5, 10]))
    ax_acc.yaxis.set_major_formatter(PercentFormatter(decimals=0 if _span(ax_acc) > 5 else 1))
    ax_acc.legend(loc="best", fontsize="small")

    ax_loss.plot(x, [r["train_loss"] for r in epochs], "o-", color="C2", gid="loss")
    ax_loss.set(title="Train loss (running mean)", xlabel="epoch", ylabel="loss")
    for ax in (ax_acc, ax_loss):
        if 0 < len(x) <= 12:
            ax.set_xticks(x)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    if x:
        ax_acc.set_xlim(min(x) - 0.5, max(x) + 0.5)
        ax_loss.set_xlim(min(x) - 0.5, max(x) + 0.5)
    fig.suptitle(f"Training: {len(epochs)} epoch{'s' * (len(epochs) != 1)}")
    return _finish(fig, path)


def _span(ax) -> float:
    lo, hi = ax.get_ylim()
    return hi - lo


# ---------------------------------------------------------------------------- spike maps
def _one_sample(network, image_times) -> np.ndarray:
    t = np.asarray(image_times, dtype=np.float64)
    shape = tuple(network.input_shape)
    if t.shape == shape:
        return t[None]
    if t.shape == (1, *shape):
        return t
    raise ValueError(
        f"image_times must be ONE sample shaped {shape} or {(1, *shape)}, got {t.shape}"
    )


def _stage_name(layer) -> str:
    return {"conv2d": "Conv2d", "maxpool2d": "MaxPool2d", "dense": "Dense"}[layer.kind]


def spike_time_maps(network, image_times, path=None, max_channels: int = 8):
    """First-spike times of the input and of every layer, for one sample.

    One row per stage (input first). ``(C, H, W)`` maps show their first
    ``max_channels`` channels side by side; flat layers show one cell per neuron
    (a perfect-square vector of more than 64 values is folded into a square).
    Silent neurons (``t == tmax``) are drawn grey.
    """
    _require()
    from matplotlib.colors import Normalize

    max_channels = int(max_channels)
    if max_channels < 1:
        raise ValueError(f"max_channels must be at least 1, got {max_channels}")
    t = _one_sample(network, image_times)
    outs = network.forward(t)
    tmax = network.tmax
    stages = [("input", tuple(network.input_shape), t[0])]
    for i, (layer, out) in enumerate(zip(network.layers, outs)):
        stages.append((f"{i}: {_stage_name(layer)}", tuple(out.shape[1:]), out[0]))

    # Layout: a column per channel tile, a row per stage; flat stages span every column.
    rows = []
    for name, shape, values in stages:
        fired = float(np.mean(values < tmax))
        title = f"{name} {'×'.join(map(str, shape))} — {100 * fired:.0f}% fire"
        if len(shape) == 3:
            c, h, w = shape
            n = min(c, max_channels)
            if n < c:
                title += f" (channels 0–{n - 1} of {c})"
            mosaic = np.concatenate(list(values[:n]), axis=1)  # (H, n*W)
            rows.append(dict(title=title, img=mosaic, cols=n, tiles=(n, w), height=1.0))
        else:
            (size,) = shape
            side = math.isqrt(size)
            if size > 64 and side * side == size:
                rows.append(
                    dict(
                        title=title + f" (as {side}×{side})",
                        img=values.reshape(side, side),
                        cols=1,
                        tiles=None,
                        height=1.0,
                    )
                )
            else:
                rows.append(dict(title=title, img=values[None], cols=None, tiles=None, height=0.4))
    ncols = max([4] + [r["cols"] for r in rows if r["cols"]])
    tile = 1.15
    fig = _figure((ncols * tile + 1.6, sum(r["height"] * tile + 0.45 for r in rows) + 0.5))
    grid = fig.add_gridspec(len(rows), ncols, height_ratios=[r["height"] for r in rows])
    cmap, norm = _time_cmap(), Normalize(0.0, tmax)
    axes = []
    for k, r in enumerate(rows):
        cols = r["cols"] or ncols
        ax = fig.add_subplot(grid[k, :cols])
        img = np.ma.masked_greater_equal(r["img"], tmax)
        im = ax.imshow(
            img,
            cmap=cmap,
            norm=norm,
            interpolation="nearest",
            aspect="equal" if r["cols"] else "auto",
        )
        ax.set_title(r["title"], fontsize="small", loc="left")
        if r["tiles"] is not None:
            n, w = r["tiles"]
            for j in range(1, n):
                ax.axvline(j * w - 0.5, color="white", lw=2.5)
            ax.set_xticks([(j + 0.5) * w - 0.5 for j in range(n)], [f"ch {j}" for j in range(n)])
            ax.tick_params(axis="x", length=0, labelsize="x-small")
            ax.set_yticks([])
        elif r["cols"] is None:
            _label_strip(ax, r["img"][0], tmax)
        else:
            ax.set_xticks([])
            ax.set_yticks([])
        axes.append(ax)
    cbar = fig.colorbar(im, ax=axes, shrink=min(1.0, 4.0 / len(rows) + 0.2), aspect=30)
    cbar.set_label("first-spike time (grey: silent, t = tmax)")
    fig.suptitle(f"First-spike times of one sample (tmax = {tmax:g})")
    return _finish(fig, path)


def _label_strip(ax, values, tmax):
    """Neuron indices below a 1-row strip; spike times written in the cells if few."""
    n = len(values)
    ax.set_yticks([])
    if n <= 32:
        ax.set_xticks(range(n))
        ax.tick_params(axis="x", labelsize="x-small", length=0)
    else:
        ax.tick_params(axis="x", labelsize="x-small")
    ax.set_xlabel("neuron", fontsize="x-small", labelpad=1)
    if n <= 16:
        for j, v in enumerate(values):
            text = f"{v:.0f}" if v < tmax else "–"
            color = "white" if v < tmax and v > 0.55 * tmax else "black"
            ax.text(j, 0, text, ha="center", va="center", fontsize="x-small", color=color)


# ---------------------------------------------------------------------------- raster
_CASES = {0: "first spike", 1: "tie → V(T)", 2: "no spike → V(T)"}


def output_raster(network, image_times, labels=None, path=None, max_samples: int = 8):
    """Output-layer spikes of the first ``max_samples`` samples, one panel per sample.

    x is the spike time, y the output neuron (class); one tick per spike, silent
    neurons draw nothing. The label's row is shaded green; the predicted class's
    spike is green when right, red when wrong (with a Dense output layer).
    """
    _require()
    from matplotlib.ticker import MaxNLocator

    t = np.asarray(image_times, dtype=np.float64)
    if t.shape == tuple(network.input_shape):
        t = t[None]
    max_samples = int(max_samples)
    if max_samples < 1:
        raise ValueError(f"max_samples must be at least 1, got {max_samples}")
    t = t[:max_samples]
    n = len(t)
    if n == 0:
        raise ValueError("image_times holds no samples")
    if labels is not None:
        labels = np.atleast_1d(np.asarray(labels))[:n]
        if len(labels) != n:
            raise ValueError(f"{n} samples but {len(labels)} labels")
    out = network.forward(t)[-1].reshape(n, -1)
    tmax, n_out = network.tmax, out.shape[1]
    pred = case = None
    if network.layers[-1].kind == "dense":
        pred, case = network.predict(t, return_cases=True)

    ncols = 1 if n == 1 else 2
    nrows = math.ceil(n / ncols)
    row_h = 0.25 * n_out + 0.9
    fig = _figure((5.2 * ncols, nrows * row_h + 0.6))
    axes = np.atleast_1d(fig.subplots(nrows, ncols, sharex=True, squeeze=False)).ravel()
    for s, ax in enumerate(axes):
        if s >= n:
            ax.set_visible(False)
            continue
        fired = np.flatnonzero(out[s] < tmax)
        colors = np.full(len(fired), "black", dtype=object)
        if labels is not None:
            ax.axhspan(labels[s] - 0.5, labels[s] + 0.5, color="#2ca02c", alpha=0.18, lw=0)
        title = f"sample {s}"
        if labels is not None:
            title += f" · label {labels[s]}"
        if pred is not None:
            if labels is None:
                color = "#1f77b4"
            else:
                color = "#2ca02c" if pred[s] == labels[s] else "#d62728"
            colors[fired == pred[s]] = color
            title += f" · predicted {pred[s]} ({_CASES[int(case[s])]})"
            # A triangle just right of the axes points at the predicted row.
            ax.plot(
                [1.02],
                [pred[s]],
                "<",
                color=color,
                ms=7,
                clip_on=False,
                transform=ax.get_yaxis_transform(),
            )
            if out[s, pred[s]] < tmax:
                ax.scatter(
                    [out[s, pred[s]]],
                    [pred[s]],
                    s=110,
                    facecolors="none",
                    edgecolors=color,
                    linewidths=1.5,
                )
        ax.scatter(
            out[s, fired], fired, marker="|", s=160, linewidths=2, c=list(colors), gid="spikes"
        )
        ax.set_title(title, fontsize="small", loc="left")
        ax.set_ylim(n_out - 0.5, -0.5)
        ax.set_xlim(0, tmax)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=min(n_out, 12)))
        ax.grid(axis="x", alpha=0.3)
        if s % ncols == 0:
            ax.set_ylabel("output neuron")
        if s >= n - ncols:
            ax.set_xlabel("spike time")
            ax.tick_params(axis="x", labelbottom=True)
    fig.suptitle(
        "Output spikes"
        + (" · shaded row: label" if labels is not None else "")
        + (" · circled spike and ◀: prediction" if pred is not None else "")
    )
    return _finish(fig, path)


# ---------------------------------------------------------------------------- confusion
def confusion_matrix(confusion, class_names=None, path=None, normalize: bool = True):
    """Heat map of a confusion matrix (rows: true class, columns: prediction).

    ``confusion`` is the matrix or a metrics dict holding it (``evaluate``'s result, or a
    ``val``/``test`` record). With ``normalize`` cells are coloured by the fraction of
    their row (per-class recall) and show the percentage above the count.
    """
    _require()
    from matplotlib.colors import Normalize

    if isinstance(confusion, dict):
        confusion = confusion["confusion"]
    cm = np.asarray(confusion)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] == 0:
        raise ValueError(f"confusion must be a non-empty square matrix, got shape {cm.shape}")
    if (cm < 0).any():
        raise ValueError("confusion counts must be non-negative")
    k = cm.shape[0]
    names = [str(c) for c in (class_names if class_names is not None else range(k))]
    if len(names) != k:
        raise ValueError(f"{len(names)} class names for a {k}x{k} matrix")
    total = cm.sum()
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    shown = frac if normalize else cm
    vmax = 1.0 if normalize else max(float(cm.max()), 1.0)

    cell = min(0.55, 9.0 / k)  # inches; big matrices stay about 11 inches wide
    fig = _figure((max(k * cell + 2.4, 5.0), max(k * cell + 1.4, 4.0)))
    ax = fig.subplots()
    im = ax.imshow(shown, cmap="Blues", norm=Normalize(0, vmax), interpolation="nearest")
    if cell >= 0.35:  # room for annotations (up to 25 classes)
        fontsize = 7 if cell >= 0.5 else 5
        for i in range(k):
            for j in range(k):
                count = int(cm[i, j])
                dark = shown[i, j] > 0.55 * vmax
                color = "white" if dark else ("black" if count else "#b0b0b0")
                text = f"{_percent(frac[i, j])}\n{count}" if normalize and count else f"{count}"
                ax.text(j, i, text, ha="center", va="center", fontsize=fontsize, color=color)
    ax.set_xticks(range(k), names, rotation=90 if max(map(len, names)) > 3 else 0)
    ax.set_yticks(range(k), names)
    if k > 20:
        ax.tick_params(labelsize="x-small")
    ax.set(xlabel="predicted class", ylabel="true class")
    cbar = fig.colorbar(im, ax=ax, shrink=0.8)
    cbar.set_label("fraction of the true class" if normalize else "count")
    acc = np.trace(cm) / total if total else float("nan")
    ax.set_title(f"Confusion: accuracy {100 * acc:.2f}% (n = {int(total):,})", fontsize="medium")
    return _finish(fig, path)


def _percent(f: float) -> str:
    return "<1%" if 0 < f < 0.005 else f"{100 * f:.0f}%"

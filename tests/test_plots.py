"""Figures: each renders a valid PNG whose content matches the data it was given."""

import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib")

import matplotlib.image  # noqa: E402
import stidi_rs as sr  # noqa: E402
from stidi_rs import plots  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def check_png(path, fig):
    """A PNG file whose pixel size is the figure's size at the saved dpi."""
    assert path.exists()
    assert path.read_bytes()[:8] == PNG_MAGIC
    img = matplotlib.image.imread(path)
    w, h = fig.get_size_inches() * plots._DPI
    assert img.shape == (round(h), round(w), 4)
    assert img[..., :3].std() > 0.05  # not a blank canvas


def tiny():
    """Conv-pool-dense on 8x8 images; output neuron 1 can never fire."""
    net = sr.Network([sr.Conv2d(1, 3, 3, 3.0), sr.MaxPool2d(2), sr.Dense(27, 4, 3.0)], (1, 8, 8))
    w = net.layers[2].weight.copy()
    w[1] = -np.abs(w[1])
    net.layers[2].weight = w
    return net


def times(n=6, seed=1):
    x = np.random.default_rng(seed).integers(0, 256, (n, 1, 8, 8))
    x[x < 120] = 0  # dark pixels never spike
    return sr.encode(x)


def records(n_epochs=3):
    recs = []
    for e in range(1, n_epochs + 1):
        r = {
            "epoch": e,
            "lr": [1.0],
            "train_accuracy": 0.5 + 0.1 * e,
            "train_loss": 1.0 / e,
            "seconds": 1.0,
            "images_per_s": 100.0,
        }
        if e != 2:  # validation is optional per epoch
            r["val"] = {"accuracy": 0.45 + 0.1 * e, "confusion": [[1, 0], [0, 1]]}
        recs.append(r)
    recs.append({"test": {"accuracy": 0.77}, "test_size": 1000})
    return recs


def line(fig, gid):
    (found,) = [ln for ax in fig.axes for ln in ax.get_lines() if ln.get_gid() == gid]
    return found


def test_plots_does_not_import_matplotlib_until_called():
    code = "import sys, stidi_rs, stidi_rs.cli, stidi_rs.plots; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_missing_matplotlib_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"pip install 'stidi-rs\[plot\]'"):
        plots.confusion_matrix(np.eye(2, dtype=int))


def test_training_curves_from_records(tmp_path):
    fig = plots.training_curves(records(), path=tmp_path / "curves.png")
    check_png(tmp_path / "curves.png", fig)
    assert list(line(fig, "train").get_xdata()) == [1, 2, 3]
    np.testing.assert_allclose(line(fig, "train").get_ydata(), [60, 70, 80])
    assert list(line(fig, "val").get_xdata()) == [1, 3]  # epoch 2 has no validation
    np.testing.assert_allclose(line(fig, "loss").get_ydata(), [1, 1 / 2, 1 / 3])
    test = line(fig, "test")
    assert (test.get_xdata()[0], test.get_ydata()[0]) == (3, pytest.approx(77))
    assert "test 77.00% (n = 1,000)" in [t.get_text() for t in fig.axes[0].get_legend().texts]


def test_training_curves_from_metrics_file_of_a_resumed_run(tmp_path):
    recs = records(3)
    # Resumed from epoch 1: epochs 2 and 3 are logged again, with other numbers.
    redo = [{**r, "train_accuracy": 0.9} for r in recs[1:3]]
    with open(tmp_path / "metrics.jsonl", "w") as f:
        for r in recs + redo:
            f.write(json.dumps(r) + "\n")
    epochs, test = plots.read_metrics(tmp_path)
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    assert test["accuracy"] == 0.77 and test["after_epoch"] == 3
    fig = plots.training_curves(tmp_path / "metrics.jsonl", path=tmp_path / "c.png")
    check_png(tmp_path / "c.png", fig)
    np.testing.assert_allclose(line(fig, "train").get_ydata(), [60, 90, 90])


def test_training_curves_shade_the_readout_epochs(tmp_path):
    recs = records(4)
    for r in recs[2:4]:
        r["readout_only"] = True
    fig = plots.training_curves(recs, path=tmp_path / "c.png")
    check_png(tmp_path / "c.png", fig)
    spans = [p for ax in fig.axes for p in ax.patches if p.get_gid() == "readout"]
    assert len(spans) == 2  # accuracy and loss panels
    x0, x1 = spans[0].get_x(), spans[0].get_x() + spans[0].get_width()
    assert (x0, x1) == (pytest.approx(2.5), pytest.approx(4.5))
    assert "read-out only epochs" in [t.get_text() for t in fig.axes[0].get_legend().texts]
    plain = plots.training_curves(records(3))
    assert not [p for ax in plain.axes for p in ax.patches if p.get_gid() == "readout"]


def test_training_curves_without_val_or_test(tmp_path):
    recs = [{k: v for k, v in r.items() if k != "val"} for r in records(2)[:-1]]
    fig = plots.training_curves(recs, path=tmp_path / "c.png")
    check_png(tmp_path / "c.png", fig)
    assert not [ln for ln in fig.axes[0].get_lines() if ln.get_gid() in ("val", "test")]
    with pytest.raises(ValueError, match="no epoch"):
        plots.training_curves([])


def image_axes(fig):
    return [ax for ax in fig.axes if ax.get_images()]


@pytest.mark.parametrize("batched", [False, True])
def test_spike_time_maps_show_every_layer_and_mark_silent_neurons(tmp_path, batched):
    net = tiny()
    t = times(1)
    fig = plots.spike_time_maps(net, t if batched else t[0], path=tmp_path / "maps.png")
    check_png(tmp_path / "maps.png", fig)
    axes = image_axes(fig)
    assert len(axes) == len(net.layers) + 1
    stages = [t[0], *(o[0] for o in net.forward(t))]
    for ax, stage in zip(axes, stages):
        data = ax.get_images()[0].get_array()
        assert data.size == stage.size  # 3 channels <= max_channels: all shown
        assert np.ma.count_masked(data) == np.sum(stage >= net.tmax)
        np.testing.assert_allclose(np.sort(data.compressed()), np.sort(stage[stage < net.tmax]))
    out = stages[-1]
    assert out[1] == net.tmax and (out[[0, 2, 3]] < net.tmax).all()
    texts = [t.get_text() for t in axes[-1].texts]
    assert texts == [f"{v:.0f}" if v < net.tmax else "–" for v in out]


def test_spike_time_maps_limits_channels_and_folds_square_dense(tmp_path):
    net = sr.Network(
        [sr.Conv2d(1, 5, 3, 3.0), sr.MaxPool2d(2), sr.Dense(45, 81, 3.0), sr.Dense(81, 3, 3.0)],
        (1, 8, 8),
    )
    fig = plots.spike_time_maps(net, times(1), path=tmp_path / "m.png", max_channels=2)
    check_png(tmp_path / "m.png", fig)
    shapes = [ax.get_images()[0].get_array().shape for ax in image_axes(fig)]
    assert shapes == [(8, 8), (6, 2 * 6), (3, 2 * 3), (9, 9), (1, 3)]
    with pytest.raises(ValueError, match="ONE sample"):
        plots.spike_time_maps(net, times(2))


def spike_markers(fig):
    return [c for ax in fig.axes for c in ax.collections if c.get_gid() == "spikes"]


def test_output_raster_one_marker_per_spike(tmp_path):
    net = tiny()
    t = times(5)
    labels = np.array([0, 1, 2, 3, 0])
    fig = plots.output_raster(net, t, labels, path=tmp_path / "raster.png")
    check_png(tmp_path / "raster.png", fig)
    out = net.forward(t)[-1]
    pred = net.predict(t)
    panels = spike_markers(fig)
    assert len(panels) == len(t)
    assert sum(len(p.get_offsets()) for p in panels) == np.sum(out < net.tmax)
    for s, p in enumerate(panels):
        xy = np.asarray(p.get_offsets())
        fired = np.flatnonzero(out[s] < net.tmax)
        np.testing.assert_array_equal(xy[:, 1], fired)
        np.testing.assert_allclose(xy[:, 0], out[s, fired])
        assert 1 not in xy[:, 1]  # the silent neuron draws nothing
        title = p.axes.get_title(loc="left")
        assert f"label {labels[s]}" in title and f"predicted {pred[s]}" in title
    assert sum(ax.get_visible() for ax in fig.axes) == len(t)  # 6th grid cell hidden


def test_output_raster_single_sample_and_max_samples(tmp_path):
    net = tiny()
    fig = plots.output_raster(net, times(1)[0], path=tmp_path / "one.png")
    check_png(tmp_path / "one.png", fig)
    assert len(spike_markers(fig)) == 1
    fig = plots.output_raster(net, times(10), max_samples=3)
    assert len(spike_markers(fig)) == 3
    with pytest.raises(ValueError, match="labels"):
        plots.output_raster(net, times(3), labels=[0, 1])


def cell_texts(fig):
    """The annotations of the heat map, as a {(row, col): text} dict."""
    ax = fig.axes[0]
    return {
        (round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts
    }


@pytest.mark.parametrize("normalize", [True, False])
def test_confusion_matrix_annotates_counts(tmp_path, normalize):
    cm = np.array([[50, 3, 0], [1, 40, 9], [0, 0, 1000]])
    fig = plots.confusion_matrix(
        cm, class_names=["a", "b", "c"], path=tmp_path / "cm.png", normalize=normalize
    )
    check_png(tmp_path / "cm.png", fig)
    texts = cell_texts(fig)
    assert len(texts) == cm.size
    for (i, j), text in texts.items():
        assert int(text.split("\n")[-1]) == cm[i, j]
    if normalize:
        assert texts[(0, 0)] == "94%\n50" and texts[(1, 2)] == "18%\n9"
        np.testing.assert_allclose(fig.axes[0].get_images()[0].get_array()[1], [0.02, 0.8, 0.18])
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]
    assert "accuracy 98.82% (n = 1,103)" in ax.get_title()


def test_confusion_matrix_from_metrics_dict_and_bad_input():
    fig = plots.confusion_matrix({"accuracy": 0.5, "confusion": [[1, 1], [1, 1]]})
    assert cell_texts(fig)[(1, 0)] == "50%\n1"
    with pytest.raises(ValueError, match="square"):
        plots.confusion_matrix(np.ones((2, 3)))
    with pytest.raises(ValueError, match="class names"):
        plots.confusion_matrix(np.eye(3), class_names=["a"])

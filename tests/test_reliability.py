"""Faults and bad input: run directories, divergence, checkpoints, thread counts.

docs/reliability.md lists what is guaranteed; each guarantee names its test here.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import stidi_rs as sr
from stidi_rs import checkpoint
from stidi_rs.cli import main
from stidi_rs.trainer import Trainer

needs_data = pytest.mark.skipif(
    not os.environ.get("STIDI_RS_DATA"), reason="STIDI_RS_DATA is not set (see README)"
)

# A run of a few seconds: the smallest preset on 100 images.
TINY = [
    *"train --preset dense --train-size 100 --test-size 50 --readout-epochs 0".split(),
    "--no-progress",
]


def tiny(binary=False, seed=0):
    layers = [
        sr.Conv2d(1, 3, 3, 2.0, binary=binary),
        sr.MaxPool2d(2),
        sr.Dense(3 * 3 * 3, 4, 2.0, binary=binary),
    ]
    return sr.Network(layers, (1, 8, 8), seed=seed)


def fake_images(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 8, 8)).astype(np.uint8), rng.integers(0, 4, n)


def snapshot(directory):
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def logged_epochs(directory):
    lines = (directory / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["epoch"] for line in lines if "epoch" in json.loads(line)]


# --- run directories --------------------------------------------------------------


@needs_data
def test_resume_writes_only_into_the_checkpoints_own_run(tmp_path, capsys):
    a, b, c = tmp_path / "A", tmp_path / "B", tmp_path / "C"
    assert main([*TINY, "--epochs", "1", "--seed", "1", "--out", str(a)]) == 0
    assert main([*TINY, "--epochs", "1", "--seed", "2", "--out", str(b)]) == 0
    (a / "backup.npz").write_bytes((b / "last.npz").read_bytes())
    before = snapshot(a)
    capsys.readouterr()
    # a copy is not a run directory's last.npz: it would have mixed B into A
    assert main(["train", "--resume", str(a / "backup.npz"), "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert "is not a run directory's last.npz: pass --out" in err and err.count("\n") == 1
    assert main(["train", "--resume", str(a / "backup.npz"), "--out", str(a)]) == 2
    assert f"{a} already holds a run" in capsys.readouterr().err
    assert snapshot(a) == before
    resume = ["train", "--resume", str(a / "backup.npz"), "--epochs", "2", "--test-size", "50"]
    assert main([*resume, "--out", str(c), "--no-progress"]) == 0
    assert snapshot(a) == before
    assert checkpoint.load(c / "last.npz")[1]["trainer"]["epoch"] == 2
    assert logged_epochs(c) == [2]  # the epochs before it are in the checkpoint's history
    # its own last.npz continues in place
    assert main(["train", "--resume", str(c / "last.npz"), "--epochs", "3", "--no-progress"]) == 0
    assert logged_epochs(c) == [2, 3]


@needs_data
def test_force_checks_everything_before_replacing_a_run(tmp_path, capsys):
    out = tmp_path / "F"
    assert main([*TINY, "--epochs", "1", "--out", str(out)]) == 0
    before = snapshot(out)
    capsys.readouterr()
    assert main([*TINY, "--epochs", "1", "--val-size", "100", "--out", str(out), "--force"]) == 2
    assert "--val-size 100 leaves no training images" in capsys.readouterr().err
    assert snapshot(out) == before
    assert main([*TINY, "--epochs", "1", "--lr", "1,2,3", "--out", str(out), "--force"]) == 2
    assert snapshot(out) == before
    # a good --force replaces the run and leaves nothing of the old one behind
    assert main([*TINY, "--epochs", "1", "--seed", "3", "--out", str(out), "--force"]) == 0
    after = snapshot(out)
    assert sorted(after) == ["last.npz", "metrics.jsonl"]
    assert after["last.npz"] != before["last.npz"]
    assert checkpoint.load(out / "last.npz")[1]["trainer"]["seed"] == 3


@needs_data
def test_force_puts_the_old_run_back_if_the_new_one_dies_before_its_checkpoint(
    tmp_path, capsys, monkeypatch
):
    out = tmp_path / "F"
    assert main([*TINY, "--epochs", "1", "--out", str(out)]) == 0
    before = snapshot(out)

    def disk_full(self, path):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(Trainer, "save", disk_full)
    capsys.readouterr()
    assert main([*TINY, "--epochs", "1", "--seed", "3", "--out", str(out), "--force"]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert snapshot(out) == before


@needs_data
def test_output_folder_is_checked_before_any_training(tmp_path, capsys, monkeypatch):
    (tmp_path / "f").write_text("a file, not a folder")

    def no_training(*args, **kwargs):
        raise AssertionError("training started before the output folder was checked")

    monkeypatch.setattr(Trainer, "fit", no_training)
    assert main([*TINY, "--epochs", "2", "--out", str(tmp_path / "f" / "sub")]) == 2
    err = capsys.readouterr().err
    assert f"cannot create --out {tmp_path / 'f' / 'sub'}: " in err and "not a directory" in err
    assert main([*TINY, "--epochs", "2", "--out", str(tmp_path / "f")]) == 2
    assert "exists and is not a directory" in capsys.readouterr().err


def test_data_folder_that_does_not_exist_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*TINY, "--data", "/nonexistent/stidi-rs-data"])
    assert exit_info.value.code == 2
    assert "--data /nonexistent/stidi-rs-data is not a directory" in capsys.readouterr().err


def _trainer(out, epochs):
    net = tiny()
    return Trainer(
        net, sr.STiDiBP(net, lr=3.0), epochs=epochs, batch_size=4, seed=5, out_dir=out,
        progress=False,
    )  # fmt: skip


@pytest.mark.parametrize("crash", ["checkpoint_not_logged", "logged_not_checkpointed", "torn"])
def test_metrics_log_agrees_with_the_checkpoint_after_a_crash(tmp_path, crash):
    x, y = fake_images(40)
    _trainer(tmp_path / "ref", 3).fit(x, y)
    ref = (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()
    run = tmp_path / "run"
    _trainer(run, 2 if crash == "checkpoint_not_logged" else 1).fit(x, y)
    log = run / "metrics.jsonl"
    # what a crash between the two writes of epoch 2 (in either order) leaves
    if crash == "checkpoint_not_logged":
        log.write_text(ref[0] + "\n")
    elif crash == "logged_not_checkpointed":
        log.write_text(ref[0] + "\n" + ref[1] + "\n")
    else:
        log.write_text(ref[0] + "\n" + ref[1][:20])
    Trainer.resume(run / "last.npz", epochs=3, progress=False).fit(x, y)
    assert logged_epochs(run) == [1, 2, 3]
    losses = [json.loads(line)["train_loss"] for line in log.read_text().splitlines()]
    assert losses == [json.loads(line)["train_loss"] for line in ref]


# --- divergence -------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")  # the NumPy rule's maths
@pytest.mark.parametrize("backend", ["rust", "numpy"])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_a_diverging_step_raises_and_leaves_the_weights_as_they_were(backend, batch_size):
    x, y = fake_images(6)
    net = tiny(binary=True)
    net.backend = backend
    times = sr.encode(x.reshape(-1, 1, 8, 8))
    sr.STiDiBP(net, lr=1.0).steps(times, y, batch_size)  # finite: it trains
    before = [(layer.weight.copy(), layer.packed.copy()) for layer in net.spiking_layers]
    with pytest.raises(sr.DivergenceError, match=r"^layer 0 \(Conv2d\): step 0 .* non-finite"):
        sr.STiDiBP(net, lr=10.0, weight_decay=1e308).steps(times, y, batch_size)
    for layer, (w, p) in zip(net.spiking_layers, before):
        assert np.array_equal(layer.weight, w) and np.array_equal(layer.packed, p)
    assert issubclass(sr.DivergenceError, ValueError)


def test_training_stops_on_divergence_and_keeps_the_last_good_checkpoint(tmp_path):
    x, y = fake_images(40)
    trainer = _trainer(tmp_path, 1)
    trainer.fit(x, y)
    good = (tmp_path / "last.npz").read_bytes()
    trainer.epochs, trainer.rule.weight_decay = 2, 1e308  # lr 3: decay 3e308 = inf
    with pytest.raises(sr.DivergenceError) as info:
        trainer.fit(x, y)
    message = str(info.value)
    assert message.startswith("training diverged in epoch 2: layer 0 (Conv2d)")
    assert message.endswith(f"stopped, {tmp_path / 'last.npz'} keeps epoch 1")
    assert (tmp_path / "last.npz").read_bytes() == good
    net, _ = checkpoint.load(tmp_path / "last.npz")
    assert all(np.isfinite(layer.weight).all() for layer in net.spiking_layers)
    assert logged_epochs(tmp_path) == [1]

"""Faults and bad input: run directories, divergence, checkpoints, thread counts.

docs/reliability.md lists what is guaranteed; each guarantee names its test here.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import stidi_rs as sr
from stidi_rs.trainer import Trainer


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


def logged_epochs(directory):
    lines = (directory / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["epoch"] for line in lines if "epoch" in json.loads(line)]


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

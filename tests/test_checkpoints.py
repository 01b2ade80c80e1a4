"""Checkpoints: save and load, export for inference, and runs resumed from them."""

import json

import numpy as np
import pytest
import stidi_rs as sr
from helpers import fake_images, tiny
from stidi_rs import checkpoint
from stidi_rs.cli import main
from stidi_rs.trainer import Trainer


@pytest.mark.parametrize("binary", [False, True])
def test_checkpoint_round_trip_gives_identical_predictions(tmp_path, binary):
    net = tiny(binary)
    sr.STiDiBP(net, lr=5.0).step(sr.encode(fake_images()[0][:, None]), fake_images()[1])
    checkpoint.save(tmp_path / "m.npz", net, note="hello")
    loaded, config = checkpoint.load(tmp_path / "m.npz")
    assert config["note"] == "hello"
    for a, b in zip(net.spiking_layers, loaded.spiking_layers):
        assert np.array_equal(a.weight, b.weight) and a.binary == b.binary
    x = sr.encode(fake_images(seed=1)[0][:, None])
    assert np.array_equal(net.predict(x), loaded.predict(x))
    with np.load(tmp_path / "m.npz", allow_pickle=False) as data:  # readable without pickle
        assert ("layer0.packed" in data.files) == binary


def test_checkpoint_keeps_a_skip(tmp_path):
    layers = [sr.Conv2d(1, 2, 3, 1.0), sr.MaxPool2d(2), sr.Conv2d(2, 2, 2, 1.0)]
    net = sr.Network([*layers, sr.Dense(2 * 2 * 2 + 2 * 9, 4, 2.0, skip=1)], (1, 8, 8))
    checkpoint.save(tmp_path / "s.npz", net)
    loaded, _ = checkpoint.load(tmp_path / "s.npz")
    assert loaded.layers[-1].skip == 1 and loaded.layers[-1].in_features == 26
    x = sr.encode(fake_images(seed=1)[0][:, None])
    assert np.array_equal(net.predict(x), loaded.predict(x))
    # a Dense without a skip writes no "skip" key: older readers and files agree
    assert "skip" not in checkpoint.network_config(tiny(False))["layers"][-1]


def test_corrupt_checkpoints_are_named(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file")
    with pytest.raises(checkpoint.CheckpointError, match="bad.npz"):
        checkpoint.load(bad)
    net = tiny(binary=True)
    checkpoint.save(tmp_path / "ok.npz", net)
    with np.load(tmp_path / "ok.npz") as data:
        arrays = {k: data[k] for k in data.files}
    arrays["layer0.packed"] = ~arrays["layer0.packed"]
    np.savez(tmp_path / "flipped.npz", **arrays)
    with pytest.raises(checkpoint.CheckpointError, match="does not match the signs"):
        checkpoint.load(tmp_path / "flipped.npz")
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        checkpoint.load(tmp_path / "missing.npz")


def test_export_keeps_only_the_signs_and_evaluates_the_same(tmp_path, capsys):
    net = mixed()
    x, y = fake_images()
    sr.STiDiBP(net, lr=5.0).step(sr.encode(x[:, None]), y)
    trainer = Trainer(net, sr.STiDiBP(net, lr=5.0), epochs=1, out_dir=tmp_path, progress=False)
    trainer.save(tmp_path / "last.npz")
    out = tmp_path / "slim.npz"
    assert main(["export", str(tmp_path / "last.npz"), str(out)]) == 0
    assert "cannot be resumed" in capsys.readouterr().out
    slim, config = checkpoint.load(out)
    assert config["signs_only"] and config["trainer"]["epochs"] == 1
    with np.load(out, allow_pickle=False) as data:  # the binary layer's reals are gone
        assert "layer0.weight" not in data.files and "layer0.packed" in data.files
        assert "layer2.weight" in data.files  # the real-valued layer keeps its weights
    assert np.array_equal(slim.layers[0].weight, np.where(net.layers[0].weight >= 0, 1.0, -1.0))
    assert np.array_equal(slim.layers[2].weight, net.layers[2].weight)
    t = sr.encode(fake_images(seed=1)[0][:, None])
    for a, b in zip(net.forward(t), slim.forward(t)):
        assert np.array_equal(a, b)
    with pytest.raises(checkpoint.CheckpointError, match="cannot be resumed"):
        Trainer.resume(out, progress=False)
    with np.load(out) as data:
        arrays = {k: data[k] for k in data.files if k != "layer0.packed"}
    np.savez(tmp_path / "nosigns.npz", **arrays)
    with pytest.raises(checkpoint.CheckpointError, match="lacks layer0.packed"):
        checkpoint.load(tmp_path / "nosigns.npz")
    assert main(["export", str(tmp_path / "last.npz"), str(out)]) == 2
    assert "exists: pass --force" in capsys.readouterr().err
    checkpoint.save(tmp_path / "real.npz", tiny(binary=False))
    assert main(["export", str(tmp_path / "real.npz"), str(tmp_path / "r2.npz")]) == 2
    assert "has no binary layers" in capsys.readouterr().err


def mixed():
    """A binary conv layer under a real-valued output layer."""
    layers = [
        sr.Conv2d(1, 3, 3, 2.0, binary=True),
        sr.MaxPool2d(2),
        sr.Dense(3 * 3 * 3, 4, 2.0, binary=False),
    ]
    return sr.Network(layers, (1, 8, 8), seed=0)


def test_resume_equals_an_uninterrupted_run(tmp_path):
    x, y = fake_images(60)
    full_net = tiny()
    Trainer(
        full_net,
        sr.STiDiBP(full_net, lr=3.0),
        epochs=3,
        batch_size=4,
        lr_decay=0.7,
        seed=5,
        progress=False,
    ).fit(x, y)
    net = tiny()
    first = Trainer(
        net,
        sr.STiDiBP(net, lr=3.0),
        epochs=1,
        batch_size=4,
        lr_decay=0.7,
        seed=5,
        out_dir=tmp_path,
        progress=False,
    )
    first.fit(x, y)
    resumed = Trainer.resume(tmp_path / "last.npz", epochs=3, progress=False)
    assert resumed.epoch == 1
    resumed.fit(x, y)
    for a, b in zip(full_net.spiking_layers, resumed.net.spiking_layers):
        assert np.array_equal(a.weight, b.weight)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]


def test_resume_can_add_readout_epochs_to_a_finished_run(tmp_path):
    x, y = fake_images(60)
    full = tiny()
    Trainer(
        full, sr.STiDiBP(full, lr=3.0), epochs=3, readout_epochs=1, lr_decay=0.7, progress=False
    ).fit(x, y)
    net = tiny()
    Trainer(
        net, sr.STiDiBP(net, lr=3.0), epochs=2, lr_decay=0.7, out_dir=tmp_path, progress=False
    ).fit(x, y)
    resumed = Trainer.resume(tmp_path / "last.npz", epochs=3, readout_epochs=1, progress=False)
    assert resumed.readout_epochs == 1
    resumed.fit(x, y)
    for a, b in zip(full.spiking_layers, resumed.net.spiking_layers):
        assert np.array_equal(a.weight, b.weight)
    again = Trainer.resume(tmp_path / "last.npz", progress=False)  # kept in the checkpoint
    assert again.readout_epochs == 1 and again.history[-1]["readout_only"]


def test_resume_with_homeostasis_equals_an_uninterrupted_run(tmp_path):
    x, y = fake_images(60)
    guard = {"low": 0.2, "high": 0.5, "delta": 0.05, "probe": 10}

    def trainer(epochs, **kw):
        net = tiny()
        return Trainer(
            net, sr.STiDiBP(net, lr=3.0), epochs=epochs, batch_size=2, seed=1,
            progress=False, homeostasis=sr.Homeostasis(**guard), **kw,
        )  # fmt: skip

    full = trainer(2)
    full.fit(x, y)
    trainer(1, out_dir=tmp_path).fit(x, y)
    resumed = Trainer.resume(tmp_path / "last.npz", epochs=2, progress=False)
    assert resumed.homeostasis.config() == guard
    history = resumed.fit(x, y)
    assert history[0]["homeostasis_nudges"] > 0
    for a, b in zip(full.net.spiking_layers, resumed.net.spiking_layers):
        assert np.array_equal(a.weight, b.weight)


def test_an_exact_gradient_run_records_its_rule_and_resumes_exactly(tmp_path):
    """The trainer drives any rule; the checkpoint names it, and a resumed SGD run
    (no optimiser state) equals an uninterrupted one."""
    x, y = fake_images(60)
    settings = {"optimizer": "sgd", "lr": 0.5, "loss": "stidi", "silent_push": 0.5}
    full_net = tiny()
    Trainer(
        full_net,
        sr.ExactGradient(full_net, **settings),
        epochs=2,
        batch_size=4,
        seed=5,
        progress=False,
    ).fit(x, y)
    net = tiny()
    Trainer(
        net,
        sr.ExactGradient(net, **settings),
        epochs=1,
        batch_size=4,
        seed=5,
        out_dir=tmp_path,
        progress=False,
    ).fit(x, y)
    _, config = checkpoint.load(tmp_path / "last.npz")
    assert config["trainer"]["rule"]["name"] == "exact"
    resumed = Trainer.resume(tmp_path / "last.npz", epochs=2, progress=False)
    assert isinstance(resumed.rule, sr.ExactGradient)
    assert resumed.rule.config() == {**sr.ExactGradient(net, **settings).config(), "lr": [0.5, 0.5]}
    resumed.fit(x, y)
    for a, b in zip(full_net.spiking_layers, resumed.net.spiking_layers):
        assert np.array_equal(a.weight, b.weight)

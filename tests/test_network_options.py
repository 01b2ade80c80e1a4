"""Options of a network and of its start: the input window (input spikes in the
first part of [0, tmax)), threshold calibration before training and initial weight
ranges, through encoding, networks, checkpoints, presets, the trainer and the CLI."""

import json

import numpy as np
import pytest
import stidi_rs as sr
from helpers import fake_images, tiny
from hypothesis import given
from hypothesis import strategies as st
from stidi_rs import checkpoint, config
from stidi_rs import reference as R
from stidi_rs.cli import main
from stidi_rs.trainer import Trainer


@given(
    st.lists(st.integers(0, 255), min_size=1, max_size=30),
    st.floats(0.01, 1.0),
    st.floats(1.0, 1000.0),
)
def test_a_window_squeezes_the_spikes_and_keeps_black_silent(pixels, window, tmax):
    x = np.array(pixels, dtype=np.uint8)
    t = sr.encode(x, tmax=tmax, window=window)
    full = sr.encode(x, tmax=tmax)
    on = x > 0
    assert np.array_equal(t[~on], np.full((~on).sum(), tmax))  # black never fires
    assert np.allclose(t[on], window * full[on], rtol=1e-12, atol=0)
    assert (t[on] < window * tmax).all() and (t[on] >= 0).all()
    assert np.array_equal(t, R.encode(x, tmax, 255.0, window))


def test_window_one_is_the_plain_code():
    x = np.arange(256, dtype=np.uint8)
    assert np.array_equal(sr.encode(x, window=1.0), sr.encode(x))
    assert sr.encode(np.array([0, 255, 51], np.uint8), window=0.5).tolist() == [256.0, 0.0, 102.4]


@pytest.mark.parametrize("bad", [0.0, -0.5, 1.5, float("nan"), True, "half"])
def test_a_bad_window_is_named(bad):
    with pytest.raises(ValueError, match="input window"):
        sr.encode(np.array([3], np.uint8), window=bad)
    with pytest.raises(ValueError, match="input window"):
        sr.Network([sr.Dense(4, 2, 1.0)], (4,), input_window=bad)


def test_a_network_encodes_with_its_window_and_shape():
    net = tiny()
    net.input_window = 0.25  # a plain attribute: encode reads it on every call
    x = np.random.default_rng(0).integers(0, 256, (5, 64)).astype(np.uint8)
    t = net.encode(x)
    assert t.shape == (5, 1, 8, 8)
    assert np.array_equal(t, sr.encode(x.reshape(5, 1, 8, 8), tmax=net.tmax, window=0.25))
    with pytest.raises(ValueError, match=r"64 values each .* got shape \(5, 63\)"):
        net.encode(x[:, :63])
    assert "input_window=0.25" in repr(sr.Network(net.layers, (1, 8, 8), input_window=0.25))
    assert "input_window" not in repr(tiny())


def test_the_window_survives_a_checkpoint(tmp_path):
    net = sr.Network(tiny().layers, (1, 8, 8), input_window=0.4)
    path = checkpoint.save(tmp_path / "w.npz", net)
    back, _ = checkpoint.load(path)
    assert back.input_window == 0.4
    x = fake_images(seed=2)[0][:, None]
    assert np.array_equal(back.predict(back.encode(x)), net.predict(net.encode(x)))
    # A full window is not written, so files read the same as before the option.
    checkpoint.save(tmp_path / "full.npz", tiny())
    raw = json.loads(np.load(tmp_path / "full.npz")["config"].tobytes())
    assert "input_window" not in raw["network"]
    assert checkpoint.load(tmp_path / "full.npz")[0].input_window == 1.0


def test_a_damaged_window_in_a_checkpoint_is_named(tmp_path):
    net = sr.Network(tiny().layers, (1, 8, 8), input_window=0.4)
    path = checkpoint.save(tmp_path / "w.npz", net)
    arrays = dict(np.load(path))
    raw = json.loads(arrays["config"].tobytes())
    raw["network"]["input_window"] = 3.0
    arrays["config"] = np.frombuffer(json.dumps(raw).encode(), dtype=np.uint8)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(
        checkpoint.CheckpointError, match=r"input_window must be a number in \(0, 1\]"
    ):
        checkpoint.load(tmp_path / "bad.npz")


def test_calibrate_sets_the_thresholds_before_the_first_epoch(tmp_path):
    x, y = fake_images(300, seed=3)
    net = tiny()
    out_threshold = net.layers[-1].threshold
    trainer = Trainer(net, sr.STiDiBP(net, lr=0.5), epochs=2, calibrate=[0.3, 0], out_dir=tmp_path)
    trainer.fit(x, y)
    set_ = trainer.history[0]["calibrated_thresholds"]
    assert "calibrated_thresholds" not in trainer.history[1]
    assert set_[1] == out_threshold  # 0: kept
    # On the untrained weights (tiny() is seeded), the threshold it set makes 30 % of
    # conv1 fire on the first 256 images.
    probe = tiny()
    assert probe.layers[0].threshold != set_[0]
    probe.layers[0].threshold = set_[0]
    fired = (probe.forward(probe.encode(x[:256]))[0] < probe.tmax).mean()
    assert fired == pytest.approx(0.3, abs=0.02)
    # A resumed run does not calibrate again.
    resumed = Trainer.resume(tmp_path / "last.npz", epochs=3)
    assert resumed.calibrate == [0.3, 0.0]
    th = [layer.threshold for layer in resumed.net.spiking_layers]
    resumed.fit(x, y)
    assert [layer.threshold for layer in resumed.net.spiking_layers] == th
    assert "calibrated_thresholds" not in resumed.history[-1]


@pytest.mark.parametrize(
    "calibrate, message",
    [
        ([0.5], "one firing fraction per spiking layer"),
        ([0.5, 1.0], r"\[0, 1\)"),
        ([0, 0], "above 0"),
    ],
)
def test_bad_calibrate_fractions_are_named(calibrate, message):
    net = tiny()
    with pytest.raises(ValueError, match=message):
        Trainer(net, sr.STiDiBP(net), calibrate=calibrate)


def test_config_checks_window_and_fractions():
    with pytest.raises(ValueError, match=r"input_window = 0 must be a number in \(0, 1\]"):
        config.check({"input_window": 0}, "here")
    with pytest.raises(ValueError, match="calibrate = .* firing fractions"):
        config.check({"calibrate": [1.0]}, "here")
    assert config.check({"input_window": 0.5, "calibrate": [0.5, 0]}, "here")


def test_a_preset_builds_with_a_window():
    preset = sr.presets.get("csnn")
    assert preset.build(dataset="mnist").input_window == 1.0
    assert preset.build(dataset="mnist", input_window=0.5).input_window == 0.5


@pytest.mark.needs_data
def test_cli_trains_with_a_window_and_calibration(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--preset", "dense", "--train-size", "1000", "--test-size", "500"]
    args += ["--epochs", "1", "--input-window", "0.5", "--calibrate", "0.4,0"]
    assert main([*args, "--out", str(out), "--no-progress"]) == 0
    net, saved = checkpoint.load(out / "last.npz")
    assert net.input_window == 0.5
    assert saved["trainer"]["calibrate"] == [0.4, 0.0]
    assert config.load(out / "config.toml")["input_window"] == 0.5
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    untrained = sr.presets.get("dense").build(dataset="mnist")
    assert records[0]["calibrated_thresholds"][1] == untrained.layers[-1].threshold
    assert records[0]["calibrated_thresholds"][0] != untrained.layers[0].threshold
    accuracy = records[-1]["test"]["accuracy"]
    capsys.readouterr()
    # eval reads the window from the checkpoint: the same test accuracy.
    assert main(["eval", str(out / "last.npz"), "--test-size", "500", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == accuracy
    with pytest.raises(SystemExit):
        main([*args[:-4], "--input-window", "wide", "--out", str(tmp_path / "b")])
    assert main([*args[:-4], "--input-window", "1.5", "--out", str(tmp_path / "c")]) == 2
    assert "input_window = 1.5 must be a number in (0, 1]" in capsys.readouterr().err


def test_init_ranges_reach_the_layers():
    preset = sr.presets.get("dense")
    net = preset.build(dataset="mnist", init=[[-1, 1], [0, 0.5]])
    first, out = net.spiking_layers
    assert first.init == (-1.0, 1.0) and out.init == (0.0, 0.5)
    assert first.weight.min() < -0.9 and out.weight.max() <= 0.5
    with pytest.raises(ValueError, match=r"init needs 2 \(low, high\) range\(s\)"):
        preset.build(dataset="mnist", init=[[-1, 1]])
    with pytest.raises(ValueError, match="init = .* low < high"):
        config.check({"init": [[1, -1], [0, 1]]}, "here")


def test_cli_init_flag(tmp_path, capsys):
    args = ["train", "--preset", "dense", "--out", str(tmp_path / "run"), "--no-progress"]
    with pytest.raises(SystemExit):
        main([*args, "--init", "0,1/2"])
    assert "not LOW,HIGH ranges joined by '/'" in capsys.readouterr().err
    assert main([*args, "--init=-1,1/0,1/0,1"]) == 2
    assert "init needs 2 (low, high) range(s)" in capsys.readouterr().err


@pytest.mark.needs_data
def test_cli_trains_from_the_given_init(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--preset", "dense", "--train-size", "500", "--test-size", "100"]
    args += ["--epochs", "1", "--init=-1,1/0,1", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    assert config.load(out / "config.toml")["init"] == [[-1.0, 1.0], [0.0, 1.0]]
    net, _ = checkpoint.load(out / "last.npz")
    assert (net.layers[0].weight < 0).mean() > 0.3  # U(0, 1) would start it all positive

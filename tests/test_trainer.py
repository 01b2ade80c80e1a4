"""Checkpoints, resume, evaluation metrics and the command line."""

import json
import subprocess
import sys

import numpy as np
import pytest
import stidi_rs as sr
from helpers import fake_images, tiny, toeplitz
from stidi_rs import checkpoint, presets
from stidi_rs.cli import main
from stidi_rs.trainer import Trainer, evaluate, synaptic_fanout


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


def test_on_epoch_sees_each_validated_epoch_and_may_stop_the_run(tmp_path):
    x, y = fake_images(40)
    net = tiny()
    trainer = Trainer(
        net, sr.STiDiBP(net, lr=3.0), epochs=3, seed=1, out_dir=tmp_path, progress=False
    )
    seen = []

    class Stop(Exception):
        pass

    def on_epoch(record):
        seen.append((record["epoch"], record["val"]["accuracy"]))
        if record["epoch"] == 2:
            raise Stop

    trainer.on_epoch = on_epoch
    with pytest.raises(Stop):
        trainer.fit(x, y, val=(x[:10], y[:10]))
    assert [epoch for epoch, _ in seen] == [1, 2]
    assert all(0 <= acc <= 1 for _, acc in seen)
    # the stopping epoch is kept: in the history and in the checkpoint
    assert trainer.epoch == 2 and len(trainer.history) == 2
    assert Trainer.resume(tmp_path / "last.npz", progress=False).epoch == 2


def test_readout_epochs_freeze_the_layers_below_the_output():
    x, y = fake_images(60)

    def run(epochs, readout_epochs):
        net = tiny()
        guard = sr.Homeostasis(low=0.2, high=0.5, delta=0.05, probe=10)
        history = Trainer(
            net,
            sr.STiDiBP(net, lr=3.0),
            epochs=epochs,
            readout_epochs=readout_epochs,
            batch_size=2,
            progress=False,
            homeostasis=guard,
        ).fit(x, y)
        return net, history

    one, _ = run(1, 0)
    net, history = run(3, 2)
    assert [h["readout_only"] for h in history] == [False, True, True]
    assert history[0]["homeostasis_nudges"] > 0  # so pausing it below is observable
    assert [h["homeostasis_nudges"] for h in history[1:]] == [0, 0]
    assert [h["lr"] for h in history[1:]] == [[0.0, 3.0], [0.0, 3.0]]
    assert np.array_equal(net.spiking_layers[0].weight, one.spiking_layers[0].weight)
    assert not np.array_equal(net.spiking_layers[-1].weight, one.spiking_layers[-1].weight)
    with pytest.raises(ValueError, match=r"readout_epochs must be in \[0, epochs=3\], got 4"):
        Trainer(net, sr.STiDiBP(net), epochs=3, readout_epochs=4)


def test_a_readout_epoch_ends_on_the_mean_of_its_output_weights():
    x, y = fake_images(2100)  # three chunks of 1,024 images
    net = tiny()
    history = Trainer(
        net, sr.STiDiBP(net, lr=3.0), epochs=1, readout_epochs=1, seed=4, progress=False
    ).fit(x, y)
    manual = tiny()
    rule = sr.STiDiBP(manual, lr=[0.0, 3.0])
    order = np.random.default_rng([4, 0]).permutation(len(x))
    snapshots = []
    for lo in range(0, len(x), 1024):
        idx = order[lo : lo + 1024]
        rule.steps(sr.encode(x[idx][:, None]), y[idx], 1)
        snapshots.append(manual.spiking_layers[-1].weight.copy())
    assert len(snapshots) == 3 and not np.array_equal(snapshots[0], snapshots[-1])
    assert np.allclose(net.spiking_layers[-1].weight, np.mean(snapshots, axis=0), atol=1e-12)
    assert np.array_equal(net.spiking_layers[0].weight, manual.spiking_layers[0].weight)
    assert history[0]["lr"] == [0.0, 3.0]


def test_readout_average_averages_only_the_last_readout_epochs(tmp_path):
    x, y = fake_images(2100)  # three chunks of 1,024 images

    def trainer(net, **kw):
        return Trainer(net, sr.STiDiBP(net, lr=3.0), seed=4, progress=False, **kw)

    net = tiny()
    history = trainer(net, epochs=2, readout_epochs=2, readout_average=1).fit(x, y)
    assert [h["readout_averaged"] for h in history] == [False, True]
    manual = tiny()
    rule = sr.STiDiBP(manual, lr=[0.0, 3.0])
    plain, snapshots = [], []
    for epoch, ends in ((0, plain), (1, snapshots)):
        order = np.random.default_rng([4, epoch]).permutation(len(x))
        for lo in range(0, len(x), 1024):
            idx = order[lo : lo + 1024]
            rule.steps(sr.encode(x[idx][:, None]), y[idx], 1)
            ends.append(manual.spiking_layers[-1].weight.copy())
    # the plain epoch hands its last weights on, not their mean, to the averaged one
    assert not np.allclose(plain[-1], np.mean(plain, axis=0), atol=1e-6)
    assert np.allclose(net.spiking_layers[-1].weight, np.mean(snapshots, axis=0), atol=1e-12)
    none = tiny()
    trainer(none, epochs=2, readout_epochs=2, readout_average=0).fit(x, y)
    assert np.allclose(none.spiking_layers[-1].weight, snapshots[-1], atol=1e-12)
    # saved with the run, so a resumed run averages the same epochs
    run = tiny()
    trainer(run, epochs=1, readout_epochs=1, readout_average=0, out_dir=tmp_path).fit(x, y)
    resumed = Trainer.resume(tmp_path / "last.npz", epochs=2, readout_epochs=2, progress=False)
    assert resumed.readout_average == 0
    too_many = r"readout_average must be in \[0, readout_epochs=1\], got 2"
    with pytest.raises(ValueError, match=too_many):
        trainer(tiny(), epochs=2, readout_epochs=1, readout_average=2)
    with pytest.raises(ValueError, match="give readout_epochs"):
        trainer(tiny(), epochs=2, readout_average=1)


def test_readout_lr_restarts_the_output_rate_and_survives_resume(tmp_path):
    x, y = fake_images(60)

    def trainer(net, **kw):
        return Trainer(net, sr.STiDiBP(net, lr=[2.0, 4.0]), lr_decay=0.5, progress=False, **kw)

    full = tiny()
    history = trainer(full, epochs=4, readout_epochs=2, readout_lr=8.0).fit(x, y)
    assert [h["lr"] for h in history] == [[2.0, 4.0], [1.0, 2.0], [0.0, 8.0], [0.0, 4.0]]
    plain = trainer(tiny(), epochs=4, readout_epochs=2).fit(x, y)
    assert [h["lr"] for h in plain[2:]] == [[0.0, 1.0], [0.0, 0.5]]
    # the same run, stopped after its first read-out epoch and resumed
    net = tiny()
    trainer(net, epochs=3, readout_epochs=1, readout_lr=8.0, out_dir=tmp_path).fit(x, y)
    resumed = Trainer.resume(tmp_path / "last.npz", epochs=4, readout_epochs=2, progress=False)
    assert resumed.readout_lr == 8.0
    resumed.fit(x, y)
    for a, b in zip(full.spiking_layers, resumed.net.spiking_layers):
        assert np.array_equal(a.weight, b.weight)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="readout_lr must be positive and finite"):
            trainer(tiny(), epochs=2, readout_epochs=1, readout_lr=bad)
    with pytest.raises(ValueError, match="give readout_epochs"):
        trainer(tiny(), epochs=2, readout_lr=1.0)


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


def test_plot_records_of_a_resumed_run_start_at_epoch_one(tmp_path):
    from stidi_rs.cli import _run_records
    from stidi_rs.plots import read_metrics

    x, y = fake_images(60)
    net = tiny()
    Trainer(net, sr.STiDiBP(net, lr=3.0), epochs=2, out_dir=tmp_path, progress=False).fit(x, y)
    (tmp_path / "metrics.jsonl").unlink()  # as if the run had been resumed into a new file
    resumed = Trainer.resume(tmp_path / "last.npz", epochs=3, progress=False)
    resumed.fit(x, y)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"test": {"accuracy": 0.5}, "test_size": 60}) + "\n")
    _, config = checkpoint.load(tmp_path / "last.npz")
    epochs, test = read_metrics(_run_records(tmp_path / "metrics.jsonl", config))
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    assert test["accuracy"] == 0.5 and test["after_epoch"] == 3


def test_homeostasis_nudges_silent_and_overactive_hidden_units_only():
    net = tiny()
    conv, dense = net.layers[0], net.layers[2]
    w = np.full(conv.weight.shape, 1.0)
    w[1] = -1.0  # channel 1 can never fire
    conv.weight = w
    out_before = dense.weight.copy()
    x = sr.encode(fake_images(20)[0][:, None])
    rate = (net.forward(x)[0] < net.tmax).mean(axis=(0, 2, 3))
    assert rate[1] == 0 and rate[0] > 0.6  # silent and overactive channels
    nudged = sr.Homeostasis(low=0.1, high=0.6, delta=0.25, probe=20)(net, x)
    assert nudged == int((rate < 0.1).sum() + (rate > 0.6).sum())
    assert np.allclose(conv.weight[1], -0.75) and np.allclose(conv.weight[0], 0.75)
    assert np.array_equal(dense.weight, out_before)  # the output layer is left alone
    with pytest.raises(ValueError, match="low < high"):
        sr.Homeostasis(low=0.7, high=0.6)


def test_resume_with_homeostasis_equals_an_uninterrupted_run(tmp_path):
    x, y = fake_images(60)
    guard = {"low": 0.2, "high": 0.5, "delta": 0.05, "probe": 10}
    full = tiny()
    Trainer(
        full,
        sr.STiDiBP(full, lr=3.0),
        epochs=2,
        batch_size=2,
        seed=1,
        progress=False,
        homeostasis=sr.Homeostasis(**guard),
    ).fit(x, y)
    net = tiny()
    Trainer(
        net,
        sr.STiDiBP(net, lr=3.0),
        epochs=1,
        batch_size=2,
        seed=1,
        out_dir=tmp_path,
        progress=False,
        homeostasis=sr.Homeostasis(**guard),
    ).fit(x, y)
    resumed = Trainer.resume(tmp_path / "last.npz", epochs=2, progress=False)
    assert resumed.homeostasis.config() == guard
    history = resumed.fit(x, y)
    assert history[0]["homeostasis_nudges"] > 0
    for a, b in zip(full.spiking_layers, resumed.net.spiking_layers):
        assert np.array_equal(a.weight, b.weight)


def test_synaptic_fanout_counts_conv_connections():
    net = tiny()
    conv = net.layers[0]
    big = toeplitz(np.ones((3, 1, 3, 3)), 8, 8)  # (outputs, inputs) connection matrix
    assert np.array_equal(synaptic_fanout(net)[0], big.sum(axis=0).astype(int))
    assert conv.out_channels * 9 == synaptic_fanout(net)[0].max()
    assert (synaptic_fanout(net)[2] == 4).all()


def test_evaluate_reports_consistent_metrics():
    net = tiny()
    x, y = fake_images(30)
    m = evaluate(net, sr.encode(x[:, None]), y, batch_size=7)
    assert np.sum(m["confusion"]) == 30
    assert m["accuracy"] == pytest.approx(np.trace(m["confusion"]) / 30)
    assert m["accuracy"] == pytest.approx((net.predict(sr.encode(x[:, None])) == y).mean())
    assert sum(m["cases"].values()) == 30
    out = net.forward(sr.encode(x[:, None]))
    assert m["spikes_per_layer"][2] == pytest.approx((out[2] < 256).sum() / 30)
    assert m["silent_fraction"][0] == pytest.approx(1 - (out[0] < 256).any(axis=0).mean())


def test_cli_rejects_bad_flags_with_one_line_reason():
    proc = subprocess.run(
        [sys.executable, "-m", "stidi_rs.cli", "train", "--epochs", "0"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "--epochs must be at least 1" in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "stidi_rs.cli", "eval", "missing.npz"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "missing.npz does not exist" in proc.stderr


def test_cli_lr_per_layer_must_match_the_preset(tmp_path, capsys):
    args = ["train", "--preset", "dense", "--out", str(tmp_path / "run"), "--no-progress"]
    assert main([*args, "--lr", "1,2,3"]) == 2
    assert "lr needs one value per spiking layer (2), got 3" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--lr", "1,fast"])
    assert exit_info.value.code == 2
    assert "not a number or a comma-separated list: '1,fast'" in capsys.readouterr().err


def test_cli_readout_lr_reaches_the_trainer(tmp_path, capsys):
    args = ["train", "--preset", "dense", "--out", str(tmp_path / "run"), "--no-progress"]
    assert main([*args, "--readout-epochs", "0", "--readout-lr", "2"]) == 2
    assert "readout_lr sets the rate of read-out epochs" in capsys.readouterr().err
    assert main([*args, "--readout-lr", "nan"]) == 2
    assert "command line: readout_lr = nan must be a finite number > 0" in capsys.readouterr().err
    assert main([*args, "--readout-epochs", "1", "--readout-average", "2"]) == 2
    assert "readout_average must be in [0, readout_epochs=1], got 2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*args, "--readout-average", "-1"])
    assert "--readout-average must be at least 0" in capsys.readouterr().err


def test_cli_resume_refuses_flags_it_would_ignore(tmp_path, capsys):
    ckpt = str(tmp_path / "last.npz")
    assert main(["train", "--resume", ckpt, "--lr", "3", "--displacement", "causal"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--lr, --displacement would be ignored" in err
    assert main(["train", "--resume", ckpt, "--seed", "0", "--no-homeostasis"]) == 2
    assert "--seed, --no-homeostasis would be ignored" in capsys.readouterr().err
    assert main(["train", "--resume", ckpt, "--readout-lr", "3"]) == 2
    assert "--readout-lr would be ignored" in capsys.readouterr().err
    assert main(["train", "--resume", ckpt, "--readout-average", "1"]) == 2
    assert "--readout-average would be ignored" in capsys.readouterr().err
    assert main(["train", "--resume", ckpt, "--gamma", "5"]) == 2
    assert "--gamma would be ignored" in capsys.readouterr().err
    # --epochs is how a resumed run is extended: it passes the guard (and meets the
    # missing file)
    assert main(["train", "--resume", ckpt, "--epochs", "4", "--readout-epochs", "1"]) == 2
    assert "last.npz" in capsys.readouterr().err


def test_cli_gamma_must_be_positive(tmp_path, capsys):
    args = ["train", "--preset", "dense", "--out", str(tmp_path / "run"), "--no-progress"]
    for bad in ("0", "-1", "nan", "inf"):
        assert main([*args, "--gamma", bad]) == 2
        assert f"gamma must be positive and finite, got {float(bad)!r}" in capsys.readouterr().err


@pytest.mark.needs_data
def test_cli_gamma_reaches_the_rule_and_the_checkpoint(tmp_path):
    out = tmp_path / "run"
    tiny_run = "train --preset dense --train-size 200 --test-size 100 --epochs 1 --readout-epochs 0"
    args = [*tiny_run.split(), "--out", str(out), "--no-progress"]
    assert main([*args, "--gamma", "7.5"]) == 0
    first = checkpoint.load(out / "last.npz")
    assert first[1]["trainer"]["rule"]["gamma"] == 7.5
    assert main([*args, "--force"]) == 0  # the preset's margin when not given
    default = checkpoint.load(out / "last.npz")
    assert default[1]["trainer"]["rule"]["gamma"] == 3.0
    # a wider margin moves output targets, so the trained weights differ
    assert not np.array_equal(first[0].layers[-1].weight, default[0].layers[-1].weight)


@pytest.mark.needs_data
def test_cli_trains_evaluates_and_resumes_on_mnist(tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "train",
        "--preset",
        "dense",
        "--train-size",
        "2000",
        "--test-size",
        "1000",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(args) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    accuracy = records[-1]["test"]["accuracy"]
    assert accuracy > 0.5, f"test accuracy {accuracy} after the preset's epochs on 2,000 images"
    assert main(args) == 2  # refuses to overwrite a run
    capsys.readouterr()
    assert main(["eval", str(out / "last.npz"), "--test-size", "1000", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(accuracy)


@pytest.mark.needs_data
def test_cli_plot_renders_a_run(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--preset",
                "dense",
                "--train-size",
                "500",
                "--test-size",
                "200",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    assert main(["plot", str(out), "--samples", "4"]) == 0
    for name in ("training_curves", "confusion", "spike_time_maps", "output_raster"):
        assert (out / "plots" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["plot", str(tmp_path / "nothing")]) == 2


def test_cli_bench_has_its_own_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--help"])
    assert exit_info.value.code == 0
    assert "--quick" in capsys.readouterr().out


def test_cli_info_names_threads_kernels_and_every_preset(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"engine threads: {sr.num_threads()}, sweep kernels: {sr.sweep_kernels()}" in out
    assert sr.sweep_kernels() in ("avx2", "portable")
    for name in presets.PRESETS:
        assert f"preset {name} " in out


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


@pytest.mark.needs_data
def test_cli_trains_with_the_exact_rule_and_its_settings(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--preset", "dense", "--rule", "exact", "--lr", "0.01"]
    args += ["--rule-set", "silent_push=1", "--rule-set", "loss=stidi"]
    args += ["--train-size", "1000", "--test-size", "500", "--epochs", "2"]
    assert main([*args, "--out", str(out), "--no-progress"]) == 0
    _, config = checkpoint.load(out / "last.npz")
    rule = config["trainer"]["rule"]
    assert (rule["name"], rule["silent_push"], rule["loss"]) == ("exact", 1.0, "stidi")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["test"]["accuracy"] > 0.5
    with pytest.raises(SystemExit):  # argparse: not KEY=VALUE
        main(["train", "--rule-set", "nonsense", "--out", str(tmp_path / "b")])


def test_cli_names_an_unknown_rule_setting(tmp_path, capsys):
    args = ["train", "--rule", "exact", "--rule-set", "momentum=0.9", "--out", str(tmp_path)]
    assert main(args) != 0
    assert "momentum" in capsys.readouterr().err


def test_the_epoch_bar_shows_on_request_and_stays_out_of_logs(capsys):
    x, y = fake_images(40)
    net = tiny()
    Trainer(net, sr.STiDiBP(net, lr=3.0), epochs=2, readout_epochs=1, progress=True).fit(x, y)
    err = capsys.readouterr().err
    assert "epoch 1/2:" in err and "epoch 2/2 (read-out):" in err
    assert "40/40" in err and "img/s" in err and "acc=" in err
    # the default draws only on a terminal, and captured stderr is none
    Trainer(net, sr.STiDiBP(net, lr=3.0), epochs=1).fit(x, y)
    assert capsys.readouterr().err == ""

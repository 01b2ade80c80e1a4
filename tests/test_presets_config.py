"""Presets are complete recipes; run configs (TOML) resolve, round-trip and repeat runs."""

import json

import numpy as np
import pytest
import stidi_rs as sr
from stidi_rs import checkpoint, config, presets, shipped
from stidi_rs.cli import _new_trainer, main
from stidi_rs.learning import make_rule

PAIRS = [(name, d) for name, p in presets.PRESETS.items() for d in p.headline]


def test_there_are_few_presets_and_each_builds_for_each_dataset():
    assert len(presets.PRESETS) <= 8
    for name, preset in presets.PRESETS.items():
        assert set(preset.headline) == set(presets.DATASETS), name
        for dataset in presets.DATASETS:
            net = preset.build(dataset=dataset)
            assert net.n_classes == 10, name
            assert all(layer.binary == preset.binary for layer in net.spiking_layers)
    with pytest.raises(ValueError, match="unknown preset"):
        presets.get("nope")
    with pytest.raises(ValueError, match="unknown dataset 'cifar'"):
        presets.get("dense").settings("cifar")


@pytest.mark.parametrize("name, dataset", PAIRS)
def test_a_preset_alone_sets_up_the_run_of_its_shipped_network(name, dataset, tmp_path):
    """`--preset NAME --dataset D` and nothing else builds the network and trainer
    state that the shipped network's run recorded: same architecture, PSP and
    thresholds, rule settings, schedule, read-out, augmentation, validation split and
    homeostasis. Training is deterministic, so the same run follows."""
    _, saved = checkpoint.load(shipped.pretrained_path(name, dataset))
    trainer = _new_trainer(config.resolve(flags={"preset": name, "dataset": dataset}), tmp_path)
    ours, theirs = trainer.state(), saved["trainer"]
    assert ours["calibrate"] == theirs.get("calibrate")
    if trainer.calibrate is not None:
        # Calibration sets these thresholds as training starts; the run recorded them,
        # and training leaves thresholds alone.
        recorded = theirs["history"][0]["calibrated_thresholds"]
        shipped_thresholds = [
            spec["threshold"] for spec in saved["network"]["layers"] if "threshold" in spec
        ]
        assert shipped_thresholds == recorded
        for layer, fraction, th in zip(trainer.net.spiking_layers, trainer.calibrate, recorded):
            if fraction > 0:
                layer.threshold = th
    assert checkpoint.network_config(trainer.net) == saved["network"]
    for key in ("epochs", "batch_size", "lr_decay", "readout_epochs", "seed", "homeostasis"):
        assert ours[key] == theirs[key], key
    for key in ("readout_lr", "readout_average"):
        assert ours[key] == theirs.get(key), key
    assert (ours["augment"] or {"shift": 0, "flip": False}) == (
        theirs.get("augment") or {"shift": 0, "flip": False}
    )
    assert ours["rule"]["name"] == theirs["rule"]["name"] == presets.get(name).rule
    # A knob added after the network shipped is absent from its record: the run
    # used what is now its default.
    defaults = make_rule(ours["rule"]["name"], trainer.net).config()
    recorded = {**defaults, **theirs["rule"]}
    settings = [{k: v for k, v in r.items() if k != "name"} for r in (ours["rule"], recorded)]
    assert settings[0] == settings[1]
    for key in ("dataset", "train_size", "val_size"):
        assert ours["config"][key] == theirs["config"][key], key


@pytest.mark.parametrize("name", ["csnn", "csnn-binary"])
def test_the_one_conv_presets_read_conv1_and_its_pool_out_directly(name):
    """Thresholds 4 and 100 at tau1 = 40, scaled by 40 / tau1 for a slower rise."""
    for dataset in presets.DATASETS:
        net = presets.get(name).build(dataset=dataset)
        conv, pool, out = net.layers
        assert (type(conv), type(pool), type(out)) == (sr.Conv2d, sr.MaxPool2d, sr.Dense)
        tau = net.psp.tau_rise
        assert (conv.in_channels, conv.kernel_size, conv.threshold) == (1, 5, 4.0 * 40 / tau)
        assert out.in_features == conv.out_channels * 144 and out.threshold == 100 * 40 / tau


def test_resolve_layers_preset_then_file_then_flags():
    s = config.resolve(
        file={"preset": "csnn", "epochs": 3, "rule_set": {"gamma": 2.0}},
        flags={"dataset": "fashion-mnist", "epochs": 2, "seed": None},
    )
    assert (s["preset"], s["dataset"], s["epochs"], s["seed"]) == (
        "csnn",
        "fashion-mnist",
        2,
        0,
    )
    assert s["lr"] == [3.2, 3.2]  # the preset's Fashion-MNIST rates
    assert s["rule_set"] == {"conv_reduce": "mean", "gamma": 2.0}  # merged key by key
    assert "augment_shift" not in s or s["augment_shift"] == 0
    # Another rule than the preset's drops the preset's rule settings, not the rest.
    s = config.resolve(flags={"preset": "csnn", "rule": "exact"})
    assert s["rule"] == "exact" and not set(config.RULE_KEYS) & set(s)
    assert s["epochs"] == 24


@pytest.mark.parametrize(
    "settings, match",
    [
        ({"epoch": 3}, "unknown setting 'epoch'"),
        ({"epochs": 0}, "epochs = 0 must be an integer >= 1"),
        ({"epochs": 2.5}, "epochs = 2.5 must be an integer"),
        ({"lr": "fast"}, "lr = 'fast' must be a number or a list"),
        ({"preset": "dense-huge"}, "preset = 'dense-huge' must be one of"),
        ({"augment_flip": 1}, "augment_flip = 1 must be true or false"),
        ({"rule_set": 3}, "rule_set = 3 must be a table"),
    ],
)
def test_a_bad_config_file_is_an_error_naming_the_setting(tmp_path, settings, match):
    path = tmp_path / "run.toml"
    path.write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in settings.items()))
    with pytest.raises(ValueError, match=match):
        config.load(path)


def test_config_errors_for_missing_and_broken_files(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="config file .*nope.toml does not exist"):
        config.load(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("epochs = = 3\n")
    with pytest.raises(ValueError, match="bad.toml is not valid TOML"):
        config.load(tmp_path / "bad.toml")
    (tmp_path / "typo.toml").write_text("learning_rate = 3\n")
    assert main(["train", "--config", str(tmp_path / "typo.toml"), "--no-progress"]) == 2
    assert "unknown setting 'learning_rate'" in capsys.readouterr().err


def test_dump_and_load_round_trip(tmp_path):
    s = config.resolve(flags={"preset": "csnn", "dataset": "mnist", "rule_set": {"beta": 2.0}})
    assert config.load(config.dump(s, tmp_path / "c.toml")) == s


@pytest.mark.needs_data
def test_a_run_writes_its_config_and_the_config_repeats_the_run(tmp_path, capsys):
    first = tmp_path / "first"
    run = "--preset dense --train-size 300 --val-size 100 --test-size 100 --epochs 2 --lr 6.4"
    assert main(["train", *run.split(), "--out", str(first), "--no-progress"]) == 0
    written = config.load(first / "config.toml")
    assert written["lr"] == 6.4 and written["epochs"] == 2 and written["val_size"] == 100
    assert written["displacement"] == "causal"  # from the preset, written out
    again = tmp_path / "again"
    args = ["train", "--config", str(first / "config.toml"), "--out", str(again), "--no-progress"]
    assert main(args) == 0
    assert config.load(again / "config.toml") == written
    logs = [(d / "metrics.jsonl").read_text().splitlines() for d in (first, again)]
    strip = [
        [
            {k: v for k, v in json.loads(line).items() if k not in ("seconds", "images_per_s")}
            for line in log
        ]
        for log in logs
    ]
    assert strip[0] == strip[1]
    a, _ = checkpoint.load(first / "last.npz")
    b, _ = checkpoint.load(again / "last.npz")
    for la, lb in zip(a.spiking_layers, b.spiking_layers):
        np.testing.assert_array_equal(la.weight, lb.weight)
    # A flag given with --config overrides the file.
    other = tmp_path / "other"
    assert main([*args[:3], "--epochs", "1", "--out", str(other), "--no-progress"]) == 0
    assert config.load(other / "config.toml")["epochs"] == 1


def test_resume_refuses_a_config(tmp_path, capsys):
    (tmp_path / "c.toml").write_text("epochs = 2\n")
    args = ["train", "--resume", str(tmp_path / "last.npz"), "--config", str(tmp_path / "c.toml")]
    assert main(args) == 2
    assert "--config" in capsys.readouterr().err


def test_widths_thresholds_and_psp_vary_a_preset():
    """csnn on MNIST with 128 channels is the net csnn ships for Fashion-MNIST."""
    wide = presets.get("csnn").build(widths=[128])
    fashion = presets.get("csnn").build(dataset="fashion-mnist")
    assert checkpoint.network_config(wide) == checkpoint.network_config(fashion)
    net = presets.get("csnn").build(widths=[16], thresholds=[8, 50], tau_rise=80)
    conv1, _, out = net.layers
    assert conv1.out_channels == 16 and out.in_features == 16 * 144
    assert [conv1.threshold, out.threshold] == [8, 50]
    assert net.psp == sr.PSP(80.0)
    ramp = presets.get("csnn-deep").build(widths=[16, 128], thresholds=[2, 3, 4])
    conv1, _, conv2, _, out = ramp.layers
    assert (conv1.out_channels, conv2.in_channels, conv2.out_channels) == (16, 16, 128)
    assert [conv1.threshold, conv2.threshold, out.threshold] == [2, 3, 4]
    assert ramp.neuron == "ramp" and ramp.psp == sr.PSP(ramp.tmax)
    assert out.in_features == 128 * 25 and out.out_features == 10
    dense = presets.get("dense").build(widths=[1000])
    assert (dense.layers[0].out_features, dense.layers[1].in_features) == (1000, 1000)
    with pytest.raises(ValueError, match="widths needs 2 size"):
        presets.get("csnn-deep").build(widths=[32])
    with pytest.raises(ValueError, match="thresholds needs 2 value"):
        presets.get("dense").build(thresholds=[1.0])


def test_a_recipes_readout_settings_leave_with_its_readout_epochs():
    s = config.resolve(flags={"preset": "csnn-binary", "readout_epochs": 0})
    assert "readout_lr" not in s and s["readout_epochs"] == 0
    s = config.resolve(flags={"preset": "csnn-binary", "readout_epochs": 0, "readout_lr": 3.0})
    assert s["readout_lr"] == 3.0  # given, so kept (and the trainer says why it is wrong)

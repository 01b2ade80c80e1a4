"""The command line: flag checks, and train, eval, plot and info end to end."""

import json
import subprocess
import sys

import numpy as np
import pytest
import stidi_rs as sr
from helpers import fake_images, tiny
from stidi_rs import checkpoint, presets
from stidi_rs.cli import main
from stidi_rs.trainer import Trainer


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

"""stidi-rs sweep: resumable, prunable, parallel searches that never read the test set."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from stidi_rs import config, datasets, presets, sweep
from stidi_rs.cli import main

optuna = pytest.importorskip("optuna", reason='needs the sweep extra: pip install ".[test]"')

DATA = os.environ.get("STIDI_RS_DATA")
TINY = ["--preset", "dense", "--train-size", "300", "--val-size", "100", "--epochs", "1"]


@pytest.fixture
def train_only(tmp_path, monkeypatch):
    """A data root holding MNIST's training files only, and no other place the test
    files could come from (no $STIDI_RS_DATA, an empty cache, a mirror that fails):
    reading the test set fails."""
    found = datasets.find("mnist", "train", DATA)
    assert found is not None, f"no MNIST training files in {DATA}"
    root = tmp_path / "train-only"
    (root / "mnist").mkdir(parents=True)
    for path in found:
        (root / "mnist" / path.name).symlink_to(path.resolve())  # DATA may be relative
    monkeypatch.delenv("STIDI_RS_DATA")
    monkeypatch.setenv("STIDI_RS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("STIDI_RS_MIRRORS", "http://127.0.0.1:9/")
    with pytest.raises(datasets.DownloadError):
        datasets.load("mnist", "test", root=root, progress=False)
    return root


def _study(out: Path, name: str = "dense-mnist"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'study.db'}")


def _states(study) -> list[str]:
    return [t.state.name for t in sweep.counted(study.get_trials())]


@pytest.mark.needs_data
def test_a_sweep_resumes_to_its_total_without_the_test_set(train_only, tmp_path, monkeypatch):
    out = tmp_path / "sweep"
    args = ["sweep", *TINY, "--data", str(train_only), "--out", str(out), "--no-progress"]
    assert main([*args, "--trials", "2"]) == 0
    first = {t.number: t.datetime_start for t in _study(out).get_trials()}
    assert len(first) == 2
    assert main([*args, "--trials", "3"]) == 0
    trials = _study(out).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    # the first two were kept, not run again; the new one is a new draw
    assert {t.number: t.datetime_start for t in trials[:2]} == first
    assert trials[2].params != trials[0].params
    assert all(t.intermediate_values and t.value == t.intermediate_values[1] for t in trials)
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [r["trial"] for r in rows] == ["0", "1", "2"]
    assert all(r["state"] == "complete" and float(r["val_epoch_1"]) >= 0 for r in rows)
    # best.toml holds the best trial's settings, and train takes it
    best = max(trials, key=lambda t: t.value)
    settings = config.load(out / "best.toml")
    assert settings == best.user_attrs["settings"]
    assert settings["lr"] == [best.params["lr.0"], best.params["lr.1"]]
    assert settings["val_size"] == 100 and "test_size" not in settings
    # the same study again: nothing left to run
    assert main([*args, "--trials", "3"]) == 0
    assert len(_study(out).get_trials()) == 3
    monkeypatch.setenv("STIDI_RS_DATA", DATA)
    run = tmp_path / "run"
    train = ["train", "--config", str(out / "best.toml"), "--out", str(run)]
    assert main([*train, "--test-size", "50", "--no-progress"]) == 0
    assert config.load(run / "config.toml") == {**settings, "test_size": 50}
    # the same settings and seed: the same network, so the same validation accuracy
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert record["val"]["accuracy"] == best.value


@pytest.mark.needs_data
def test_a_study_refuses_other_settings(tmp_path, capsys):
    out = tmp_path / "sweep"
    args = ["sweep", *TINY, "--out", str(out), "--no-progress", "--trials", "1"]
    assert main(args) == 0
    capsys.readouterr()
    assert main([*args[:-2], "--trials", "2", "--lr-decay", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "was run with other settings (lr_decay)" in err
    assert len(_study(out).get_trials()) == 1


@pytest.mark.needs_data
def test_a_trial_falling_behind_is_pruned(tmp_path):
    out = tmp_path / "sweep"
    out.mkdir()
    (tmp_path / "space.toml").write_text('["thresholds.0"]\nchoices = [30.0, 100000.0]\n')
    study = optuna.create_study(
        study_name="prune", storage=f"sqlite:///{out / 'study.db'}", direction="maximize"
    )
    # a learning network first, then one whose hidden layer never fires
    study.enqueue_trial({"thresholds.0": 30.0})
    study.enqueue_trial({"thresholds.0": 100000.0})
    args = ["sweep", *TINY[:-1], "2", "--readout-epochs", "0", "--study", "prune"]
    args += ["--space", str(tmp_path / "space.toml"), "--prune-after", "1"]
    assert main([*args, "--trials", "2", "--out", str(out), "--no-progress"]) == 0
    trials = _study(out, "prune").get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "PRUNED"]
    assert list(trials[0].intermediate_values) == [1, 2]
    assert list(trials[1].intermediate_values) == [1]  # stopped after its first epoch
    assert trials[1].intermediate_values[1] < trials[0].intermediate_values[1]
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [r["state"] for r in rows] == ["complete", "pruned"]


@pytest.mark.needs_data
def test_jobs_run_trials_in_processes_sharing_the_cores(tmp_path, monkeypatch):
    import multiprocessing.context

    monkeypatch.setenv("RAYON_NUM_THREADS", "4")  # the cores to share (the workers inherit it)
    started = []
    spawn_start = multiprocessing.context.SpawnProcess.start
    monkeypatch.setattr(
        multiprocessing.context.SpawnProcess,
        "start",
        lambda self: (spawn_start(self), started.append(self.pid)),
    )
    out = tmp_path / "sweep"
    args = ["sweep", *TINY, "--out", str(out), "--no-progress", "--jobs", "2", "--trials", "3"]
    assert main(args) == 0
    assert len(started) == 2
    trials = sweep.counted(_study(out).get_trials())
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    # tiny trials: one worker may take all three before the other has imported
    pids = {int(t.user_attrs["worker"].split(":")[1]) for t in trials}
    assert pids <= set(started) and os.getpid() not in pids
    assert {t.user_attrs["threads"] for t in trials} == {2}


@pytest.mark.needs_data
def test_a_trial_started_past_the_total_is_surplus(tmp_path):
    """Two processes that both see one trial missing both start one: the later one
    finds the total filled by the trials before it, and stops without training."""
    out = tmp_path / "sweep"
    args = ["sweep", *TINY, "--out", str(out), "--no-progress", "--trials", "2"]
    assert main(args) == 0
    study = _study(out)
    late = study.ask()
    with pytest.raises(sweep._Surplus):
        sweep._objective(late, {"trials": 2}, None, None)
    study.tell(late, state=optuna.trial.TrialState.FAIL)
    trials = _study(out).get_trials()
    assert trials[2].user_attrs == {"surplus": True} and not trials[2].params
    assert [t.number for t in sweep.counted(trials)] == [0, 1]
    assert main(args) == 0  # nothing missing: no trial is started
    assert len(_study(out).get_trials()) == 3
    assert [r["trial"] for r in csv.DictReader((out / "trials.csv").open())] == ["0", "1"]


def _cli(*args, env=None) -> subprocess.Popen:
    code = "import sys; from stidi_rs.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.needs_data
def test_two_processes_share_a_journal_storage(tmp_path):
    journal = f"journal:{tmp_path / 'study.log'}"
    args = ["sweep", *TINY, "--storage", journal, "--trials", "5", "--no-progress"]
    procs = [_cli(*args, "--out", str(tmp_path / f"out{i}")) for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    study = optuna.load_study(study_name="dense-mnist", storage=sweep.storage(journal))
    trials = sweep.counted(study.get_trials())
    assert [t.state.name for t in trials] == ["COMPLETE"] * 5
    assert len({t.user_attrs["worker"] for t in trials}) == 2
    assert len({tuple(t.params.values()) for t in trials}) == 5


@pytest.mark.needs_data
def test_a_trial_left_running_by_a_dead_process_is_run_again(tmp_path):
    out = tmp_path / "sweep"
    args = ["sweep", *TINY, "--out", str(out), "--no-progress"]
    assert main([*args, "--trials", "1"]) == 0
    study = _study(out)
    stale = study.ask()  # a trial whose process died mid-run: RUNNING forever
    lr = stale.suggest_float("lr.0", 3.2, 51.2, log=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale.set_user_attr("worker", f"{socket.gethostname()}:{dead.pid}")
    assert main([*args, "--trials", "3"]) == 0
    trials = _study(out).get_trials()
    assert trials[1].state.name == "FAIL" and trials[1].user_attrs["interrupted"]
    retry = [t for t in trials if t.user_attrs.get("retry_of") == 1]
    assert len(retry) == 1 and retry[0].state.name == "COMPLETE"
    assert retry[0].params["lr.0"] == lr
    assert _states(_study(out)) == ["COMPLETE"] * 3
    assert "1" not in [r["trial"] for r in csv.DictReader((out / "trials.csv").open())]


@pytest.mark.needs_data
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill"])
def test_an_interrupted_trial_is_run_again(tmp_path, sig):
    out = tmp_path / "sweep"
    # long enough a trial to be caught running
    args = ["sweep", *TINY[:2], "--train-size", "3000", "--val-size", "100", "--epochs", "3"]
    args += ["--out", str(out), "--no-progress", "--trials", "1", "--pruner", "none"]
    proc = _cli(*args)
    deadline = time.monotonic() + 120
    running = []
    while not running and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
        try:  # read-only: Optuna here could race the sweep creating its tables
            with sqlite3.connect(f"file:{out / 'study.db'}?mode=ro", uri=True) as db:
                running = db.execute(
                    "SELECT t.number FROM trials t JOIN trial_user_attributes a "
                    "ON a.trial_id = t.trial_id WHERE t.state = 'RUNNING' AND a.key = 'settings'"
                ).fetchall()
        except sqlite3.Error:
            running = []
    assert running == [(0,)], proc.communicate()[1]
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == (130 if sig == signal.SIGINT else -signal.SIGKILL), err
    first = _study(out).get_trials()[0]
    assert first.state.name == ("FAIL" if sig == signal.SIGINT else "RUNNING")
    assert main(args) == 0
    trials = _study(out).get_trials()
    assert trials[0].state.name == "FAIL"
    assert [(t.state.name, t.user_attrs.get("retry_of")) for t in trials[1:]] == [("COMPLETE", 0)]
    assert trials[1].params == trials[0].params


def test_a_bad_space_file_names_the_parameter(tmp_path, capsys):
    space = tmp_path / "space.toml"
    cases = {
        '["lr.7"]\nlow = 1\nhigh = 2\n[tau_rise]\nlow = 20\nhigh = 80\n': "'lr.7'",
        "[seed]\nchoices = [0, 1]\n": "'seed'",
        "[lr_decay]\nlow = 0.9\nhigh = 0.5\n": "'lr_decay' needs low < high",
        "[tau_rise]\nlow = 0\nhigh = 80\nlog = true\n": "'tau_rise' is log-spaced",
        "[epochs]\nlow = 1.5\nhigh = 3\n": "'epochs' takes whole numbers",
        "[tau_rise]\nlow = 20\nhigh = 80\nstep = 5\n": "'tau_rise' has unknown key(s) step",
        '[displacement]\nchoices = ["exact", "fast"]\n': "'displacement' choice 'fast'",
        '["rule_set.nope"]\nchoices = [1]\n': "'rule_set.nope'",
    }
    for text, named in cases.items():
        space.write_text(text)
        args = ["sweep", *TINY, "--space", str(space), "--out", str(tmp_path / "out")]
        assert main(args) == 2, text
        err = capsys.readouterr().err
        assert named in err and str(space) in err, (text, err)
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_the_default_space_searches_around_the_preset(capsys):
    assert main(["sweep", "--preset", "csnn", "--val-size", "100", "--show-space"]) == 0
    shown = capsys.readouterr().out
    space = {p.name: p for p in sweep.parse_space(config.tomllib.loads(shown), _base("csnn"), "")}
    names = {"lr.0", "lr.1", "thresholds.0", "thresholds.1", "tau_rise", "lr_decay", "readout_lr"}
    assert set(space) == names
    assert space["lr.0"].low < 12.8 < space["lr.0"].high and space["lr.0"].log
    assert space["tau_rise"].low < 80 < space["tau_rise"].high
    assert set(sweep.KNOBS) == set(presets.PRESETS)  # every preset has a default space
    for name in sweep.KNOBS:
        assert sweep.default_space(_base(name))


def _base(preset: str) -> dict:
    return {**config.resolve(None, {"preset": preset}), "val_size": 100}


def test_apply_sets_one_layer_of_a_per_layer_setting():
    base = _base("dense")  # lr 12.8 for both layers
    s = sweep.apply(base, {"lr.1": 3.0, "thresholds.0": 20.0, "rule_set.beta": 0.5})
    assert s["lr"] == [12.8, 3.0] and s["thresholds"] == [20.0, 60.0]
    assert s["rule_set"] == {"beta": 0.5} and base["lr"] == 12.8
    assert sweep.apply(base, {"lr": 5.0, "lr.0": 1.0})["lr"] == [1.0, 5.0]


def finished_study(values):
    study = optuna.create_study(direction="maximize")
    for value in values:
        study.add_trial(optuna.trial.create_trial(value=value))
    return study


def test_the_sweep_bar_starts_from_the_trials_a_resumed_study_has(capsys):
    study = finished_study([0.5, 0.75])
    monitor = sweep._Monitor(5, "sweep dense-mnist", True, study)
    monitor.update(study)
    monitor.close()
    drawn = [f for f in capsys.readouterr().err.rstrip("\n").split("\r") if f]
    assert drawn[0].startswith("sweep dense-mnist:") and "2/5" in drawn[0]
    assert "2/5" in drawn[-1] and "best=75.00% (trial 1)" in drawn[-1]


def test_off_a_terminal_the_sweep_prints_a_line_per_finished_trial(capsys):
    study = finished_study([0.5, 0.75])
    monitor = sweep._Monitor(5, "sweep dense-mnist", None, study)
    monitor.update(study)
    monitor.close()
    lines = capsys.readouterr().err.splitlines()
    assert [line.split("  (")[0] for line in lines] == [
        "trial 0 complete: validation 50.00 %",
        "trial 1 complete: validation 75.00 %",
    ]


def test_a_missing_optuna_names_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna raises ImportError
    assert main(["sweep", *TINY, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "needs Optuna" in err and 'pip install "stidi-rs[sweep]"' in err


@pytest.mark.needs_data
def test_the_summary_ranks_the_trials_and_plot_draws_them(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "sweep"
    args = ["sweep", *TINY, "--out", str(out), "--no-progress", "--trials", "2", "--plot"]
    assert main(args) == 0
    captured = capsys.readouterr()
    printed = captured.out
    trials = sorted(_study(out).get_trials(), key=lambda t: -t.value)
    assert "2 trials: 2 complete, 0 pruned, 0 failed" in printed
    table = printed.split("(by validation):\n")[1].splitlines()
    assert table[0].split()[:3] == ["rank", "trial", "validation"]
    assert [line.split()[:3] for line in table[1:3]] == [
        [str(i + 1), str(t.number), f"{100 * t.value:.2f}"] for i, t in enumerate(trials)
    ]
    assert (out / "history.png").stat().st_size > 0
    # Optuna < 4 estimates importances with scikit-learn: without it, a note says so
    importances = out / "importances.png"
    assert importances.is_file() or "no importances.png" in captured.err

"""Faults and bad input: run directories, divergence, checkpoints, thread counts.

docs/reliability.md lists what is guaranteed; each guarantee names its test here.
"""

from __future__ import annotations

import copy
import io
import json
import os
import re
import subprocess
import sys
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import stidi_rs as sr
from helpers import fake_images, tiny
from stidi_rs import checkpoint
from stidi_rs.cli import main
from stidi_rs.shipped import pretrained_path
from stidi_rs.trainer import Trainer

# A run of a few seconds: the smallest preset on 100 images.
TINY = [
    *"train --preset dense --train-size 100 --test-size 50 --readout-epochs 0".split(),
    "--no-progress",
]


def snapshot(directory):
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def logged_epochs(directory):
    lines = (directory / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["epoch"] for line in lines if "epoch" in json.loads(line)]


# --- run directories --------------------------------------------------------------


@pytest.mark.needs_data
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


@pytest.mark.needs_data
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
    assert sorted(after) == ["config.toml", "last.npz", "metrics.jsonl"]
    assert after["last.npz"] != before["last.npz"]
    assert checkpoint.load(out / "last.npz")[1]["trainer"]["seed"] == 3


@pytest.mark.needs_data
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


@pytest.mark.needs_data
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


@pytest.mark.parametrize("backend", ["rust", "numpy"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_a_diverging_exact_step_restores_weights_and_optimiser_state(backend, optimizer):
    x, y = fake_images(6)
    net = tiny(binary=True)
    net.backend = backend
    times = sr.encode(x.reshape(-1, 1, 8, 8))
    rule = sr.ExactGradient(net, lr=0.01, optimizer=optimizer, silent_push=1.0)
    rule.steps(times, y, 2)  # finite: it trains
    before = [(layer.weight.copy(), layer.packed.copy()) for layer in net.spiking_layers]
    moments = [m.copy() for m in rule._m + rule._v]
    step = rule.adam_step
    # Adam's steps are about lr in size whatever the gradient: only a huge rate overflows.
    if optimizer == "adam":
        rule.lr = [1e308] * len(rule.lr)
    else:
        rule.weight_decay, rule.lr = 1e308, [10.0] * len(rule.lr)
    with pytest.raises(sr.DivergenceError, match=r"step \d+ of this call .* non-finite"):
        rule.steps(times, y, 2)
    for layer, (w, p) in zip(net.spiking_layers, before):
        assert np.array_equal(layer.weight, w) and np.array_equal(layer.packed, p)
    assert all(np.array_equal(a, b) for a, b in zip(rule._m + rule._v, moments))
    assert rule.adam_step == step


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


# --- checkpoints ------------------------------------------------------------------

SHIPPED = pretrained_path("csnn-binary", "fashion-mnist")


def _same(a, b) -> bool:
    (net_a, config_a), (net_b, config_b) = a, b
    return (
        config_a == config_b
        and repr(net_a) == repr(net_b)
        and all(
            np.array_equal(x.weight, y.weight) and np.array_equal(x.packed, y.packed)
            for x, y in zip(net_a.spiking_layers, net_b.spiking_layers)
        )
    )


def _outcome(path, reference) -> str:
    """``"refused"`` (a CheckpointError naming the file) or ``"same"``; anything
    else (another exception, a different network) fails the test."""
    try:
        loaded = checkpoint.load(path, backend="numpy")
    except checkpoint.CheckpointError as err:
        assert str(path) in str(err), err
        return "refused"
    assert _same(loaded, reference), "a damaged file loaded as a different network"
    return "same"


def _structure(data: bytes) -> list[int]:
    """Offsets of the zip's bookkeeping: every member's local header and the start of
    its .npy header, the central directory and its end record."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        infos = zf.infolist()
    out = list(range(data.index(b"PK\x01\x02", infos[-1].header_offset + 30), len(data)))
    for info in infos:
        out += range(info.header_offset, info.header_offset + 30 + len(info.filename) + 64)
    return out


@pytest.mark.parametrize("source", ["shipped", "trained"])
def test_fuzzed_checkpoints_load_identically_or_raise_checkpoint_error(tmp_path, source):
    if source == "shipped":
        data = SHIPPED.read_bytes()
    else:  # real weights, packed signs and a trainer state
        trainer = _trainer(tmp_path, 1)
        trainer.fit(*fake_images(8))
        data = (tmp_path / "last.npz").read_bytes()
    good = tmp_path / "good.npz"
    good.write_bytes(data)
    reference = checkpoint.load(good, backend="numpy")
    rng = np.random.default_rng(41)
    # one bit of every byte of the zip's bookkeeping, and of 500 random bytes
    spots = [*_structure(data), *rng.integers(0, len(data), 500)]
    seen = {"refused": 0, "same": 0}
    bad = tmp_path / "bad.npz"
    bad.write_bytes(data)
    fd = os.open(bad, os.O_WRONLY)
    try:
        for pos in spots:  # flip the byte in place, then put it back (rewrites are slow)
            os.pwrite(fd, bytes([data[pos] ^ 1 << int(rng.integers(8))]), pos)
            seen[_outcome(bad, reference)] += 1
            os.pwrite(fd, data[pos : pos + 1], pos)
    finally:
        os.close(fd)
    for end in [0, 1, 4, 29, *rng.integers(30, len(data), 40)]:
        bad.write_bytes(data[:end])
        assert _outcome(bad, reference) == "refused"
    assert seen["refused"] > 0.5 * len(spots), seen
    byte0 = bytearray(data)
    byte0[0] ^= 1
    bad.write_bytes(byte0)
    with pytest.raises(checkpoint.CheckpointError, match="not a .npz file") as info:
        checkpoint.load(bad)
    assert "pickle" not in str(info.value)


def test_an_interrupted_save_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    path = tmp_path / "last.npz"
    checkpoint.save(path, tiny(seed=1))
    before = path.read_bytes()

    def killed(f, **arrays):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", killed)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(path, tiny(seed=2))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.npz"]


class _Bomb:
    """Unpickling it would leave a marker file: proof that a loader ran code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pickled_members_are_refused_without_being_unpickled(tmp_path):
    with np.load(SHIPPED) as data:
        arrays = {k: data[k] for k in data.files}
    marker = tmp_path / "ran"
    arrays["layer0.packed"] = np.array([_Bomb(marker)], dtype=object)
    np.savez(tmp_path / "bomb.npz", **arrays)
    with pytest.raises(checkpoint.CheckpointError, match=r"layer0.packed.npy holds \|O"):
        checkpoint.load(tmp_path / "bomb.npz")
    assert not marker.exists()


def _with_config(path, config, arrays) -> None:
    raw = config if isinstance(config, bytes) else json.dumps(config).encode()
    np.savez(path, config=np.frombuffer(raw, dtype=np.uint8), **arrays)


def _edits(config):
    """Damaged copies of a checkpoint's config, each with what it tests."""

    def edit(change):
        c = copy.deepcopy(config)
        change(c)
        return c

    n_in = config["network"]["layers"][-1]["in_features"]
    dense = {"kind": "dense", "in_features": n_in, "out_features": 10, "threshold": 40.0}
    yield "a list", [config]
    yield "a number", 3
    yield "no network", edit(lambda c: c.pop("network"))
    yield "no tmax", edit(lambda c: c["network"].pop("tmax"))
    yield "an extra layer key", edit(lambda c: c["network"]["layers"][0].update(bias=1))
    yield "a missing layer key", edit(lambda c: c["network"]["layers"][0].pop("binary"))
    yield "an unknown kind", edit(lambda c: c["network"]["layers"][1].update(kind="avgpool"))
    yield "a layer that is a list", edit(lambda c: c["network"]["layers"].__setitem__(0, [1]))
    yield "layers that are a dict", edit(lambda c: c["network"].update(layers={}))
    yield "no layers", edit(lambda c: c["network"].update(layers=[]))
    yield "a string threshold", edit(lambda c: c["network"]["layers"][0].update(threshold="4"))
    yield "a float size", edit(lambda c: c["network"]["layers"][0].update(kernel_size=5.0))
    yield "a bool size", edit(lambda c: c["network"]["layers"][0].update(out_channels=True))
    yield "a string binary", edit(lambda c: c["network"]["layers"][0].update(binary="yes"))
    yield "a negative tmax", edit(lambda c: c["network"].update(tmax=-1.0))
    yield "a 2-D input", edit(lambda c: c["network"].update(input_shape=[28, 28]))
    yield "a mismatched geometry", edit(lambda c: c["network"].update(input_shape=[3, 28, 28]))
    yield "a bad psp", edit(lambda c: c["network"].update(psp={"tau_rise": 40.0}))
    yield "another format", edit(lambda c: c.update(format="stidi-rs/0"))
    yield "signs_only a string", edit(lambda c: c.update(signs_only="true"))
    # 2,000,000 hidden units: refused by the cap before anything is allocated
    yield (
        "2e6 hidden units",
        edit(lambda c: c["network"]["layers"][-1].update(out_features=2_000_000, binary=False)),
    )
    # under the cap, but the file holds none of those weights: refused by shape
    yield (
        "a huge dense layer",
        edit(
            lambda c: c["network"]["layers"].__setitem__(
                -1, {**dense, "out_features": 100_000, "binary": False}
            )  # fmt: skip
        ),
    )
    yield "deep nesting", b"[" * 100_000 + b"]" * 100_000
    yield "not UTF-8", b"\xff\xfe{}"
    yield "not JSON", b"{'format': 1}"


def test_damaged_configs_are_checkpoint_errors_before_any_allocation(tmp_path):
    with np.load(SHIPPED) as data:
        arrays = {k: data[k] for k in data.files if k != "config"}
        config = json.loads(data["config"].tobytes())
    bad = tmp_path / "bad.npz"
    for what, damaged in _edits(config):
        _with_config(bad, damaged, arrays)
        tracemalloc.start()
        try:
            with pytest.raises(checkpoint.CheckpointError, match="bad.npz") as info:
                checkpoint.load(bad, backend="numpy")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 50 * 2**20, f"{what}: {peak:,} bytes allocated"
        assert "\n" not in str(info.value), what
    _with_config(bad, config, {**arrays, "layer9.weight": np.zeros(3)})
    with pytest.raises(checkpoint.CheckpointError, match="holds layer9.weight"):
        checkpoint.load(bad)
    np.save(tmp_path / "array.npy", np.zeros(3))
    os.replace(tmp_path / "array.npy", bad)  # a .npy renamed .npz
    with pytest.raises(checkpoint.CheckpointError, match="not a .npz file"):
        checkpoint.load(bad)
    with pytest.raises(checkpoint.CheckpointError, match="missing.npz does not exist"):
        checkpoint.load(tmp_path / "missing.npz")
    with pytest.raises(FileNotFoundError):  # still one, for callers catching that
        checkpoint.load(tmp_path / "missing.npz")


def test_a_damaged_trainer_state_is_a_checkpoint_error(tmp_path):
    trainer = _trainer(tmp_path, 1)
    trainer.fit(*fake_images(8))
    with np.load(tmp_path / "last.npz") as data:
        arrays = {k: data[k] for k in data.files if k != "config"}
        config = json.loads(data["config"].tobytes())
    for key, value in [("history", {}), ("epoch", "1"), ("rule", None), ("batch_size", 0)]:
        damaged = copy.deepcopy(config)
        damaged["trainer"][key] = value
        _with_config(tmp_path / "bad.npz", damaged, arrays)
        with pytest.raises(checkpoint.CheckpointError, match=f"damaged trainer state: bad {key}"):
            Trainer.resume(tmp_path / "bad.npz", progress=False)


# --- thread counts ----------------------------------------------------------------


def test_absurd_thread_counts_are_refused_with_the_cap():
    cap = sr.max_threads()
    assert cap >= 64
    before = sr.num_threads()
    for n in (cap + 1, 2**64 - 1, 2**64, -1):
        with pytest.raises(ValueError, match=str(cap)):
            sr.set_num_threads(n)
    assert sr.num_threads() == before
    sr.set_num_threads(cap)  # the cap itself is allowed
    assert sr.num_threads() == cap
    sr.set_num_threads(0)
    assert sr.num_threads() == before


def test_an_absurd_rayon_num_threads_is_refused_not_spawned():
    code = (
        "import numpy as np, stidi_rs as sr\n"
        "net = sr.Network([sr.Dense(2, 2, 1.0)], (2,))\n"
        "try:\n"
        "    net.forward(np.zeros((1, 2)))\n"
        "except ValueError as err:\n"
        "    print(err)\n"
    )
    env = {**os.environ, "RAYON_NUM_THREADS": "100000"}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert f"RAYON_NUM_THREADS=100000 is more than the cap of {sr.max_threads()}" in proc.stdout


# --- small ones -------------------------------------------------------------------


def test_a_batch_larger_than_the_data_is_one_step_even_past_2_to_the_64():
    x, y = fake_images(6)
    times = sr.encode(x.reshape(-1, 1, 8, 8))
    nets = [tiny(), tiny()]
    sr.STiDiBP(nets[0], lr=3.0).steps(times, y, 6)
    sr.STiDiBP(nets[1], lr=3.0).steps(times, y, 2**64)
    for a, b in zip(*(net.spiking_layers for net in nets)):
        assert np.array_equal(a.weight, b.weight)


@pytest.mark.needs_data
def test_cli_takes_a_batch_size_past_2_to_the_64(tmp_path):
    args = [*TINY, "--epochs", "1", "--batch-size", str(2**64), "--out", str(tmp_path / "r")]
    assert main(args) == 0
    assert checkpoint.load(tmp_path / "r" / "last.npz")[1]["trainer"]["batch_size"] == 2**64


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bench", "--repeat", "0"], "--repeat must be at least 1"),
        ([*TINY, "--seed", "-1"], "--seed must be at least 0"),
    ],
)
def test_cli_refuses_bad_counts_naming_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_predict_refuses_a_batch_size_of_zero():
    net = tiny()
    with pytest.raises(ValueError, match="batch_size must be at least 1, got 0"):
        net.predict(np.zeros((2, 1, 8, 8)), batch_size=0)


@pytest.mark.parametrize(
    "value", [np.full((4, 27), 1 + 1j), np.full((4, 27), "0.5"), np.ones((4, 27), dtype=bool)]
)
def test_weight_setter_takes_only_real_numbers(value):
    layer = tiny().layers[-1]
    before = layer.weight.copy()
    with pytest.raises(ValueError, match="weight must be a real numeric array"):
        layer.weight = value
    assert np.array_equal(layer.weight, before)


def test_saving_removes_temp_files_that_killed_saves_left_behind(tmp_path):
    stale = tmp_path / ".last.npz.k1ll3d_x.tmp"
    other = tmp_path / ".other.npz.k1ll3d_x.tmp"
    stale.write_bytes(b"half a checkpoint")
    other.write_bytes(b"another file's")
    checkpoint.save(tmp_path / "last.npz", tiny())
    assert not stale.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.npz.k1ll3d_x.tmp", "last.npz"]


def test_reliability_doc_names_only_tests_that_exist():
    root = Path(__file__).parents[1]
    names = re.findall(r"\*(?:\w+\.py::)?(\w+)\*", (root / "docs" / "reliability.md").read_text())
    sources = [*root.glob("tests/*.py"), *root.glob("rust/stidi-core/src/tests/*.rs")]
    defined = set(re.findall(r"(?:def|fn) (\w+)\(", "".join(p.read_text() for p in sources)))
    assert len(names) > 20 and not set(names) - defined, set(names) - defined

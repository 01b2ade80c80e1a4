"""The training loop: epochs, read-out epochs, homeostasis, and evaluation metrics."""

import numpy as np
import pytest
import stidi_rs as sr
from helpers import fake_images, tiny, toeplitz
from stidi_rs.trainer import Trainer, evaluate, synaptic_fanout


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

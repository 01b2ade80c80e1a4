"""Ramp neurons (docs/algorithm.md §3a): the closed form against the neuron's
dynamics, both engines against each other for the forward pass and both rules,
exact gradients against finite differences, and the option's plumbing (errors,
checkpoints, presets, CLI)."""

import json

import numpy as np
import pytest
import stidi_rs as sr
from helpers import pool_winners, random_inputs
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from stidi_rs import checkpoint, config
from stidi_rs import reference as ref
from stidi_rs.cli import main

TMAX = 100.0


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    n=st.integers(1, 8),
    theta=st.floats(0.05, 3.0),
)
def test_closed_form_is_the_neurons_first_crossing(seed, n, theta):
    """Integrate the neuron as described: linear PSPs of slope 1/T from each input
    spike, no firing before the window below closes at T, then a ramp current
    that brings the slope to 1/T. Its first crossing of θ in [T, 2T) is the
    closed form's time (relative to T)."""
    rng = np.random.default_rng(seed)
    t_in = rng.uniform(0, TMAX, n)
    t_in[rng.random(n) < 0.3] = TMAX  # inputs that never spike
    w = rng.normal(0, 1.5 / n, n)
    spiked = t_in < TMAX
    grid = TMAX + np.linspace(0, TMAX, 200_001)
    psp = (w[spiked] * (grid[:, None] - t_in[spiked]) / TMAX).sum(axis=1)
    v = psp + (grid - TMAX) * (1.0 - w[spiked].sum()) / TMAX
    got = ref.ramp_times(ref.ramp_drive(t_in[None], w[None], TMAX), theta, TMAX)[0, 0]
    crossed = np.flatnonzero(v >= theta)
    step = grid[1] - grid[0]
    assume(np.abs(v - theta).min() > 1e-9 or crossed.size == 0)  # not tangent at an end
    if crossed.size == 0 or grid[crossed[0]] >= 2 * TMAX:
        assert got == TMAX
    else:
        assert got == pytest.approx(grid[crossed[0]] - TMAX, abs=step)


def _binary(scale):
    """Layer options: real weights (``scale`` None) or binary ones of that scale."""
    return {"binary": scale is not None, "scale": scale or 1.0}


def _dense_net(seed, backend, scale=None):
    layers = [
        sr.Dense(6, 5, threshold=0.6, **_binary(scale), init=(-0.2, 0.4)),
        sr.Dense(5, 3, threshold=0.5, init=(-0.3, 0.6)),
    ]
    return sr.Network(layers, (6,), tmax=TMAX, seed=seed, backend=backend, neuron="ramp")


def _conv_net(seed, backend, scale=None):
    layers = [
        sr.Conv2d(1, 3, 3, threshold=0.9, **_binary(scale), init=(-0.1, 0.3)),
        sr.MaxPool2d(2),
        sr.Dense(12, 4, threshold=0.4, init=(-0.2, 0.4)),
        sr.Dense(16, 3, threshold=0.4, skip=1, init=(-0.2, 0.3)),
    ]
    return sr.Network(layers, (1, 6, 6), tmax=TMAX, seed=seed, backend=backend, neuron="ramp")


def _two_conv_net(seed, backend, scale=None):
    layers = [
        sr.Conv2d(1, 2, 3, threshold=0.9, **_binary(scale), init=(-0.1, 0.3)),
        sr.MaxPool2d(2),
        sr.Conv2d(2, 3, 2, threshold=0.3, **_binary(scale), init=(-0.1, 0.25)),
        sr.MaxPool2d(2),
        sr.Dense(3, 3, threshold=0.2, init=(-0.3, 0.6)),
    ]
    return sr.Network(layers, (1, 8, 8), tmax=TMAX, seed=seed, backend=backend, neuron="ramp")


def _wide_conv_net(seed, backend, scale=None):
    # Channel counts that are multiples of 16 and 8 (the engine's blocked paths
    # for conv drives and conv updates), and a second conv layer with k = 3, so
    # that its displacement covers kernel offsets past 1.
    layers = [
        sr.Conv2d(1, 16, 3, threshold=0.9, **_binary(scale), init=(-0.1, 0.3)),
        sr.MaxPool2d(2),
        sr.Conv2d(16, 32, 3, threshold=0.3, **_binary(scale), init=(-0.01, 0.02)),
        sr.MaxPool2d(2),
        sr.Dense(32, 3, threshold=0.2, init=(-0.1, 0.2)),
    ]
    return sr.Network(layers, (1, 10, 10), tmax=TMAX, seed=seed, backend=backend, neuron="ramp")


MAKERS = [_dense_net, _conv_net, _two_conv_net, _wide_conv_net]


def _structure(net, x, gamma):
    """What decides the smooth piece: which neurons are inside their window (not
    pinned at its start, not silent), pooling winners, the output's order."""
    times = net.forward(x)
    parts = []
    for li, layer in enumerate(net.layers):
        y = times[li]
        if layer.kind == "maxpool2d":
            xin = ref.layer_input(net.layers, li, x, times)
            parts.append(ref.maxpool2d_forward(xin, layer.kernel_size)[1])
        else:
            parts += [y <= 0, y >= TMAX]
            w = ref._forward_weight(layer).reshape(len(layer.weight), -1)
            parts.append(w.sum(axis=1) < layer.threshold)  # the sum hinge's kink
    t = times[-1]
    t_min = t.min(axis=1, keepdims=True)
    parts += [np.argmin(t, axis=1), t - t_min < gamma, t_min + gamma < TMAX]
    return parts


@pytest.mark.parametrize("backend", ["numpy", "rust"])
@pytest.mark.parametrize("loss", ["cross_entropy", "stidi"])
@pytest.mark.parametrize("make", MAKERS)
@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_exact_gradients_match_finite_differences(backend, loss, make, seed):
    net = make(seed, backend)
    x, y = random_inputs(seed, net.input_shape, TMAX)
    rule = sr.ExactGradient(
        net, loss=loss, tau_soft=10.0, silent_push=0.0, sum_hinge=0.05, activity=0.5
    )
    loss0, grads = rule.gradients(x, y)
    rng = np.random.default_rng(0)
    checked = 0
    for layer, grad in zip(net.spiking_layers, grads):
        w0 = layer.weight.copy()
        for i in rng.choice(w0.size, size=min(10, w0.size), replace=False):
            idx = np.unravel_index(i, w0.shape)
            base, values, kinks = _structure(net, x, rule.gamma), [], False
            for sign in (1.0, -1.0):
                w = w0.copy()
                w[idx] += sign * 1e-6
                layer.weight = w
                values.append(rule.gradients(x, y)[0])
                here = _structure(net, x, rule.gamma)
                kinks |= not all(np.array_equal(a, b) for a, b in zip(base, here))
            layer.weight = w0
            if kinks:
                continue
            fd = (values[0] - values[1]) / 2e-6
            assert fd == pytest.approx(grad[idx], rel=1e-4, abs=1e-7), (layer, idx)
            checked += 1
    assert checked >= 10


def test_ramp_gradient_is_the_clipped_relu_one():
    """Inside its window a ramp neuron's earliness T − t is Σ w (T − t_i) − (θ − 1)T:
    the loss's gradient is that of a clipped ReLU unit, dt_j/dw_ji = −(T − t_i)."""
    net = _dense_net(3, "numpy")
    x, y = random_inputs(3, net.input_shape, TMAX, batch=1)
    rule = sr.ExactGradient(net, loss="cross_entropy", tau_soft=10.0, silent_push=0.0)
    _, grads = rule.gradients(x, y)
    hidden, out = net.forward(x)
    # dL/dt of the output, then chained by hand through one hidden layer.
    _, dl_dt = ref.output_loss(out, y, TMAX, "cross_entropy", tau_soft=10.0)
    inside_out = (out > 0) & (out < TMAX)
    w2 = net.layers[1].weight
    expect2 = -(dl_dt * inside_out)[0][:, None] * (TMAX - hidden[0])[None, :]
    np.testing.assert_allclose(grads[1], expect2, rtol=1e-12, atol=1e-15)
    dl_dh = (dl_dt * inside_out)[0] @ w2 * (hidden[0] < TMAX)
    inside_h = (hidden[0] > 0) & (hidden[0] < TMAX)
    expect1 = -(dl_dh * inside_h)[:, None] * (TMAX - x[0])[None, :]
    np.testing.assert_allclose(grads[0], expect1, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(
    "rule_name", ["exact", "stidi-bp", "stidi-bp-exact-slope", "stidi-bp-softmax"]
)
@pytest.mark.parametrize("make", MAKERS)
@pytest.mark.parametrize("scale", [None, 1.0, 0.3], ids=["real", "binary", "binary-scaled"])
@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_engines_agree(rule_name, make, scale, seed):
    binary = scale is not None
    nets = {b: make(seed, b, scale) for b in ("numpy", "rust")}
    x, y = random_inputs(seed, nets["numpy"].input_shape, TMAX, batch=7)
    winners = [pool_winners(net, x) for net in nets.values()]
    assume(all(np.array_equal(a, b) for a, b in zip(*winners)))
    fwd = [net.forward(x) for net in nets.values()]
    for a, b in zip(*fwd):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-10)
    assert np.array_equal(nets["numpy"].predict(x), nets["rust"].predict(x))
    results = {}
    for backend, net in nets.items():
        n = len(net.spiking_layers)
        if rule_name == "exact":
            rule = sr.ExactGradient(
                net, tau_soft=10.0, silent_push=0.5, silent_down=0.5, activity=0.3,
                lr=[0.001, 0.002, 0.003][:n],
            )  # fmt: skip
        else:
            slope = "paper" if rule_name == "stidi-bp" else "exact"
            targets = "softmax" if rule_name.endswith("softmax") else "relative"
            rule = sr.STiDiBP(
                net, lr=[0.001, 0.002, 0.003][:n], gamma=3.0, slope=slope, targets=targets,
                tau_soft=10.0,
            )  # fmt: skip
        value, grads = rule.gradients(x, y)
        stats = None if binary else rule.steps(x, y, batch_size=3)
        weights = [lay.weight.copy() for lay in net.spiking_layers]
        results[backend] = (value, grads, weights, stats)
    (l_np, g_np, w_np, s_np), (l_rs, g_rs, w_rs, s_rs) = results.values()
    assert l_rs == pytest.approx(l_np, rel=1e-12)
    for a, b in zip(g_np, g_rs):
        np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12)
    for a, b in zip(w_np, w_rs):
        np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12)
    if not binary:
        assert np.array_equal(s_rs["predictions"], s_np["predictions"])


@pytest.mark.parametrize("targets", ["relative", "softmax"])
def test_exact_slope_is_t_for_ramp_neurons(targets):
    """STiDi-BP's slope="exact" uses −dt/dV = T for ramp neurons, 0 for one its
    error would push further into a pin; the paper's t_j/θ otherwise."""
    net = _dense_net(2, "numpy")
    x, y = random_inputs(2, net.input_shape, TMAX, batch=3)
    grads = {}
    for slope in ("paper", "exact"):
        rule = sr.STiDiBP(net, lr=1.0, slope=slope, normalize=False, targets=targets)
        grads[slope] = rule.gradients(x, y)[1]
    hidden, out = net.forward(x)
    # Output layer: Δw ∝ e_j · factor_j · ε(T − t_i); the same e, only the factor differs.
    _, e = ref.output_errors(out, y, 3.0, TMAX, targets)
    pins = ref.ramp_pins(out, e, TMAX)
    if targets == "softmax":
        assert pins.any()  # this case has outputs pinned at 0 that the label wants earlier
    exact = np.where(pins, 0.0, TMAX)
    k = (TMAX - hidden) / TMAX
    for slope, factor in (("paper", out / net.layers[1].threshold), ("exact", exact)):
        expect = np.einsum("rm,rn->mn", e * factor, k) / TMAX / len(x)
        np.testing.assert_allclose(grads[slope][1], expect, rtol=1e-12, atol=1e-15)


def test_softmax_targets_displace_along_the_cross_entropy():
    """targets="softmax": the output errors are τ (p − onehot)/T, and the loss the
    rule reports is the cross-entropy, the same in both engines."""
    t = np.array([[10.0, 40.0, TMAX], [0.0, 0.0, 5.0]])
    labels = np.array([1, 2])
    loss, e = ref.output_errors(t, labels, 3.0, TMAX, "softmax", tau_soft=10.0)
    z = np.exp(-t / 10.0)
    p = z / z.sum(axis=1, keepdims=True)
    onehot = np.eye(3)[labels]
    np.testing.assert_allclose(e, 10.0 * (p - onehot) / TMAX, rtol=1e-12)
    np.testing.assert_allclose(loss, -np.log(p[[0, 1], labels]), rtol=1e-12)
    assert (e[onehot == 1] < 0).all() and (e[onehot == 0] > 0).all()  # label earlier
    x, y = random_inputs(4, (6,), TMAX, batch=5)
    values = []
    for backend in ("numpy", "rust"):
        net = _dense_net(4, backend)
        rule = sr.STiDiBP(net, lr=0.01, targets="softmax", tau_soft=10.0, slope="exact")
        values.append(rule.steps(x, y)["loss"])
    np.testing.assert_allclose(values[1], values[0], rtol=1e-12)
    with pytest.raises(ValueError, match="targets"):
        sr.STiDiBP(net, targets="absolute")


def test_pins_get_silent_push_and_nothing_else():
    """A neuron pinned at its window start whose loss wants it later, and a silent
    one the loss wants earlier, get silent_push · (dL/dt) · T; pinned ones the loss
    wants earlier get nothing."""
    t = np.array([[0.0, 0.0, TMAX, TMAX, 40.0]])
    d = np.array([[-1.0, 1.0, 1.0, -1.0, 2.0]])
    a, a_prop = ref.ramp_factor(t, d, TMAX, silent_push=0.5, silent_down=0.2)
    np.testing.assert_array_equal(a, [[-50.0, 0.0, 50.0, 0.0, 200.0]])
    np.testing.assert_array_equal(a_prop, [[-10.0, 0.0, 10.0, 0.0, 200.0]])


def test_results_do_not_depend_on_thread_count():
    out = []
    for threads in (1, 2):
        sr.set_num_threads(threads)
        net = _two_conv_net(5, "rust")
        x, y = random_inputs(5, net.input_shape, TMAX, batch=12)
        sr.ExactGradient(net, lr=0.01, silent_push=1.0).steps(x, y, batch_size=4)
        out.append([lay.weight.copy() for lay in net.spiking_layers])
    sr.set_num_threads(0)
    for a, b in zip(*out):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("name", ["csnn-deep", "csnn-deep-binary"])
def test_one_sample_split_over_threads_changes_nothing(name):
    """At batch 1 a ramp conv layer's positions are split over the threads: forward
    times and per-sample STiDi-BP training are the same for 1, 2 and 3 threads."""
    from stidi_rs import presets

    preset = presets.get(name)
    rule = dict(lr=0.1, **preset.settings("mnist")["rule_set"])
    out = []
    for threads in (1, 2, 3):
        sr.set_num_threads(threads)
        net = preset.build(seed=4)
        x, y = random_inputs(4, net.input_shape, net.tmax, batch=3)
        times = [net.forward(x[i : i + 1]) for i in range(len(x))]
        sr.STiDiBP(net, **rule).steps(x, y, batch_size=1)
        out.append((times, [lay.weight.copy() for lay in net.spiking_layers]))
    sr.set_num_threads(0)
    for times, weights in out[1:]:
        for a, b in zip(times, out[0][0]):
            assert all(np.array_equal(u, v) for u, v in zip(a, b))
        assert all(np.array_equal(a, b) for a, b in zip(weights, out[0][1]))


def test_bad_neuron_options_are_named():
    layers = [sr.Dense(4, 2, 1.0)]
    with pytest.raises(ValueError, match="unknown neuron 'lif'"):
        sr.Network(layers, (4,), neuron="lif")
    with pytest.raises(ValueError, match=r"psp must be PSP\(100\)"):
        sr.Network(layers, (4,), tmax=100.0, psp=sr.PSP(40.0), neuron="ramp")
    net = sr.Network(layers, (4,), tmax=100.0, neuron="ramp")
    assert net.psp == sr.PSP(100.0) and "neuron='ramp'" in repr(net)
    with pytest.raises(ValueError, match="neuron = 'lif' must be one of"):
        config.check({"neuron": "lif"}, "here")


def test_the_neuron_survives_a_checkpoint(tmp_path):
    net = _conv_net(1, "rust")
    x, _ = random_inputs(1, net.input_shape, TMAX)
    path = checkpoint.save(tmp_path / "ramp.npz", net)
    back, _ = checkpoint.load(path)
    assert back.neuron == "ramp"
    for a, b in zip(net.forward(x), back.forward(x)):
        np.testing.assert_array_equal(a, b)
    # The default is not written, so files read the same as before the option.
    plain = checkpoint.save(tmp_path / "psp.npz", sr.Network([sr.Dense(4, 2, 1.0)], (4,)))
    assert "neuron" not in _raw_config(plain)["network"]


def _raw_config(path):
    return json.loads(np.load(path)["config"].tobytes())


def test_a_damaged_neuron_in_a_checkpoint_is_named(tmp_path):
    path = checkpoint.save(tmp_path / "ramp.npz", _dense_net(0, "rust"))
    arrays = dict(np.load(path))
    raw = _raw_config(path)
    raw["network"]["neuron"] = "lif"
    arrays["config"] = np.frombuffer(json.dumps(raw).encode(), dtype=np.uint8)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(checkpoint.CheckpointError, match="neuron must be one of"):
        checkpoint.load(tmp_path / "bad.npz")


def test_a_preset_builds_ramp_neurons():
    net = sr.presets.get("csnn-exact").build(dataset="fashion-mnist", neuron="ramp")
    assert net.neuron == "ramp" and net.psp == sr.PSP(net.tmax)
    with pytest.raises(ValueError, match="ramp neurons integrate with a linear PSP"):
        sr.presets.get("csnn-exact").build(dataset="fashion-mnist", neuron="ramp", tau_rise=40)


@pytest.mark.needs_data
def test_cli_trains_ramp_neurons(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--preset", "dense", "--train-size", "600", "--test-size", "300"]
    args += ["--epochs", "1", "--readout-epochs", "0", "--neuron", "ramp"]
    args += ["--init=-0.09,0.09/-0.12,0.12", "--calibrate", "0.5,0.5", "--rule", "exact"]
    args += ["--lr", "0.0003", "--rule-set", "silent_push=1"]
    assert main([*args, "--out", str(out), "--no-progress"]) == 0
    net, _ = checkpoint.load(out / "last.npz")
    assert net.neuron == "ramp"
    assert config.load(out / "config.toml")["neuron"] == "ramp"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    accuracy = records[-1]["test"]["accuracy"]
    assert accuracy > 0.5  # ten classes: far above chance after one small epoch
    capsys.readouterr()
    assert main(["eval", str(out / "last.npz"), "--test-size", "300", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == accuracy


@pytest.mark.parametrize("make", MAKERS)
def test_a_binary_scale_is_weights_of_that_magnitude(make):
    """Binary layers of scale s fire exactly as real layers whose weights are ±s."""
    x, _ = random_inputs(3, make(3, "rust").input_shape, TMAX, batch=5)
    binary = make(3, "rust", 0.3)
    real = make(3, "rust")
    for b, r in zip(binary.spiking_layers, real.spiking_layers):
        r.weight = np.where(b.weight >= 0, b.scale, -b.scale) if b.binary else b.weight
    assert any(layer.scale == 0.3 for layer in binary.spiking_layers)
    for a, b in zip(binary.forward(x), real.forward(x)):
        np.testing.assert_array_equal(a, b)


def test_bad_scales_are_named():
    with pytest.raises(ValueError, match="scale applies only to binary layers"):
        sr.Dense(4, 2, 1.0, scale=0.5)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="scale"):
            sr.Dense(4, 2, 1.0, binary=True, scale=bad)
    with pytest.raises(ValueError, match="scale needs ramp neurons"):
        sr.Network([sr.Dense(4, 2, 1.0, binary=True, scale=0.5)], (4,))
    with pytest.raises(AttributeError):
        sr.Dense(4, 2, 1.0, binary=True).scale = 0.5  # fixed: the network checked it


def test_a_binary_scale_survives_a_checkpoint(tmp_path):
    net = _conv_net(1, "rust", 0.3)
    x, _ = random_inputs(1, net.input_shape, TMAX)
    path = checkpoint.save(tmp_path / "scaled.npz", net)
    back, _ = checkpoint.load(path)
    assert [layer.scale for layer in back.spiking_layers] == [0.3, 1.0, 1.0]
    for a, b in zip(net.forward(x), back.forward(x)):
        np.testing.assert_array_equal(a, b)
    assert "scale" not in _raw_config(path)["network"]["layers"][2]  # 1 is not written
    signs, _ = checkpoint.load(checkpoint.save(tmp_path / "signs.npz", net, signs_only=True))
    for a, b in zip(net.forward(x), signs.forward(x)):
        np.testing.assert_array_equal(a, b)
    arrays = dict(np.load(path))
    raw = _raw_config(path)
    raw["network"]["layers"][0]["scale"] = -2
    arrays["config"] = np.frombuffer(json.dumps(raw).encode(), dtype=np.uint8)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(checkpoint.CheckpointError, match="bad scale -2"):
        checkpoint.load(tmp_path / "bad.npz")


def test_scales_reach_a_preset_and_the_config():
    net = sr.presets.get("dense-binary").build(neuron="ramp", scale=[0.05, 0.2])
    assert [layer.scale for layer in net.spiking_layers] == [0.05, 0.2]
    with pytest.raises(ValueError, match="scale needs 2 value"):
        sr.presets.get("dense-binary").build(neuron="ramp", scale=[0.05])
    with pytest.raises(ValueError, match="scale applies only to binary layers"):
        sr.presets.get("dense").build(neuron="ramp", scale=[0.05, 0.2])
    with pytest.raises(ValueError, match="scale = \\[0\\] must be"):
        config.check({"scale": [0]}, "here")


@pytest.mark.needs_data
def test_cli_trains_scaled_binary_ramp_neurons(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--preset", "dense-binary", "--train-size", "300", "--test-size", "100"]
    args += ["--epochs", "1", "--readout-epochs", "0", "--neuron", "ramp", "--scale", "0.05,0.2"]
    args += ["--thresholds", "1,1", "--rule", "exact", "--lr", "0.0003"]
    assert main([*args, "--out", str(out), "--no-progress"]) == 0
    net, _ = checkpoint.load(out / "last.npz")
    assert [layer.scale for layer in net.spiking_layers] == [0.05, 0.2]
    assert config.load(out / "config.toml")["scale"] == [0.05, 0.2]

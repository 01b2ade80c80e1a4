"""The exact-gradient rule: its gradients against central finite differences of
its own loss (both engines), the engines against each other, and the rule
interface shared with STiDi-BP."""

import numpy as np
import pytest
import stidi_rs as sr
from helpers import pool_winners, random_inputs
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from stidi_rs import reference as ref

TMAX = 100.0


def _dense_net(seed, backend, psp, binary=False):
    layers = [sr.Dense(6, 5, threshold=1.5, binary=binary), sr.Dense(5, 3, threshold=1.2)]
    return sr.Network(layers, (6,), tmax=TMAX, psp=psp, seed=seed, backend=backend)


def _conv_net(seed, backend, psp, binary=False):
    layers = [
        sr.Conv2d(1, 3, 3, threshold=1.5, binary=binary),
        sr.MaxPool2d(2),
        sr.Dense(12, 4, threshold=1.5),
        sr.Dense(16, 3, threshold=1.2, skip=1),
    ]
    return sr.Network(layers, (1, 6, 6), tmax=TMAX, psp=psp, seed=seed, backend=backend)


def _two_conv_net(seed, backend, psp, binary=False):
    """Conv -> pool -> conv -> pool: the gradient crosses a conv layer's input.
    Thresholds off the integers, which sums of binary weights hit exactly."""
    layers = [
        sr.Conv2d(1, 2, 3, threshold=1.5, binary=binary),
        sr.MaxPool2d(2),
        sr.Conv2d(2, 3, 2, threshold=1.3, binary=binary),
        sr.MaxPool2d(2),
        sr.Dense(3, 3, threshold=0.8),
    ]
    return sr.Network(layers, (1, 8, 8), tmax=TMAX, psp=psp, seed=seed, backend=backend)


def _structure(net, x, gamma):
    """What decides which smooth piece the loss is on: which input precedes each
    spike and by how much (PSP segments), who fires, pooling winners, and the
    output's earliest spike and rivals. Equal structures at w ± h mean no kink."""
    psp, times = net.psp, net.forward(x)
    parts = []
    for li, layer in enumerate(net.layers):
        xin = ref.layer_input(net.layers, li, x, times)
        if layer.kind == "maxpool2d":
            parts.append(ref.maxpool2d_forward(xin, layer.kernel_size)[1])
            continue
        y = times[li]
        if layer.kind == "conv2d":
            k = layer.kernel_size
            rows_in = ref.unfold(xin, k).reshape(-1, layer.in_channels * k * k)
            rows_out = y.transpose(0, 2, 3, 1).reshape(-1, layer.out_channels)
        else:
            rows_in, rows_out = xin.reshape(len(xin), -1), y
        s = rows_out[:, :, None] - rows_in[:, None, :]
        parts += [rows_out < TMAX, s > 0, s > psp.tau_rise, s > psp.tau_rise + psp.tau_fall]
        w = ref._forward_weight(layer).reshape(len(layer.weight), -1)
        parts.append(w.sum(axis=1) < layer.threshold)  # the sum hinge's kink
    t = times[-1]
    t_min = t.min(axis=1, keepdims=True)
    parts += [np.argmin(t, axis=1), t - t_min < gamma, t_min + gamma < TMAX]
    return parts


def _check_finite_differences(net, x, y, rule, h=1e-6, per_layer=12):
    loss, grads = rule.gradients(x, y)
    rng = np.random.default_rng(0)
    checked = 0
    for layer, grad in zip(net.spiking_layers, grads):
        assert grad.shape == layer.weight.shape
        w0 = layer.weight.copy()
        flat = rng.choice(w0.size, size=min(per_layer, w0.size), replace=False)
        for i in flat:
            idx = np.unravel_index(i, w0.shape)
            values, kinks = [], False
            base = _structure(net, x, rule.gamma)
            for sign in (1.0, -1.0):
                w = w0.copy()
                w[idx] += sign * h
                layer.weight = w
                values.append(rule.gradients(x, y)[0])
                here = _structure(net, x, rule.gamma)
                kinks |= not all(np.array_equal(a, b) for a, b in zip(base, here))
            layer.weight = w0
            if kinks:
                continue  # a weight at a kink has no derivative to compare
            fd = (values[0] - values[1]) / (2 * h)
            assert fd == pytest.approx(grad[idx], rel=1e-4, abs=1e-7), (layer, idx)
            checked += 1
    return checked


@pytest.mark.parametrize("backend", ["numpy", "rust"])
@pytest.mark.parametrize("loss", ["cross_entropy", "stidi"])
@pytest.mark.parametrize("make", [_dense_net, _conv_net, _two_conv_net])
@settings(max_examples=8)
@given(seed=st.integers(0, 2**16), tau_fall=st.sampled_from([np.inf, 30.0]))
def test_gradients_match_finite_differences(backend, loss, make, seed, tau_fall):
    net = make(seed, backend, sr.PSP(20.0, tau_fall))
    x, y = random_inputs(seed, net.input_shape, TMAX)
    rule = sr.ExactGradient(
        net,
        loss=loss,
        tau_soft=10.0,
        min_slope=0.0,
        silent_push=0.0,
        sum_hinge=0.05,
        activity=0.5,
    )
    checked = _check_finite_differences(net, x, y, rule)
    # Kinks are rare: most sampled weights must have been compared.
    assert checked >= 0.5 * min(12, 30) if make is _dense_net else checked >= 10


@pytest.mark.parametrize("loss", ["cross_entropy", "stidi"])
@pytest.mark.parametrize("make", [_dense_net, _conv_net, _two_conv_net])
@pytest.mark.parametrize("binary", [False, True])
@settings(max_examples=6)
@given(seed=st.integers(0, 2**16))
def test_engines_agree(loss, make, binary, seed):
    psp = sr.PSP(20.0, 60.0)
    out = {}
    for backend in ("numpy", "rust"):
        net = make(seed, backend, psp, binary)
        x, y = random_inputs(seed, net.input_shape, TMAX, batch=7)
        out[backend] = net
    nets = out
    # Binary weights make exact ties between neighbouring conv neurons common; the
    # engines' times differ in the last bits, so a pooling window may pick another
    # winner. A tie is a kink: compare only where both engines see the same winners.
    winners = [pool_winners(net, x) for net in nets.values()]
    assume(all(np.array_equal(a, b) for a, b in zip(*winners)))
    results = {}
    for backend, net in nets.items():
        rule = sr.ExactGradient(
            net,
            loss=loss,
            tau_soft=10.0,
            min_slope=0.05,
            silent_push=0.5,
            weight_decay=0.01,
            sum_hinge=0.2,
            activity=0.3,
            lr=[0.01, 0.02, 0.03, 0.04][: len(net.spiking_layers)],
        )
        loss_value, grads = rule.gradients(x, y)
        # Steps change the weights; with binary layers each step may meet new ties.
        stats = None if binary else rule.steps(x, y, batch_size=3)
        weights = [lay.weight.copy() for lay in net.spiking_layers]
        results[backend] = (loss_value, grads, weights, stats, rule.adam_step)
    (l_np, g_np, w_np, s_np, n_np), (l_rs, g_rs, w_rs, s_rs, n_rs) = results.values()
    assert l_rs == pytest.approx(l_np, rel=1e-12)
    for a, b in zip(g_np, g_rs):
        np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12)
    for a, b in zip(w_np, w_rs):
        np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12)
    if not binary:
        np.testing.assert_allclose(s_rs["loss"], s_np["loss"], rtol=1e-9)
        assert np.array_equal(s_rs["predictions"], s_np["predictions"])
        assert n_np == n_rs == 3


@pytest.mark.parametrize("loss", ["cross_entropy", "stidi"])
@pytest.mark.parametrize("make", [_dense_net, _conv_net, _two_conv_net])
@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**16), silent_down=st.sampled_from([0.5, 1.0, 3.0]))
def test_engines_agree_with_silent_down(loss, make, seed, silent_down):
    """Silent output neurons whose loss wants them earlier send their push down
    (labels are chosen among silent outputs, so there are some)."""
    psp = sr.PSP(20.0, 60.0)
    nets = {b: make(seed, b, psp) for b in ("numpy", "rust")}
    for net in nets.values():
        net.layers[-1].weight = 0.25 * net.layers[-1].weight  # some outputs silent
    x, _ = random_inputs(seed, nets["numpy"].input_shape, TMAX, batch=7)
    winners = [pool_winners(net, x) for net in nets.values()]
    assume(all(np.array_equal(a, b) for a, b in zip(*winners)))
    silent = nets["numpy"].forward(x)[-1] >= TMAX
    assume(silent.any())
    y = np.where(silent.any(axis=1), silent.argmax(axis=1), 0)
    results = {}
    for backend, net in nets.items():
        rule = sr.ExactGradient(
            net, loss=loss, tau_soft=10.0, silent_push=0.5, silent_down=silent_down, lr=0.01
        )
        loss_value, grads = rule.gradients(x, y)
        stats = rule.steps(x, y, batch_size=3)
        weights = [lay.weight.copy() for lay in net.spiking_layers]
        results[backend] = (loss_value, grads, weights, stats)
    (l_np, g_np, w_np, s_np), (l_rs, g_rs, w_rs, s_rs) = results.values()
    assert l_rs == pytest.approx(l_np, rel=1e-12)
    for a, b in zip(g_np, g_rs):
        np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12)
    for a, b in zip(w_np, w_rs):
        np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(s_rs["loss"], s_np["loss"], rtol=1e-9)


@pytest.mark.parametrize("backend", ["numpy", "rust"])
def test_silent_down_reaches_the_layer_below_a_silent_output(backend):
    """Every output silent: with silent_down 0 only the output layer learns (its
    push); with silent_down > 0 the hidden layer below hears it too, in
    proportion."""
    net = _dense_net(4, backend, sr.PSP(2 * TMAX))  # every causal input on the rise
    hidden, out = net.layers
    hidden.weight = np.full(hidden.weight.shape, 2.0)
    out.weight = np.full(out.weight.shape, -0.5)
    x, _ = random_inputs(4, net.input_shape, TMAX, batch=8)
    y = np.zeros(8, dtype=np.int64)
    times = net.forward(x)
    assert (times[-1] >= TMAX).all() and (times[0] < TMAX).any()
    grads = {
        sd: sr.ExactGradient(net, silent_push=1.0, silent_down=sd).gradients(x, y)[1]
        for sd in (0.0, 1.0, 2.0)
    }
    assert np.abs(grads[0.0][-1]).sum() > 0 and np.all(grads[0.0][0] == 0)
    assert np.abs(grads[1.0][0]).sum() > 0
    np.testing.assert_allclose(grads[2.0][0], 2 * grads[1.0][0], rtol=1e-12)
    for g in grads.values():
        np.testing.assert_array_equal(g[-1], grads[0.0][-1])
    rule = sr.ExactGradient(net, silent_push=1.0, silent_down=1.5)
    assert rule.config()["silent_down"] == 1.5
    again = sr.make_rule(rule.name, net, **rule.config())
    assert again.silent_down == 1.5
    with pytest.raises(ValueError, match="silent_down"):
        sr.ExactGradient(net, silent_down=-1.0)


def test_binary_gradient_is_the_straight_through_one():
    """A binary layer's gradient is that of a real layer holding its signs."""
    psp = sr.PSP(20.0)
    binary = _conv_net(3, "rust", psp, binary=True)
    real = _conv_net(3, "rust", psp)
    for b, r in zip(binary.spiking_layers, real.spiking_layers):
        r.weight = np.where(b.weight >= 0, 1.0, -1.0) if b.binary else b.weight
    x, y = random_inputs(3, binary.input_shape, TMAX, batch=6)
    _, g_bin = sr.ExactGradient(binary).gradients(x, y)
    _, g_real = sr.ExactGradient(real).gradients(x, y)
    assert any(np.abs(g).sum() > 0 for g in g_bin)
    for a, b in zip(g_bin, g_real):
        np.testing.assert_array_equal(a, b)


def test_results_do_not_depend_on_thread_count():
    psp = sr.PSP(20.0)
    weights = []
    for threads in (1, 2):
        sr.set_num_threads(threads)
        try:
            net = _conv_net(5, "rust", psp)
            x, y = random_inputs(5, net.input_shape, TMAX, batch=9)
            sr.ExactGradient(net, lr=0.01).steps(x, y, batch_size=4)
            weights.append([lay.weight.copy() for lay in net.spiking_layers])
        finally:
            sr.set_num_threads(0)
    for a, b in zip(*weights):
        np.testing.assert_array_equal(a, b)


def test_descent_lowers_the_loss():
    net = _conv_net(7, "rust", sr.PSP(20.0))
    x, y = random_inputs(7, net.input_shape, TMAX, batch=16)
    rule = sr.ExactGradient(net, lr=0.02)
    before = rule.gradients(x, y)[0]
    for _ in range(30):
        rule.step(x, y)
    assert rule.gradients(x, y)[0] < 0.8 * before


@pytest.mark.parametrize("name", ["stidi-bp", "exact"])
def test_rules_rebuild_from_name_and_config(name):
    net = _conv_net(1, "rust", sr.PSP(20.0))
    rule = sr.make_rule(name, net, lr=[0.5, 0.25, 0.125])
    again = sr.make_rule(rule.name, net, **rule.config())
    assert type(again) is type(rule) and again.config() == rule.config()
    x, y = random_inputs(1, net.input_shape, TMAX)
    loss, grads = rule.gradients(x, y)
    assert np.isfinite(loss) and len(grads) == len(net.spiking_layers)


def test_stidi_bp_gradients_are_the_direction_of_its_step():
    net = _conv_net(2, "numpy", sr.PSP(20.0))
    x, y = random_inputs(2, net.input_shape, TMAX)
    rule = sr.STiDiBP(net, lr=[0.5, 0.25, 0.125], weight_decay=0.01)
    _, grads = rule.gradients(x, y)
    before = [lay.weight.copy() for lay in net.spiking_layers]
    rule.step(x, y)
    for w0, g, lr, lay in zip(before, grads, rule.lr, net.spiking_layers):
        np.testing.assert_allclose(lay.weight, w0 - lr * g, rtol=1e-12, atol=1e-15)


def test_bad_rule_settings_are_named():
    net = _dense_net(0, "rust", sr.PSP(20.0))
    with pytest.raises(ValueError, match="loss"):
        sr.ExactGradient(net, loss="hinge")
    with pytest.raises(ValueError, match="optimizer"):
        sr.ExactGradient(net, optimizer="rmsprop")
    with pytest.raises(ValueError, match="unknown rule"):
        sr.make_rule("hebb", net)
    with pytest.raises(ValueError, match="min_slope"):
        sr.ExactGradient(net, min_slope=-1)
    weights, packed = net._params()
    x, y = random_inputs(0, net.input_shape, TMAX)
    with pytest.raises(ValueError, match='no setting "momentum"'):
        net._rust().gradients(weights, packed, x, y, {"name": "exact", "momentum": 0.9})


def test_silent_push_makes_a_silent_label_neuron_fire():
    """With every output silent the loss has no gradient; the push raises the
    weights of the label's neuron until it fires."""
    net = _dense_net(4, "rust", sr.PSP(20.0))
    out = net.layers[-1]
    out.weight = np.full(out.weight.shape, -0.5)
    x, _ = random_inputs(4, net.input_shape, TMAX, batch=8)
    y = np.zeros(8, dtype=np.int64)
    assert (net.forward(x)[-1] >= TMAX).all()
    assert sr.ExactGradient(net, lr=0.05).gradients(x, y)[1][-1].max() == 0.0
    rule = sr.ExactGradient(net, lr=0.05, silent_push=1.0)
    for _ in range(50):
        rule.step(x, y)
    fired = net.forward(x)[-1] < TMAX
    assert fired[:, 0].any()
    assert (out.weight[0] > -0.5).all() and (out.weight[1:] == -0.5).all()


@pytest.mark.parametrize("backend", ["numpy", "rust"])
def test_sum_hinge_adds_its_penalty_and_gradient(backend):
    net = _dense_net(6, backend, sr.PSP(20.0))
    hidden = net.layers[0]
    w = hidden.weight.copy()
    w[:2] = -0.1  # rows 0 and 1 sum below θ: they cannot fire
    hidden.weight = w
    x, y = random_inputs(6, net.input_shape, TMAX)
    base_loss, base = sr.ExactGradient(net).gradients(x, y)
    loss, grads = sr.ExactGradient(net, sum_hinge=0.3).gradients(x, y)
    gaps = np.maximum(hidden.threshold - w.sum(axis=1), 0)
    gaps_out = np.maximum(net.layers[1].threshold - net.layers[1].weight.sum(axis=1), 0)
    assert loss == pytest.approx(base_loss + 0.3 * (gaps.sum() + gaps_out.sum()), rel=1e-12)
    expected = np.where((gaps > 0)[:, None], -0.3, 0.0) * np.ones_like(w)
    np.testing.assert_allclose(grads[0] - base[0], expected, atol=1e-12)
    assert (grads[0][:2] < base[0][:2]).all()

"""The Rust engine agrees with the NumPy reference (the oracle) on random networks.

Tolerance: spike times within ``1e-8 * tmax``. Both engines are float64 but sum the
PSP contributions in different orders, so results differ by rounding (a few ulps of
V, divided by the slope at the crossing). Two kinds of input are excluded, because
on them two correct engines may take different discrete branches (docs/algorithm.md §3):

- V touches the threshold within ``1e-7`` (relative) at a breakpoint: the engines
  may disagree about *whether* a neuron fires;
- two spike times that a discrete rule compares are within ``1e-9 * tmax`` of a tie:
  the two earliest of a pooling window (which one wins), the two earliest outputs
  (the decision), an output within rounding of ``t_min + gamma`` (the targets).
  Binary (±1) weights make such exact ties common, not a measure-zero accident.
"""

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import stidi_rs as sr
from helpers import tangent_margin
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from stidi_rs import reference as R

ATOL_T = 1e-8
ATOL_W = 1e-9


# The rule's discrete knobs, drawn by every learning test.
CONV_REDUCE = st.sampled_from(["sum", "mean"])
DISPLACEMENT = st.sampled_from(["exact", "causal"])


@st.composite
def network_case(draw):
    """A random small network, a batch of input times and labels."""
    tmax = draw(st.sampled_from([256.0, 100.0]))
    tau_rise = draw(st.floats(5.0, 60.0))
    tau_fall = draw(st.one_of(st.just(math.inf), st.floats(5.0, 100.0)))
    shape_kind = draw(
        st.sampled_from(["dense", "conv", "conv-pool-conv-pool", "dense-skip", "conv-skip"])
    )
    bin_ = lambda: draw(st.booleans())  # noqa: E731
    if shape_kind == "dense":
        n_in, hidden = draw(st.integers(2, 20)), draw(st.integers(1, 12))
        input_shape = (n_in,)
        layers = [
            sr.Dense(n_in, hidden, draw(st.floats(0.5, 4.0)), binary=bin_()),
            sr.Dense(hidden, 4, draw(st.floats(0.3, 3.0)), binary=bin_()),
        ]
    elif shape_kind == "conv":
        c, h = draw(st.integers(1, 2)), draw(st.integers(3, 7))
        k, co = draw(st.integers(1, 3)), draw(st.integers(1, 3))
        input_shape = (c, h, h)
        layers = [
            sr.Conv2d(c, co, k, draw(st.floats(0.5, 3.0)), binary=bin_()),
            sr.Dense(co * (h - k + 1) ** 2, 3, draw(st.floats(0.5, 4.0)), binary=bin_()),
        ]
    elif shape_kind == "dense-skip":  # the output also reads the first hidden layer
        n_in, h1, h2 = draw(st.integers(2, 20)), draw(st.integers(1, 12)), draw(st.integers(1, 8))
        input_shape = (n_in,)
        layers = [
            sr.Dense(n_in, h1, draw(st.floats(0.5, 4.0)), binary=bin_()),
            sr.Dense(h1, h2, draw(st.floats(0.3, 3.0)), binary=bin_()),
            sr.Dense(h2 + h1, 4, draw(st.floats(0.3, 3.0)), binary=bin_(), skip=0),
        ]
    else:
        # conv-skip: the output reads pool1 beside pool2, as csnn-skip does
        c1, c2 = draw(st.integers(1, 3)), draw(st.integers(1, 3))
        skip = 1 if shape_kind == "conv-skip" else None
        input_shape = (1, 12, 12)
        layers = [
            sr.Conv2d(1, c1, 3, draw(st.floats(0.5, 3.0)), binary=bin_()),
            sr.MaxPool2d(2),
            sr.Conv2d(c1, c2, 2, draw(st.floats(0.5, 3.0)), binary=bin_()),
            sr.MaxPool2d(2),
            sr.Dense(
                c2 * 4 + (c1 * 25 if skip else 0),
                3,
                draw(st.floats(0.5, 3.0)),
                binary=bin_(),
                skip=skip,
            ),
        ]
    seed = draw(st.integers(0, 2**32 - 1))
    net = sr.Network(
        layers, input_shape, tmax=tmax, psp=sr.PSP(tau_rise, tau_fall), seed=seed, backend="rust"
    )
    rng = np.random.default_rng(seed)
    batch = draw(st.integers(1, 4))
    x = rng.uniform(0, tmax, size=(batch, *input_shape))
    x[rng.random(x.shape) < draw(st.floats(0.0, 0.6))] = tmax
    labels = rng.integers(0, net.n_classes, size=batch)
    return net, x, labels


def near_tie(t: np.ndarray, tmax: float, gap: float = 0.0) -> bool:
    """Whether the two earliest spikes of a row (last axis) are within rounding of ``gap``."""
    s = np.sort(t, axis=-1)
    if s.shape[-1] < 2:
        return False
    spiking = s[..., 0] < tmax
    if gap:
        return bool((spiking[..., None] & (np.abs(s - s[..., :1] - gap) < 1e-9 * tmax)).any())
    return bool((spiking & (s[..., 1] - s[..., 0] < 1e-9 * tmax)).any())


def margin(net, x, gamma: float = 3.0) -> float:
    """Smallest tangent margin over every spiking layer of the reference forward pass,
    or 0 where a discrete rule meets a near tie."""
    times, _ = R.forward(net.layers, x, net.psp, net.tmax)
    inputs = [R.layer_input(net.layers, i, x, times) for i in range(len(times))]
    if near_tie(times[-1], net.tmax) or near_tie(times[-1], net.tmax, gamma):
        return 0.0
    best = np.inf
    for layer, t_in in zip(net.layers, inputs):
        if layer.kind == "maxpool2d":
            p = layer.kernel_size
            b, c, h, w = t_in.shape
            win = t_in[:, :, : h // p * p, : w // p * p].reshape(b, c, h // p, p, w // p, p)
            if near_tie(
                win.transpose(0, 1, 2, 4, 3, 5).reshape(b, c, h // p, w // p, -1), net.tmax
            ):
                return 0.0
            continue
        w = R._forward_weight(layer)
        if layer.kind == "conv2d":
            rows = R.unfold(t_in, layer.kernel_size).reshape(-1, w[0].size)
        else:
            rows = t_in.reshape(len(t_in), -1)
        best = min(
            best,
            tangent_margin(
                rows,
                w.reshape(len(w), -1),
                layer.threshold,
                net.psp.tau_rise,
                net.psp.tau_fall,
                net.tmax,
            ),
        )
    return best


def snapshot(net):
    return [layer.weight.copy() for layer in net.spiking_layers]


@given(network_case())
def test_forward_agrees_with_reference(case):
    net, x, _ = case
    rust = net.forward(x)
    net.backend = "numpy"
    ref = net.forward(x)
    for a, b in zip(rust, ref):
        assert a.shape == b.shape
    assume(margin(net, x) > 1e-7)
    for a, b in zip(rust, ref):
        np.testing.assert_allclose(a, b, rtol=0, atol=ATOL_T * net.tmax)
    net.backend = "rust"
    assert np.array_equal(
        net.predict(x),
        R.decide(ref[-1], R.forward(net.layers, x, net.psp, net.tmax)[1], net.tmax)[0],
    )


@given(network_case(), st.sampled_from(["psp", "ramp"]))
@settings(max_examples=40)
def test_engine_predict_decides_on_its_own_forward_pass(case, neuron):
    """predict runs the decision in the engine, reading V(tmax) only on ties: it must
    equal the decision rule applied to the engine's full forward pass."""
    net, x, _ = case
    if neuron == "ramp":
        net = sr.Network(net.layers, net.input_shape, tmax=net.tmax, neuron="ramp")
    times, v_end = net._forward(x)
    want = R.decide(times[-1], v_end, net.tmax)
    got = net.predict(x, return_cases=True)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


@pytest.mark.parametrize("binary", [False, True])
def test_engine_predict_breaks_ties_by_the_end_potential(binary):
    """Silent outputs (a threshold out of reach) all tie at tmax: the class is the
    largest V(tmax), which the engine computes only for such samples."""
    rng = np.random.default_rng(3)
    net = sr.Network([sr.Dense(30, 6, 1e6, binary=binary)], (30,), seed=4)
    x = rng.uniform(0, 256, size=(40, 30))
    pred, cases = net.predict(x, return_cases=True)
    assert (cases == 2).all()
    v_end = R.forward(net.layers, x, net.psp, net.tmax)[1]
    assert np.array_equal(pred, np.argmax(v_end, axis=1))
    assert len(set(pred.tolist())) > 1


@given(
    network_case(),
    st.integers(1, 3),
    st.booleans(),
    CONV_REDUCE,
    DISPLACEMENT,
    st.integers(0, 3),
    st.sampled_from(["paper", "exact"]),
    st.sampled_from(["relative", "softmax"]),
)
def test_learning_steps_agree_with_reference(
    case, steps, normalize, reduce, disp, frozen, slope, targets
):
    net, x, labels = case
    start = snapshot(net)
    # The first `frozen` spiking layers get lr 0, as in read-out epochs: the engine
    # then skips their displacements and updates, the reference does not.
    n = len(net.spiking_layers)
    kwargs = dict(
        lr=[0.0 if i < min(frozen, n - 1) else 2.0 for i in range(n)],
        gamma=3.0,
        beta=0.7,
        normalize=normalize,
        weight_decay=1e-3,
        conv_reduce=reduce,
        displacement=disp,
        slope=slope,
        targets=targets,
        tau_soft=12.0,
    )
    net.backend = "rust"
    rust_stats = [sr.STiDiBP(net, **kwargs).step(x, labels) for _ in range(steps)]
    rust_w = snapshot(net)
    rust_packed = [layer.packed for layer in net.spiking_layers]
    for layer, w in zip(net.spiking_layers, start):
        layer.weight = w
    net.backend = "numpy"
    ref_stats = []
    for _ in range(steps):
        assume(margin(net, x) > 1e-7)
        ref_stats.append(sr.STiDiBP(net, **kwargs).step(x, labels))
    for a, b in zip(rust_w, snapshot(net)):
        np.testing.assert_allclose(a, b, rtol=0, atol=ATOL_W)
    for layer, packed in zip(net.spiking_layers, rust_packed):
        if layer.binary:  # the engine kept the bit-packed signs in sync with its update
            assert np.array_equal(packed, sr.pack_signs(layer.weight))
    for rs, ns in zip(rust_stats, ref_stats):
        assert np.array_equal(rs["predictions"], ns["predictions"])
        assert np.array_equal(rs["cases"], ns["cases"])
        assert rs["loss"] == pytest.approx(ns["loss"], abs=1e-9)
        assert rs["fired"] == pytest.approx(ns["fired"], abs=1e-12)


@given(network_case(), DISPLACEMENT)
@settings(max_examples=30)
def test_large_batch_step_agrees_with_reference(case, disp):
    """From 8 samples on, a step sweeps real Dense layers over a transposed copy
    rather than their own rows; it still agrees with the reference."""
    net, x, labels = case
    x, labels = np.concatenate([x] * 8), np.concatenate([labels] * 8)
    start = snapshot(net)
    kwargs = dict(lr=2.0, beta=0.7, displacement=disp)
    rust = sr.STiDiBP(net, **kwargs).step(x, labels)
    rust_w = snapshot(net)
    for layer, w in zip(net.spiking_layers, start):
        layer.weight = w
    net.backend = "numpy"
    assume(margin(net, x) > 1e-7)
    ref = sr.STiDiBP(net, **kwargs).step(x, labels)
    for a, b in zip(rust_w, snapshot(net)):
        np.testing.assert_allclose(a, b, rtol=0, atol=ATOL_W)
    assert np.array_equal(rust["predictions"], ref["predictions"])
    assert np.array_equal(rust["events"], ref["events"])


@given(network_case())
def test_event_count_agrees_with_reference(case):
    """The engine's count of synaptic events (inference and each training step)
    equals the count from the reference's spike times."""
    net, x, labels = case
    assume(margin(net, x) > 1e-7)  # the engines agree on which neurons fire
    times, _ = R.forward(net.layers, x, net.psp, net.tmax)
    want = R.synaptic_events(net.layers, x, times, net.tmax)
    assert net.synaptic_events(x) == net.synaptic_events(x, batch_size=1) == want.sum()
    # The first layer reads the input, so a network input that spikes counts.
    assert want.sum() >= (x < net.tmax).sum()
    stats = sr.STiDiBP(net, lr=0.0).steps(x, labels, batch_size=1)
    assert np.array_equal(stats["events"], want)


def test_event_count_by_hand():
    """Dense: spiking inputs x outputs; Conv2d: each spiking input times the output
    positions whose field holds it, times the channels."""
    dense = sr.Network([sr.Dense(3, 5, 1.0)], (3,), tmax=10.0)
    assert dense.synaptic_events(np.array([[1.0, 10.0, 2.0]])) == 2 * 5
    conv = sr.Network([sr.Conv2d(1, 2, 3, 1.0)], (1, 4, 4), tmax=10.0)
    x = np.full((1, 1, 4, 4), 10.0)
    x[0, 0, 0, 0] = 1.0  # a corner: one position holds it
    x[0, 0, 1, 2] = 1.0  # two rows of positions, two columns: four
    assert conv.synaptic_events(x) == (1 + 4) * 2
    x[:] = 0.0  # every input: 2x2 positions of 9 inputs each
    assert conv.synaptic_events(x) == 4 * 9 * 2
    for net, t in ((dense, np.array([[1.0, 10.0, 2.0]])), (conv, x)):
        net.backend = "numpy"
        assert net.synaptic_events(t) == (10 if net is dense else 72)


@st.composite
def wide_binary_case(draw):
    """Binary layers wide enough for whole and partial bytes of packed signs, and a
    real twin of the same shape."""
    k, co, hidden = draw(st.integers(1, 5)), draw(st.integers(1, 40)), draw(st.integers(1, 140))
    th = [draw(st.floats(1.0, 6.0)), draw(st.floats(2.0, 30.0)), draw(st.floats(1.0, 10.0))]
    n_conv = co * (10 - k + 1) ** 2

    def build(binary):
        layers = [
            sr.Conv2d(1, co, k, th[0], binary=binary),
            sr.Dense(n_conv, hidden, th[1], binary=binary),
            sr.Dense(hidden, 10, th[2], binary=binary),
        ]
        return sr.Network(layers, (1, 10, 10), seed=seed, backend="rust")

    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 256.0, size=(draw(st.integers(1, 3)), 1, 10, 10))
    x[rng.random(x.shape) < draw(st.floats(0.0, 0.6))] = 256.0
    return build(True), build(False), x


@given(wide_binary_case())
@settings(max_examples=30)
def test_binary_kernels_equal_float_kernels_on_signs(case):
    """Bit-packed signs (integer counts) and the same ±1 weights as floats (float
    sums) give identical spike times and V(tmax): the sums hold the same integers."""
    net, twin, x = case
    for a, b in zip(twin.spiking_layers, net.spiking_layers):
        a.weight = np.where(b.weight >= 0, 1.0, -1.0)
    bits, floats = net._forward(x), twin._forward(x)
    for a, b in zip(bits[0], floats[0]):
        assert a.tobytes() == b.tobytes()
    assert bits[1].tobytes() == floats[1].tobytes()
    assert net.synaptic_events(x) == twin.synaptic_events(x)


@given(network_case())
@settings(max_examples=20)
def test_results_do_not_depend_on_thread_count(case):
    net, x, labels = case
    x = np.concatenate([x] * 5)  # enough samples for both threads to work
    labels = np.concatenate([labels] * 5)
    start = snapshot(net)
    results = []
    for threads in (1, 2):
        sr.set_num_threads(threads)
        for layer, w in zip(net.spiking_layers, start):
            layer.weight = w
        out = net.forward(x)
        sr.STiDiBP(net, lr=3.0).step(x, labels)
        results.append((out, snapshot(net)))
    sr.set_num_threads(2)
    (out1, w1), (out2, w2) = results
    assert all(np.array_equal(a, b) for a, b in zip(out1, out2))
    assert all(np.array_equal(a, b) for a, b in zip(w1, w2))


def test_pack_signs_layouts_agree():
    rng = np.random.default_rng(3)
    for out, rows in [(1, 1), (63, 5), (64, 3), (65, 7), (200, 11)]:
        w = rng.normal(size=(out, rows))
        w[0, 0] = 0.0
        packed = sr.pack_signs(w)
        assert packed.shape == (rows, -(-out // 64))
        assert np.array_equal(packed, sr._core.pack_signs(w))
        assert np.array_equal(sr.unpack_signs(packed, w.shape), np.where(w >= 0, 1.0, -1.0))


@given(network_case(), st.sampled_from([1, 2, 3, 8, 11]), st.booleans(), CONV_REDUCE, DISPLACEMENT)
@settings(max_examples=30)
def test_train_steps_equals_steps_one_by_one(case, batch_size, decay, reduce, disp):
    """``Engine.train_steps`` over a chunk is bit-identical to one call per batch
    (from 8 samples on, Dense layers are updated input by input and their
    transposed copy is kept across the steps)."""
    net, x, labels = case
    x = np.concatenate([x] * 8)
    labels = np.concatenate([labels] * 8)
    t = x.reshape(len(x), -1)
    y = labels.astype(np.int64)
    hyper = {
        "name": "stidi-bp",
        "lr": [2.0] * len(net.spiking_layers),
        "gamma": 3.0,
        "beta": [0.7] * len(net.spiking_layers),
        "normalize": True,
        "weight_decay": 1e-3 if decay else 0.0,
        "conv_reduce": reduce,
        "displacement": disp,
        "slope": "paper",
        "targets": "relative",
        "tau_soft": 16.0,
    }
    start = snapshot(net)
    one_by_one = []
    for lo in range(0, len(t), batch_size):
        weights, packed = net._params()
        yb = y[lo : lo + batch_size]
        one_by_one.append(
            net._engine.train_steps(weights, packed, t[lo : lo + batch_size], yb, len(yb), hyper)
        )
    w_ref = snapshot(net)
    p_ref = [layer.packed.copy() for layer in net.spiking_layers if layer.binary]
    for layer, w in zip(net.spiking_layers, start):
        layer.weight = w
    weights, packed = net._params()
    out = net._engine.train_steps(weights, packed, t, y, batch_size, hyper)
    assert all(np.array_equal(a, b) for a, b in zip(snapshot(net), w_ref))
    assert all(
        np.array_equal(layer.packed, p)
        for layer, p in zip([lr for lr in net.spiking_layers if lr.binary], p_ref)
    )
    assert np.array_equal(
        out["predictions"], np.concatenate([s["predictions"] for s in one_by_one])
    )
    assert np.array_equal(out["cases"], np.concatenate([s["cases"] for s in one_by_one]))
    assert np.array_equal(out["loss"], np.concatenate([s["loss"] for s in one_by_one]))
    assert np.array_equal(out["fired"], np.concatenate([s["fired"] for s in one_by_one]))


@pytest.mark.parametrize("binary", [False, True])
def test_batch_one_is_independent_of_thread_count(binary):
    """With fewer samples than threads, one sample's large layers are split over the
    threads (output rows of a Conv2d, blocks of Dense outputs, input channels of the
    displacements): per-sample ``steps`` and batch-1 ``forward`` stay bit-identical."""
    layers = [
        sr.Conv2d(1, 16, 5, 7.0, binary=binary),
        sr.MaxPool2d(2),
        sr.Conv2d(16, 32, 3, 20.0, binary=binary),
        sr.MaxPool2d(2),
        sr.Dense(32 * 4 * 4, 300, 20.0, binary=binary),
        sr.Dense(300, 10, 8.0),
    ]
    net = sr.Network(layers, (1, 24, 24), seed=5, backend="rust")
    rng = np.random.default_rng(5)
    x = rng.uniform(0, net.tmax, size=(6, 1, 24, 24))
    x[rng.random(x.shape) < 0.4] = net.tmax
    labels = rng.integers(0, 10, size=len(x))
    start = snapshot(net)
    results = []
    for threads in (1, 2, 3):
        sr.set_num_threads(threads)
        for layer, w in zip(net.spiking_layers, start):
            layer.weight = w
        outs = [net.forward(x[i : i + 1]) for i in range(2)]
        stats = sr.STiDiBP(net, lr=0.5).steps(x, labels, batch_size=1)
        results.append((outs, stats, snapshot(net)))
    sr.set_num_threads(2)
    outs1, stats1, w1 = results[0]
    fired = np.asarray(stats1["fired"])
    assert (fired[:, :5] > 0).any(axis=0).all(), "the test network should fire"
    assert any(not np.array_equal(a, b) for a, b in zip(w1, start))
    for outs, stats, w in results[1:]:
        for a, b in zip(outs, outs1):
            assert all(np.array_equal(u, v) for u, v in zip(a, b))
        for key in ("loss", "predictions", "cases", "fired"):
            assert np.array_equal(stats[key], stats1[key])
        assert all(np.array_equal(a, b) for a, b in zip(w, w1))


_KERNELS_CHILD = r"""
import sys
import numpy as np
import stidi_rs as sr

from stidi_rs import presets

binary = sys.argv[2] == "1"
if sys.argv[3] == "ramp":
    # Ramp neurons compute drives, not sweeps: the two-conv-layer presets' networks.
    preset = presets.get("csnn-deep-binary" if binary else "csnn-deep")
    net = preset.build(seed=7)
    rule = dict(lr=0.1, **preset.settings("mnist")["rule_set"])
else:
    # Channel counts that are not multiples of the vector width exercise the remainders.
    layers = [
        sr.Conv2d(1, 37, 5, 7.0, binary=binary),
        sr.MaxPool2d(2),
        sr.Dense(37 * 10 * 10, 70, 30.0, binary=binary),
        sr.Dense(70, 10, 8.0, binary=binary),
    ]
    net = sr.Network(layers, (1, 24, 24), seed=7, backend="rust")
    rule = dict(lr=0.5)
rng = np.random.default_rng(7)
x = rng.uniform(0, net.tmax, size=(12, *net.input_shape))
x[rng.random(x.shape) < 0.4] = net.tmax
labels = rng.integers(0, 10, size=len(x))
out = {f"fwd{i}": a for i, a in enumerate(net.forward(x))}
stats = sr.STiDiBP(net, **rule).steps(x, labels, batch_size=1)
out.update({f"w{i}": layer.weight for i, layer in enumerate(net.spiking_layers)})
sr.STiDiBP(net, **rule).steps(x, labels, batch_size=8)  # the batch path of phase 2
out.update({f"batch_w{i}": layer.weight for i, layer in enumerate(net.spiking_layers)})
out["fired"] = np.asarray(stats["fired"])
out["predict"] = net.predict(x)
np.savez(sys.argv[1], kernels=sr.sweep_kernels(), **out)
"""


def _cpu_has_avx2() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " avx2" in line for line in f)
    except OSError:
        return False


@pytest.mark.parametrize("neuron", ["psp", "ramp"])
@pytest.mark.parametrize("binary", ["0", "1"])
def test_vector_and_portable_kernels_agree_bit_for_bit(tmp_path, binary, neuron):
    """The AVX2 copies of the sweeps and of the ramp neurons' drives, chosen at run
    time, against the portable copies (``STIDI_RS_PORTABLE=1``) in the built
    extension: forward times, predictions and weights after per-sample and batch
    training are identical to the bit."""
    if not _cpu_has_avx2():
        pytest.skip("this CPU has no AVX2: only the portable kernels exist here")
    runs = {}
    for portable in ("0", "1"):
        path = tmp_path / f"out{portable}.npz"
        env = dict(os.environ, STIDI_RS_PORTABLE=portable, RAYON_NUM_THREADS="2")
        subprocess.run(
            [sys.executable, "-c", _KERNELS_CHILD, str(path), binary, neuron], env=env, check=True
        )
        runs[portable] = dict(np.load(path))
    assert str(runs["0"].pop("kernels")) == "avx2"
    assert str(runs["1"].pop("kernels")) == "portable"
    assert (runs["1"]["fired"] > 0).any(axis=0).all(), "the test network should fire"
    assert runs["0"].keys() == runs["1"].keys()
    for key, a in runs["1"].items():
        assert a.tobytes() == runs["0"][key].tobytes(), key

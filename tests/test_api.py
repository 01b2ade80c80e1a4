"""The public API: shapes, weights, seeds, and a clear ValueError for every bad input."""

import math

import numpy as np
import pytest
import stidi_rs as sr

BACKENDS = ["rust", "numpy"]


def small_csnn(backend="rust", binary=False, seed=0, threshold=2.0):
    layers = [
        sr.Conv2d(1, 2, 3, threshold=threshold, binary=binary),
        sr.MaxPool2d(2),
        sr.Dense(2 * 3 * 3, 4, threshold=2.0, binary=binary),
    ]
    return sr.Network(layers, (1, 8, 8), seed=seed, backend=backend)


def images(n=3, seed=0):
    return sr.encode(np.random.default_rng(seed).integers(0, 256, (n, 1, 8, 8)).astype(np.uint8))


@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_shapes_follow_pytorch_layouts(backend):
    net = small_csnn(backend)
    out = net.forward(images())
    assert [o.shape for o in out] == [(3, 2, 6, 6), (3, 2, 3, 3), (3, 4)]
    assert net.layers[0].weight.shape == (2, 1, 3, 3)
    assert net.layers[2].weight.shape == (4, 18)
    pred, cases = net.predict(images(), return_cases=True)
    assert pred.shape == cases.shape == (3,)
    assert set(cases.tolist()) <= {0, 1, 2}


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch_gives_empty_outputs(backend):
    net = small_csnn(backend)
    out = net.forward(np.zeros((0, 1, 8, 8)))
    assert [o.shape for o in out] == [(0, 2, 6, 6), (0, 2, 3, 3), (0, 4)]
    assert net.predict(np.zeros((0, 1, 8, 8))).shape == (0,)
    with pytest.raises(ValueError, match="non-empty batch"):
        sr.STiDiBP(net).step(np.zeros((0, 1, 8, 8)), np.zeros(0, dtype=int))


@pytest.mark.parametrize("backend", BACKENDS)
def test_predict_in_batches_equals_one_batch(backend):
    net = small_csnn(backend)
    x = images(10)
    assert np.array_equal(net.predict(x, batch_size=3), net.predict(x))


def test_dense_after_conv_reads_c_order_flattening():
    net = small_csnn("numpy")
    x = images()
    pooled = net.forward(x)[1]
    direct = sr.reference.dense_forward(
        pooled.reshape(3, -1), net.layers[2].weight, 2.0, net.psp, net.tmax
    )
    assert np.array_equal(net.forward(x)[2], direct)


def test_seed_determines_weights():
    a, b, c = small_csnn(seed=1), small_csnn(seed=1), small_csnn(seed=2)
    assert np.array_equal(a.layers[0].weight, b.layers[0].weight)
    assert not np.array_equal(a.layers[0].weight, c.layers[0].weight)
    assert (a.layers[0].weight >= 0).all()  # real layers start positive (docs §6)
    binary = small_csnn(binary=True)
    assert (binary.layers[0].weight < 0).any() and (binary.layers[0].weight > 0).any()


def test_weight_is_read_only_and_assignable():
    net = small_csnn(binary=True)
    layer = net.layers[2]
    with pytest.raises(ValueError):
        layer.weight[0, 0] = 1.0  # in-place edits would bypass the packed signs
    new = -np.ones((4, 18))
    new[1, 5] = 0.0
    layer.weight = new
    assert np.array_equal(layer.weight, new)
    assert np.array_equal(sr.unpack_signs(layer.packed, new.shape), np.where(new >= 0, 1, -1))
    with pytest.raises(ValueError, match=r"shape \(4, 18\)"):
        layer.weight = np.ones((18, 4))
    with pytest.raises(ValueError, match="NaN"):
        layer.weight = np.full((4, 18), np.nan)


def test_weights_assigned_before_the_network_is_built_are_kept():
    """A Network's seed draws only the weights nobody assigned; the draw for an
    assigned layer is still made, so the other layers start as they would anyway."""

    def layers():
        return [sr.Dense(6, 5, 2.0), sr.Dense(5, 3, 2.0)]

    plain = sr.Network(layers(), (6,), seed=3)
    given = layers()
    w = np.arange(30, dtype=float).reshape(5, 6) / 30
    given[0].weight = w
    net = sr.Network(given, (6,), seed=3)
    assert np.array_equal(net.layers[0].weight, w)
    assert np.array_equal(net.layers[1].weight, plain.layers[1].weight)
    # reset_parameters without keep_assigned draws afresh, as before.
    net.layers[0].reset_parameters(np.random.default_rng(3))
    assert np.array_equal(net.layers[0].weight, plain.layers[0].weight)


@pytest.mark.parametrize("binary", [False, True])
def test_reassigned_threshold_or_psp_reaches_both_backends(binary):
    # The Rust engine holds what it was built from; it used to keep the old threshold
    # or PSP silently while the NumPy backend read the new one.
    # Not 3.0: with ±1 weights one neuron's V reaches 3.0 exactly at a breakpoint,
    # where the slope turns, a tangent case (docs/algorithm.md §3) on which the two
    # engines' rounding may differ about whether it fires.
    net, x = small_csnn("rust", binary=binary), images(8)
    before = net.forward(x)[0]
    net.layers[0].threshold = 3.3
    fresh = small_csnn("rust", binary=binary, threshold=3.3)  # built with 3.3
    ref = small_csnn("numpy", binary=binary, threshold=3.3)
    after, built = net.forward(x), fresh.forward(x)
    assert not np.array_equal(after[0], before)
    for a, b, r in zip(after, built, ref.forward(x)):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, r, atol=1e-8 * net.tmax)
    net.psp, fresh.psp, ref.psp = (sr.PSP(20.0, 60.0),) * 3
    for a, b, r in zip(net.forward(x), fresh.forward(x), ref.forward(x)):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, r, atol=1e-8 * net.tmax)
    assert not np.array_equal(net.forward(x)[0], after[0])
    np.testing.assert_array_equal(
        sr.STiDiBP(net, lr=5.0).step(x, np.arange(8) % 4)["predictions"],
        sr.STiDiBP(fresh, lr=5.0).step(x, np.arange(8) % 4)["predictions"],
    )
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="threshold"):
            net.layers[2].threshold = bad
    assert net.layers[2].threshold == 2.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_step_returns_statistics_and_changes_weights(backend):
    net = small_csnn(backend)
    before = [w.weight.copy() for w in net.spiking_layers]
    events = net.synaptic_events(images())  # of the forward pass the step starts with
    stats = sr.STiDiBP(net, lr=5.0).step(images(), np.array([0, 1, 2]))
    assert set(stats) == {"loss", "accuracy", "predictions", "cases", "fired", "events"}
    assert stats["events"] == events > 0
    assert len(stats["fired"]) == 3 and all(0 <= f <= 1 for f in stats["fired"])
    assert stats["loss"] >= 0 and 0 <= stats["accuracy"] <= 1
    assert any(not np.array_equal(b, w.weight) for b, w in zip(before, net.spiking_layers))


def test_lr_zero_leaves_weights_unchanged():
    net = small_csnn()
    before = [w.weight.copy() for w in net.spiking_layers]
    sr.STiDiBP(net, lr=0.0).step(images(), np.array([0, 1, 2]))
    assert all(np.array_equal(b, w.weight) for b, w in zip(before, net.spiking_layers))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((3, 8, 8)), r"shape \(batch, 1, 8, 8\)"),
        (np.full((1, 1, 8, 8), np.nan), "NaN"),
        (np.full((1, 1, 8, 8), -1.0), "found -1.0"),
        (np.full((1, 1, 8, 8), 300.0), "tmax=256"),
        (np.zeros((1, 1, 8, 8), dtype=bool), "dtype bool"),
        (np.array([["a"]]), "dtype"),
    ],
)
def test_bad_times_are_named(backend, bad, message):
    net = small_csnn(backend)
    with pytest.raises(ValueError, match=message):
        net.forward(bad)
    with pytest.raises(ValueError, match=message):
        sr.STiDiBP(net).step(bad, np.zeros(len(bad), dtype=int))


def test_bad_labels_are_named():
    net, x = small_csnn(), images()
    rule = sr.STiDiBP(net)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\]"):
        rule.step(x, np.array([0, 1, 4]))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        rule.step(x, np.array([0, 1]))
    with pytest.raises(ValueError, match="integers"):
        rule.step(x, np.array([0.0, 1.0, 2.0]))


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: sr.Conv2d(1, 2, 9, 1.0), None),  # fine on its own ...
        (lambda: sr.Network([sr.Conv2d(1, 2, 9, 1.0)], (1, 8, 8)), "larger than its 8x8"),
        (lambda: sr.Network([sr.MaxPool2d(9)], (1, 8, 8)), "larger than its 8x8"),
        (lambda: sr.Dense(4, 2, threshold=0.0), "threshold must be positive"),
        (lambda: sr.Dense(4, 2, threshold=-1.0), "threshold must be positive"),
        (lambda: sr.Dense(4, 2, threshold=math.nan), "threshold"),
        (lambda: sr.Dense(0, 2, 1.0), "in_features must be a positive integer"),
        (lambda: sr.Network([sr.Dense(4, 2, 1.0)], (4,), backend="gpu"), "unknown backend"),
        (lambda: sr.Network([sr.Dense(5, 2, 1.0)], (4,)), "expects 5 input features, got 4"),
        (lambda: sr.Network([sr.Conv2d(2, 2, 3, 1.0)], (1, 8, 8)), "2 input channels, got 1"),
        (lambda: sr.Network([sr.Conv2d(1, 2, 3, 1.0)], (64,)), r"needs a \(C, H, W\) input"),
        (lambda: sr.Network([], (4,)), "at least one layer"),
        (lambda: sr.Dense(4, 2, 1.0, skip=-1), "skip must be a layer index"),
        (lambda: sr.Dense(4, 2, 1.0, skip=True), "skip must be a layer index"),
        (
            lambda: sr.Network([sr.Dense(4, 3, 1.0), sr.Dense(3, 2, 1.0, skip=0)], (4,)),
            "skip=0 must name a layer below its input layer 0",
        ),
        (
            lambda: sr.Network(
                [sr.Dense(4, 3, 1.0), sr.Dense(3, 3, 1.0), sr.Dense(3, 2, 1.0, skip=0)], (4,)
            ),
            r"expects 3 input features, got 6 \(input shape \(3,\) and layer 0's \(3,\)\)",
        ),
        (lambda: sr.PSP(0.0), "tau_rise must be positive"),
        (lambda: sr.PSP(10.0, -1.0), "tau_fall must be positive"),
        (lambda: sr.Network([sr.Dense(4, 2, 1.0)], (4,), tmax=math.inf), "tmax"),
        (lambda: sr.STiDiBP(small_csnn(), lr=[1.0, 2.0, 3.0]), "one value per spiking layer"),
        (lambda: sr.STiDiBP(small_csnn(), gamma=0), "gamma must be positive"),
        (lambda: sr.STiDiBP(small_csnn(), conv_reduce="max"), "conv_reduce"),
        (lambda: sr.STiDiBP(small_csnn(), displacement="full"), "displacement"),
        (lambda: sr.encode(np.array([256])), r"\[0, 255\]"),
        (lambda: sr.encode(np.array([0.5, np.nan])), "NaN"),
    ],
)
def test_bad_configuration_is_named(build, message):
    if message is None:
        build()
        return
    with pytest.raises(ValueError, match=message):
        build()


def test_both_backends_share_one_api_and_start_from_the_same_weights():
    a, b = small_csnn("rust"), small_csnn("numpy")
    for la, lb in zip(a.spiking_layers, b.spiking_layers):
        assert np.array_equal(la.weight, lb.weight)
    x = images()
    for oa, ob in zip(a.forward(x), b.forward(x)):
        np.testing.assert_allclose(oa, ob, atol=1e-8 * a.tmax)


def test_thread_count_can_be_set():
    sr.set_num_threads(1)
    assert sr.num_threads() == 1
    sr.set_num_threads(2)
    assert sr.num_threads() == 2
    sr.set_num_threads(0)  # back to the default: RAYON_NUM_THREADS, else every core
    assert sr.num_threads() >= 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_steps_equals_step_by_step(backend):
    x, y = images(7), np.array([0, 1, 2, 3, 0, 1, 2])
    a, b = small_csnn(backend), small_csnn(backend)
    out = sr.STiDiBP(a, lr=4.0).steps(x, y, batch_size=3)
    rule = sr.STiDiBP(b, lr=4.0)
    stats = [rule.step(x[i : i + 3], y[i : i + 3]) for i in (0, 3, 6)]
    for la, lb in zip(a.spiking_layers, b.spiking_layers):
        assert np.array_equal(la.weight, lb.weight)
    assert np.array_equal(out["predictions"], np.concatenate([s["predictions"] for s in stats]))
    assert out["loss"].tolist() == [s["loss"] for s in stats]
    assert out["fired"].shape == (3, 3)
    with pytest.raises(ValueError, match="batch_size"):
        rule.steps(x, y, batch_size=0)

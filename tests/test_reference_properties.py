"""Section 8 of the spec as hypothesis properties of the NumPy reference."""

import math

import numpy as np
import stidi_rs as sr
from helpers import breakpoints, tangent_margin, toeplitz, v_direct
from hypothesis import assume, given
from hypothesis import strategies as st
from stidi_rs import reference as R

TOL = 1e-9

taus = st.tuples(
    st.floats(1.0, 60.0),
    st.one_of(st.just(math.inf), st.floats(1.0, 100.0)),
)


@st.composite
def layer_case(draw, max_in=8, max_out=4):
    """Random input rows, weights, threshold, PSP and tmax; some inputs never spike."""
    tmax = draw(st.sampled_from([256.0, draw(st.floats(20.0, 300.0))]))
    rows, n, m = (
        draw(st.integers(1, 3)),
        draw(st.integers(1, max_in)),
        draw(st.integers(1, max_out)),
    )
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, tmax, size=(rows, n))
    t[rng.random((rows, n)) < 0.2] = tmax
    w = rng.uniform(draw(st.floats(-2.0, 0.0)), draw(st.floats(0.1, 2.0)), size=(m, n))
    theta = draw(st.floats(0.05, 3.0))
    tau_rise, tau_fall = draw(taus)
    return t, w, theta, tau_rise, tau_fall, tmax


@given(layer_case())
def test_spike_time_is_the_first_crossing(case):
    t_in, w, theta, tr, tf, tmax = case
    out = R.spike_times(t_in, w, theta, tr, tf, tmax)
    assert out.shape == (len(t_in), len(w))
    assert ((out >= 0) & (out <= tmax)).all()
    for row, t_row in zip(t_in, out):
        b = breakpoints(row, tr, tf, tmax)
        for j, tj in enumerate(t_row):
            scale = 1 + np.abs(w[j]).sum()
            v_b = np.array([v_direct(row, w[j : j + 1], x, tr, tf, tmax)[0] for x in b])
            if tj < tmax:
                assert abs(v_direct(row, w[j : j + 1], tj, tr, tf, tmax)[0] - theta) <= TOL * scale
                assert (v_b[b < tj - TOL * tmax] < theta + TOL * scale).all()
            else:
                assert (v_b < theta + TOL * scale).all()


@given(layer_case(), st.integers(0, 2**32 - 1))
def test_causality_later_inputs_do_not_matter(case, seed):
    t_in, w, theta, tr, tf, tmax = case
    out = R.spike_times(t_in, w, theta, tr, tf, tmax)
    rng = np.random.default_rng(seed)
    for r in range(len(t_in)):
        for j in range(len(w)):
            late = t_in[r] >= out[r, j]
            moved = t_in[r].copy()
            moved[late] = rng.uniform(out[r, j], tmax, size=late.sum())
            new = R.spike_times(moved[None], w[j : j + 1], theta, tr, tf, tmax)[0, 0]
            assert new == np.float64(out[r, j]) or abs(new - out[r, j]) <= TOL * tmax


@given(layer_case(), st.floats(0.01, 5.0), st.integers(0, 7))
def test_raising_an_earlier_weight_never_delays(case, raise_by, pick):
    t_in, w, theta, tr, tf, tmax = case
    out = R.spike_times(t_in, w, theta, tr, tf, tmax)
    for r in range(len(t_in)):
        earlier = np.flatnonzero(t_in[r] < out[r, 0])
        if len(earlier) == 0:
            continue
        w2 = w[:1].copy()
        w2[0, earlier[pick % len(earlier)]] += raise_by
        new = R.spike_times(t_in[r : r + 1], w2, theta, tr, tf, tmax)[0, 0]
        assert new <= out[r, 0] + TOL * tmax


@given(layer_case(), st.floats(0.0, 1.0))
def test_shifting_all_inputs_shifts_the_spike(case, frac):
    t_in, w, theta, tr, tf, tmax = case
    t_in = np.where(t_in < tmax, t_in / 2, tmax)  # every spiking input in [0, tmax/2)
    delta = frac * tmax / 4
    shifted = np.where(t_in < tmax, t_in + delta, tmax)
    a = R.spike_times(t_in, w, theta, tr, tf, tmax)
    b = R.spike_times(shifted, w, theta, tr, tf, tmax)
    assume(tangent_margin(t_in, w, theta, tr, tf, tmax) > 1e-7)
    clear = np.abs(a + delta - tmax) > 1e-6 * tmax  # not crossing right at the window's end
    expected = np.minimum(a + delta, tmax)
    assert np.allclose(b[clear], expected[clear], rtol=0, atol=TOL * tmax)


@st.composite
def conv_case(draw):
    c_in, c_out, k = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    h, width = draw(st.integers(k, 6)), draw(st.integers(k, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    tmax = 256.0
    x = rng.uniform(0, tmax, size=(2, c_in, h, width))
    x[rng.random(x.shape) < 0.3] = tmax
    w = rng.uniform(-0.5, 1.0, size=(c_out, c_in, k, k))
    return x, w, draw(st.floats(0.1, 2.0)), draw(taus), tmax


@given(conv_case())
def test_conv2d_equals_dense_with_toeplitz_weights(case):
    x, w, theta, (tr, tf), tmax = case
    psp = sr.PSP(tr, tf)
    conv = R.conv2d_forward(x, w, theta, psp, tmax)
    big = toeplitz(w, *x.shape[2:])
    dense = R.dense_forward(x.reshape(len(x), -1), big, theta, psp, tmax)
    assert np.allclose(conv.reshape(len(x), -1), dense, rtol=0, atol=TOL * tmax)


@given(
    st.integers(1, 3),
    st.integers(1, 4),
    st.integers(1, 9),
    st.integers(1, 9),
    st.integers(0, 2**32 - 1),
)
def test_maxpool_is_window_min(c, p, h, width, seed):
    assume(p <= min(h, width))
    rng = np.random.default_rng(seed)
    x = rng.choice([1.0, 2.0, 3.0, 256.0], size=(2, c, h, width))  # many ties
    out, winner = R.maxpool2d_forward(x, p)
    for i in range(h // p):
        for j in range(width // p):
            win = x[:, :, i * p : (i + 1) * p, j * p : (j + 1) * p].reshape(2, c, -1)
            assert np.array_equal(out[:, :, i, j], win.min(axis=-1))
            # The winner is the first minimum in row-major window order.
            assert np.array_equal(winner[:, :, i, j], np.argmax(win == win.min(-1)[..., None], -1))


@given(layer_case(max_in=10, max_out=70))
def test_binary_forward_equals_real_forward_with_signs(case):
    t_in, w, theta, tr, tf, tmax = case
    w[0, 0] = 0.0  # sign(0) = +1
    net_args = dict(input_shape=(t_in.shape[1],), tmax=tmax, psp=sr.PSP(tr, tf), backend="numpy")
    binary = sr.Network([sr.Dense(t_in.shape[1], len(w), theta, binary=True)], **net_args)
    real = sr.Network([sr.Dense(t_in.shape[1], len(w), theta)], **net_args)
    binary.layers[0].weight = w
    real.layers[0].weight = np.where(w >= 0, 1.0, -1.0)
    assert np.array_equal(binary.forward(t_in)[0], real.forward(t_in)[0])
    # The bit-packed copy holds exactly those signs.
    assert np.array_equal(sr.unpack_signs(binary.layers[0].packed, w.shape), real.layers[0].weight)


@given(conv_case(), st.floats(-0.3, 0.3), st.sampled_from(["sum", "mean"]))
def test_conv_update_equals_toeplitz_update_tied_back(case, e_scale, reduce):
    """The conv weight update is the Toeplitz dense update summed over shared weights."""
    x, w, theta, (tr, tf), tmax = case
    psp = sr.PSP(tr, tf)
    y = R.conv2d_forward(x, w, theta, psp, tmax)
    rng = np.random.default_rng(0)
    e = rng.normal(size=y.shape) * e_scale
    c_out, c_in, k, _ = w.shape
    rows_in = R.unfold(x, k).reshape(-1, c_in * k * k)
    grad = R.layer_update(
        rows_in,
        y.transpose(0, 2, 3, 1).reshape(-1, c_out),
        e.transpose(0, 2, 3, 1).reshape(-1, c_out),
        theta,
        psp,
        tmax,
    )
    big_grad = R.layer_update(
        x.reshape(len(x), -1), y.reshape(len(x), -1), e.reshape(len(x), -1), theta, psp, tmax
    )
    h, width = x.shape[2:]
    ho, wo = y.shape[2:]
    tied = np.zeros_like(w)
    g = big_grad.reshape(c_out, ho, wo, c_in, h, width)
    for yy in range(ho):
        for xx in range(wo):
            tied += g[:, yy, xx, :, yy : yy + k, xx : xx + k]
    assert np.allclose(grad.reshape(w.shape), tied, atol=1e-12)
    # And the displacement folds back like the Toeplitz one.
    d = R.displacement(
        rows_in,
        y.transpose(0, 2, 3, 1).reshape(-1, c_out),
        e.transpose(0, 2, 3, 1).reshape(-1, c_out),
        w.reshape(c_out, -1),
        theta,
        psp,
        1.0,
    )
    d = R.fold(d.reshape(len(x), ho, wo, -1), c_in, k)
    d_big = R.displacement(
        x.reshape(len(x), -1),
        y.reshape(len(x), -1),
        e.reshape(len(x), -1),
        toeplitz(w, h, width),
        theta,
        psp,
        1.0,
    )
    assert np.allclose(d.reshape(len(x), -1), d_big, atol=1e-12)

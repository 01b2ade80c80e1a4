"""Network.calibrate_thresholds: a threshold per layer so that a given fraction fires."""

from __future__ import annotations

import numpy as np
import pytest
import stidi_rs as sr
from helpers import breakpoints, fake_images, tiny, v_direct


def _times(n=40, seed=0):
    images, _ = fake_images(n, seed)
    return sr.encode(images.reshape(n, 1, 8, 8))


def _fraction(net, times, i):
    return float((net.forward(times)[i] < net.tmax).mean())


def _sup_potential(t_in, w, psp, tmax):
    """Per row and neuron, the largest potential at any breakpoint in [0, tmax]."""
    out = []
    for row in t_in:
        b = breakpoints(row, psp.tau_rise, psp.tau_fall, tmax)
        v = np.stack([v_direct(row, w, x, psp.tau_rise, psp.tau_fall, tmax) for x in b])
        out.append(v.max(axis=0))
    return np.array(out)


@pytest.mark.parametrize("backend", ["rust", "numpy"])
@pytest.mark.parametrize("fire", [0.1, 0.25, 0.4])
def test_threshold_is_the_quantile_of_the_peak_potential(backend, fire):
    """A non-leaky neuron fires iff θ is at most its peak potential, so the calibrated
    θ is the peak of the neuron ranked just after the allowed ``fire`` fraction."""
    rng = np.random.default_rng(1)
    hidden = sr.Dense(12, 30, 1.0, init=(-1.0, 1.0))
    net = sr.Network(
        [hidden, sr.Dense(30, 3, 1.0)], (12,), psp=sr.PSP(40.0), seed=2, backend=backend
    )
    t = rng.uniform(0, 256, (25, 12))
    t[rng.random(t.shape) < 0.2] = 256.0  # some inputs never spike
    (theta,) = net.calibrate_thresholds(t, fire=fire)
    peaks = np.sort(_sup_potential(t, hidden.weight, net.psp, net.tmax).ravel())[::-1]
    expected = peaks[int(np.floor(fire * peaks.size))]
    assert theta == pytest.approx(expected, rel=1e-5)
    assert _fraction(net, t, 0) <= fire
    hidden.threshold = theta * (1 - 1e-4)
    assert _fraction(net, t, 0) > fire


def test_default_calibrates_hidden_layers_bottom_up_and_engines_agree():
    t = _times()
    thetas = []
    for backend in ("rust", "numpy"):
        net = tiny()
        net.layers[0].reset_parameters(np.random.default_rng(3))
        net.layers[0].weight = net.layers[0].weight - 0.5  # zero-mean conv
        net.backend = backend
        out_theta = net.layers[2].threshold
        got = net.calibrate_thresholds(t, fire=0.3)
        assert len(got) == 1 and net.layers[0].threshold == got[0]
        assert net.layers[2].threshold == out_theta  # the output is left alone
        assert _fraction(net, t, 0) <= 0.3
        thetas.append(got[0])
    assert thetas[0] == pytest.approx(thetas[1], rel=1e-5)


def test_several_layers_each_reach_their_own_fraction():
    t = _times()
    net = tiny()
    got = net.calibrate_thresholds(t, fire=[0.6, 0.4], layers=[2, 0])  # any order
    assert [net.layers[0].threshold, net.layers[2].threshold] == got
    for i, f in ((0, 0.6), (2, 0.4)):
        assert _fraction(net, t, i) <= f
        old = net.layers[i].threshold
        net.layers[i].threshold = old * (1 - 1e-4)
        assert _fraction(net, t, i) > f
        net.layers[i].threshold = old


def test_a_layer_that_cannot_fire_enough_is_refused_and_left_as_it_was():
    t = _times()
    net = tiny()
    net.layers[0].weight = -np.abs(net.layers[0].weight)  # every potential stays <= 0
    with pytest.raises(ValueError, match="no positive threshold"):
        net.calibrate_thresholds(t, fire=0.5)
    assert net.layers[0].threshold == 2.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"fire": 0.0}, "fire must lie in"),
        ({"fire": 1.0}, "fire must lie in"),
        ({"fire": [0.5, 0.5]}, "one value per calibrated layer"),
        ({"layers": [1]}, "not a spiking layer"),
        ({"layers": [0, 0]}, "named twice"),
        ({"rtol": 0.0}, "rtol"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny().calibrate_thresholds(_times(), **kwargs)


def test_an_empty_batch_is_refused():
    with pytest.raises(ValueError, match="non-empty"):
        tiny().calibrate_thresholds(np.zeros((0, 1, 8, 8)))

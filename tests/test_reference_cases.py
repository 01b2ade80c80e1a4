"""Hand-worked cases for the NumPy reference: each number here was computed on paper."""

import math

import numpy as np
import pytest
from stidi_rs import reference as R


def fire(t_in, w, theta, tau_rise, tau_fall, tmax=256.0):
    return R.spike_times(
        np.array([t_in], float), np.array([w], float), theta, tau_rise, tau_fall, tmax
    )[0, 0]


def test_psp_kernel_values():
    s = np.array([-1.0, 0.0, 5.0, 10.0, 20.0, 30.0, 40.0])
    assert R.eps(s, 10.0, 20.0).tolist() == [0, 0, 0.5, 1.0, 0.5, 0.0, 0.0]
    assert R.eps(s, 10.0, math.inf).tolist() == [0, 0, 0.5, 1.0, 1.0, 1.0, 1.0]
    assert R.deps(s, 10.0, 20.0).tolist() == [0, 0, 0.1, 0.1, -0.05, -0.05, 0.0]
    assert R.deps(s, 10.0, math.inf).tolist() == [0, 0, 0.1, 0.1, 0.0, 0.0, 0.0]


def test_two_inputs_cross_on_the_rise():
    # For 5 < t <= 10 both PSPs rise: V = t/10 + (t-5)/10 = 0.9  ->  t = 7.
    assert fire([0.0, 5.0], [1.0, 1.0], 0.9, 10.0, 20.0) == pytest.approx(7.0, abs=1e-12)


def test_two_inputs_cross_while_the_first_falls():
    # V(10) = 1.0 and V(15) = 0.75 stay below 1.2; for 15 < t <= 25 the first PSP
    # falls and the second rises: V = (30-t)/20 + 2(t-15)/10 = 1.2  ->  t = 18.
    assert fire([0.0, 15.0], [1.0, 2.0], 1.2, 10.0, 20.0) == pytest.approx(18.0, abs=1e-12)


def test_two_inputs_cross_on_the_plateau_of_the_first():
    # tau_fall = inf: after t = 20, V = 0.5 + (t-20)/10 = 1.2  ->  t = 27.
    assert fire([0.0, 20.0], [0.5, 1.0], 1.2, 10.0, math.inf) == pytest.approx(27.0, abs=1e-12)


def test_neuron_that_never_reaches_threshold_is_silent():
    # Peak V = 1.5 (both PSPs at their peak at t = 10) < 2.
    assert fire([0.0, 0.0], [1.0, 0.5], 2.0, 10.0, 20.0) == 256.0
    # Inhibition: the negative input cancels the ramp: V = 0.5 t/10 - ... stays <= 0.5.
    assert fire([0.0, 0.0], [1.0, -0.5], 0.6, 10.0, math.inf) == 256.0


def test_inputs_at_tmax_never_act_and_crossing_at_tmax_is_no_spike():
    assert fire([256.0, 256.0], [5.0, 5.0], 0.1, 10.0, math.inf) == 256.0
    # V reaches exactly theta at t = tmax = 20: the spike time must be < tmax.
    assert fire([10.0], [1.0], 1.0, 10.0, math.inf, tmax=20.0) == 20.0


def test_maxpool_takes_earliest_spike_and_first_winner():
    x = np.array(
        [[[[5.0, 3.0, 9.0, 9.0, 1.0], [4.0, 3.0, 2.0, 8.0, 1.0], [7.0, 7.0, 6.0, 6.0, 1.0]]]]
    )
    out, winner = R.maxpool2d_forward(x, 2)
    assert out.tolist() == [[[[3.0, 2.0]]]]  # the last row and column are dropped
    assert winner.tolist() == [[[[1, 2]]]]  # (0,1) beats the tie at (1,1); (1,0) of window 2
    e = R.maxpool2d_route(np.array([[[[0.5, -0.25]]]]), winner, x.shape, 2)
    expected = np.zeros_like(x)
    expected[0, 0, 0, 1] = 0.5
    expected[0, 0, 1, 2] = -0.25
    assert np.array_equal(e, expected)


def test_output_targets_relative_rule():
    t = np.array([[50.0, 52.0, 60.0, 256.0], [256.0, 256.0, 256.0, 256.0]])
    target = R.output_targets(t, np.array([2, 1]), gamma=3.0, tmax=256.0)
    # Sample 0: t_min = 50 goes to the label; 50 and 52 are within gamma -> 53; 256 keeps.
    # Sample 1: nothing fired: the label is asked for tmax - gamma, the rest stay silent.
    assert target.tolist() == [[53.0, 53.0, 50.0, 256.0], [256.0, 253.0, 256.0, 256.0]]


def test_output_target_is_capped_at_tmax():
    t = np.array([[255.0, 254.5]])
    assert R.output_targets(t, np.array([1]), 3.0, 256.0).tolist() == [[256.0, 254.5]]


def test_decision_rule_cases():
    t = np.array([[10.0, 5.0, 7.0], [5.0, 9.0, 5.0], [256.0, 256.0, 256.0], [4.0, 4.0, 9.0]])
    v = np.array([[0, 0, 0], [1.0, 9.0, 2.0], [0.5, 0.7, 0.7], [3.0, 3.0, 9.0]])
    pred, cases = R.decide(t, v, 256.0)
    assert pred.tolist() == [1, 2, 1, 0]
    assert cases.tolist() == [0, 1, 2, 1]


def test_update_and_displacement_signs_and_values():
    # One input at 0 (w = 1), output fired at t = 20 on the plateau (tau = 10, inf).
    psp = type("P", (), {"tau_rise": 10.0, "tau_fall": math.inf})
    t_in, t_out = np.array([[0.0, 15.0]]), np.array([[20.0]])
    e = np.array([[-0.5]])  # must fire earlier
    grad = R.layer_update(t_in, t_out, e, 2.0, psp, 256.0)
    # -e * (t/theta) * eps / T: eps(20) = 1, eps(5) = 0.5.
    assert grad[0].tolist() == pytest.approx([0.5 * 10 * 1.0 / 256, 0.5 * 10 * 0.5 / 256])
    d = R.displacement(t_in, t_out, e, np.array([[1.0, 1.0]]), 2.0, psp, beta=1.0)
    # Input 0 is on its plateau (eps' = 0); input 1 rises (eps' = 0.1): asked to fire earlier.
    assert d[0].tolist() == pytest.approx([0.0, -0.5 * 10 * 1.0 * 0.1])
    # "causal": every earlier input gets 1/tau_rise, the plateau one included; a later
    # input (t_i = 25 > t_j) still gets nothing.
    t_late = np.array([[0.0, 15.0, 25.0]])
    d = R.displacement(t_late, t_out, e, np.ones((1, 3)), 2.0, psp, 1.0, mode="causal")
    assert d[0].tolist() == pytest.approx([-0.5 * 10 * 0.1, -0.5 * 10 * 0.1, 0.0])


def test_fold_is_adjoint_of_unfold():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 3, 6, 5))
    p = rng.normal(size=R.unfold(x, 3).shape)
    assert np.sum(R.unfold(x, 3) * p) == pytest.approx(np.sum(x * R.fold(p, 3, 3)))


def test_encode_maps_white_to_zero_and_black_to_tmax():
    assert R.encode(np.array([0, 255, 51], np.uint8)).tolist() == [256.0, 0.0, 204.8]

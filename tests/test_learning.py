"""The reference learns real data: MNIST from $STIDI_RS_DATA, well above chance."""

import numpy as np
import pytest
import stidi_rs as sr
from stidi_rs import datasets

pytestmark = pytest.mark.needs_data


def test_reference_learns_mnist_from_1000_images():
    x_train, y_train = datasets.load("mnist", "train", download=False)
    x_test, y_test = datasets.load("mnist", "test", download=False)
    train = sr.encode(x_train[:1000].reshape(1000, -1))
    test = sr.encode(x_test[:1000].reshape(1000, -1))
    net = sr.Network(
        [sr.Dense(784, 100, 30.0), sr.Dense(100, 10, 15.0)], (784,), backend="numpy", seed=0
    )
    before = (net.predict(test) == y_test[:1000]).mean()
    rule = sr.STiDiBP(net, lr=12.8)
    rng = np.random.default_rng(0)
    for _ in range(2):
        for i in rng.permutation(1000):
            stats = rule.step(train[i : i + 1], y_train[i : i + 1])
    assert np.isfinite(stats["loss"])
    accuracy = (net.predict(test) == y_test[:1000]).mean()
    assert before < 0.3
    assert accuracy > 0.5, f"held-out accuracy {accuracy:.3f} after 2 epochs on 1,000 images"

"""Training-image augmentation: exact shifts and mirrors, seeded, resumable."""

import numpy as np
import pytest
import stidi_rs as sr
from hypothesis import given
from hypothesis import strategies as st
from stidi_rs.augment import Augment
from stidi_rs.cli import main
from stidi_rs.trainer import Trainer


def naive(image, dy, dx, flip):
    """Pixel by pixel: output (r, c) is input (r - dy, c - dx) of the mirrored image."""
    src = image[:, ::-1] if flip else image
    h, w = src.shape
    out = np.zeros_like(src)
    for r in range(h):
        for c in range(w):
            if 0 <= r - dy < h and 0 <= c - dx < w:
                out[r, c] = src[r - dy, c - dx]
    return out


@given(
    shift=st.integers(0, 3),
    flip=st.booleans(),
    h=st.integers(4, 9),
    w=st.integers(4, 9),
    n=st.integers(1, 5),
    seed=st.integers(0, 2**32 - 1),
)
def test_apply_moves_every_pixel_exactly(shift, flip, h, w, n, seed):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, h, w)).astype(np.uint8)
    aug = Augment(shift, flip)
    draws = aug.draw(n, rng)
    assert np.abs(draws[:, :2]).max(initial=0) <= shift and set(draws[:, 2]) <= {0, 1}
    if not flip:
        assert not draws[:, 2].any()
    out = aug.apply(images, draws)
    assert out.dtype == images.dtype and out.shape == images.shape
    for k in range(n):
        assert np.array_equal(out[k], naive(images[k], *draws[k])), draws[k]


def test_draws_cover_every_offset_and_both_mirrors():
    draws = Augment(2, True).draw(4000, np.random.default_rng(0))
    assert set(draws[:, 0]) == set(draws[:, 1]) == {-2, -1, 0, 1, 2}
    assert 0.45 < draws[:, 2].mean() < 0.55


def test_bad_settings_and_inputs_are_named():
    with pytest.raises(ValueError, match="shift must be at least 0, got -1"):
        Augment(-1)
    with pytest.raises(ValueError, match="shift must be an integer"):
        Augment(1.5)
    with pytest.raises(ValueError, match="shift must be an integer"):
        Augment(True)
    aug = Augment(8)
    with pytest.raises(ValueError, match=r"shift 8 is not smaller than the images \(\(8, 9\)\)"):
        aug.apply(np.zeros((1, 8, 9)), np.zeros((1, 3), dtype=np.int64))
    with pytest.raises(ValueError, match=r"images of shape \(N, H, W\), got \(2, 64\)"):
        aug.apply(np.zeros((2, 64)), np.zeros((2, 3), dtype=np.int64))
    with pytest.raises(ValueError, match=r"one \(dy, dx, flip\) per image, got \(1, 3\)"):
        aug.apply(np.zeros((2, 8, 8)), np.zeros((1, 3), dtype=np.int64))


def tiny(seed=0):
    layers = [sr.Conv2d(1, 3, 3, 2.0), sr.MaxPool2d(2), sr.Dense(27, 4, 2.0)]
    return sr.Network(layers, (1, 8, 8), seed=seed)


def fake_images(n=1100, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 8, 8)).astype(np.uint8), rng.integers(0, 4, n)


def run(aug, epochs=2, out_dir=None, net=None, **kw):
    net = net or tiny()
    t = Trainer(
        net,
        sr.STiDiBP(net, lr=3.0),
        epochs=epochs,
        seed=5,
        progress=False,
        augment=aug,
        out_dir=out_dir,
        **kw,
    )
    return t, net


def weights(net):
    return [layer.weight.copy() for layer in net.spiking_layers]


def test_trainer_trains_on_the_drawn_images_and_resumes_the_same(tmp_path):
    x, y = fake_images()
    aug = Augment(2, True)
    t, net = run(aug)
    t.fit(x, y)
    # by hand: the epoch's shuffle, then the epoch's draws in that order
    manual = tiny()
    rule = sr.STiDiBP(manual, lr=3.0)
    for epoch in range(2):
        order = np.random.default_rng([5, epoch]).permutation(len(x))
        draws = aug.draw(len(x), np.random.default_rng([5, epoch, 1]))
        for lo in range(0, len(x), 1024):
            idx = order[lo : lo + 1024]
            moved = aug.apply(x[idx], draws[lo : lo + 1024])
            rule.steps(sr.encode(moved[:, None]), y[idx], 1)
    for a, b in zip(weights(net), weights(manual)):
        assert np.array_equal(a, b)
    plain, plain_net = run(None)
    plain.fit(x, y)
    assert not np.array_equal(weights(net)[0], weights(plain_net)[0])
    # an inactive Augment is no augmentation at all
    idle, idle_net = run(Augment(0, False))
    idle.fit(x, y)
    assert idle.augment is None
    for a, b in zip(weights(idle_net), weights(plain_net)):
        assert np.array_equal(a, b)
    # stopped after epoch 1 and resumed: the same weights as the uninterrupted run
    half, _ = run(aug, epochs=1, out_dir=tmp_path)
    half.fit(x, y)
    resumed = Trainer.resume(tmp_path / "last.npz", epochs=2, progress=False)
    assert resumed.augment == aug
    resumed.fit(x, y)
    for a, b in zip(weights(resumed.net), weights(net)):
        assert np.array_equal(a, b)


def test_trainer_refuses_flat_images_with_augmentation():
    net = sr.Network([sr.Dense(64, 4, 2.0)], (64,))
    t = Trainer(net, sr.STiDiBP(net, lr=1.0), progress=False, augment=Augment(1))
    with pytest.raises(ValueError, match=r"images of shape \(N, H, W\), got \(3, 64\)"):
        t.fit(np.zeros((3, 64), dtype=np.uint8), np.zeros(3, dtype=np.int64))


def test_cli_augment_flags(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--augment-shift", "-1"])
    assert "--augment-shift must be at least 0" in capsys.readouterr().err
    ckpt = str(tmp_path / "last.npz")
    assert main(["train", "--resume", ckpt, "--augment-shift", "1", "--augment-flip"]) == 2
    assert "--augment-shift, --augment-flip would be ignored" in capsys.readouterr().err

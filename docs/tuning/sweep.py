"""One-factor-at-a-time sweep of the CSNN's knobs, as recorded in docs/results.md.

Each line of the grid file is keyword arguments of `run` below. Training uses the
first N MNIST training images (per-sample updates, seeded order per epoch);
validation is training images 55,000-56,999, never the test set.

    STIDI_RS_DATA=../shared/datasets RAYON_NUM_THREADS=1 \\
        python docs/tuning/sweep.py docs/tuning/csnn-grid.txt 55000 [dataset]
"""

import sys
import time

import numpy as np
import stidi_rs as sr
from stidi_rs import datasets


def run(x, y, val, th=(4, 30, 40), lr=(12.8, 50, 50), ch=(16, 32), reduce="mean", gamma=3.0,
        epochs=1, homeo=(0.1, 0.6, 0.01), decay=1.0, tau=40.0, binary=False, disp="exact",
        beta=1.0, normalize=True, hidden=None, tau_fall=float("inf"), dense=None, wd=0.0,
        enc=1.0, batch=1, onoff=False, window=256.0, readout=0, swa=False, dog=None,
        init=None, seed=0, pool2=True, conv2=True, bias=0, pool1=2, skip=False, k1=5,
        fan=None, init2=None):
    # init: (low, high) of the uniform initial weights of the layers below the output;
    # None keeps the layers' default; init2: conv2's own, overriding init there. fan:
    # conv2's initial weights keep only `fan` random input channels per output channel
    # (connection_table below)
    if enc != 1.0:  # pixel intensity ** enc before the spec's encoding: dim pixels fire earlier
        def recode(t):
            return 256.0 * (1.0 - (1.0 - t / 256.0) ** enc)
        x, val = recode(x), (recode(val[0]), val[1])
    if window != 256.0:  # squeeze the input spikes into [0, window); pixel 0 stays silent
        def squeeze(t):
            return np.where(t < 256.0, t * (window / 256.0), 256.0)
        x, val = squeeze(x), (squeeze(val[0]), val[1])
    if dog:  # (sigma1, sigma2): ON and OFF centre-surround channels instead of pixels
        x, val = dog_channels(x, dog), (dog_channels(val[0], dog), val[1])
    elif onoff and not dense:  # a second, inverted channel: dark pixels fire early there
        x, val = np.concatenate([x, 256.0 - x], 1), (np.concatenate([val[0], 256.0 - val[0]], 1),
                                                     val[1])
    if dense:  # (units, threshold): the Dense 784-units-10 net instead of the CSNN
        x, val = x.reshape(len(x), 784), (val[0].reshape(len(val[0]), 784), val[1])
        if onoff:  # a second, inverted copy of each pixel: dark pixels fire early there
            x, val = np.hstack([x, 256.0 - x]), (np.hstack([val[0], 256.0 - val[0]]), val[1])
        if bias:  # `bias` extra inputs that fire at t = 0 on every image: a learnable bias ramp
            x, val = (np.hstack([x, np.zeros((len(x), bias))]),
                      (np.hstack([val[0], np.zeros((len(val[0]), bias))]), val[1]))
        n_in = x.shape[1]
        net = sr.Network([sr.Dense(n_in, dense[0], dense[1], binary=binary, init=init),
                          sr.Dense(dense[0], 10, th[-1], binary=binary)],
                         (n_in,), psp=sr.PSP(tau, tau_fall), seed=seed)
    else:
        c1, c2 = ch
        # `hidden`: (units, threshold) of a Dense layer before the output (th[-1]'s).
        # pool2=False: the output sees conv2's 8x8 maps; conv2=False: conv1 -> pool1 ->
        # (`hidden` ->) output, no second conv layer; pool1: conv1's pooling window
        # (0: none, conv1's maps go straight on); k1: conv1's kernel size
        side = (29 - k1) // pool1 if pool1 else 29 - k1
        n_top = (c2 * (16 if pool2 else 64)) if conv2 else c1 * side * side
        middle = [sr.Conv2d(c1, c2, 5, th[1], binary=binary, init=init2 or init),
                  *([sr.MaxPool2d(2)] if pool2 else [])] if conv2 else []
        # skip (with conv2): the output reads pool1 beside pool2 (Dense skip=1)
        top = [sr.Dense(n_top, hidden[0], hidden[1], binary=binary, init=init),
               sr.Dense(hidden[0], 10, th[-1], binary=binary)] if hidden else [
            sr.Dense(n_top + (c1 * side * side if skip else 0), 10, th[-1], binary=binary,
                     skip=1 if skip else None)]
        net = sr.Network(
            [sr.Conv2d(x.shape[1], c1, k1, th[0], binary=binary, init=init),
             *([sr.MaxPool2d(pool1)] if pool1 else []), *middle, *top],
            x.shape[1:], psp=sr.PSP(tau, tau_fall), seed=seed,
        )
    if fan and conv2 and not dense:
        conv = net.spiking_layers[1]
        conv.weight = conv.weight * connection_table(conv.weight.shape, fan)
    rule = sr.STiDiBP(net, lr=list(lr), conv_reduce=reduce, gamma=gamma, displacement=disp,
                      beta=beta, normalize=normalize, weight_decay=wd)
    guard = sr.Homeostasis(*homeo) if homeo else None
    start, scores = time.time(), []
    for epoch in range(epochs):
        rule.lr = [v * decay**epoch for v in lr]
        order = np.random.default_rng([0, epoch]).permutation(len(x))
        sums = [0.0] * len(net.spiking_layers)
        for lo in range(0, len(x), 1024):
            idx = order[lo : lo + 1024]
            rule.steps(x[idx], y[idx], batch)
            if guard:
                guard(net, x[idx])
            sums = [s + layer.weight for s, layer in zip(sums, net.spiking_layers)]
        if swa and epoch == epochs - 1:  # every layer ends on its mean over the last epoch
            for s, layer in zip(sums, net.spiking_layers):
                layer.weight = s / -(-len(x) // 1024)
        fired = [round(float((o < 256).mean()), 2) for o in net.forward(val[0][:500])]
        scores.append(round(float((net.predict(val[0]) == val[1]).mean()), 4))
        fit = float((net.predict(x[:2000]) == y[:2000]).mean())  # underfitting shows here
        print(f"   epoch {epoch + 1}: validation {scores[-1]:.4f}, train[:2000] {fit:.4f}, "
              f"fired {fired}, "
              f"{time.time() - start:.0f} s", flush=True)
    out = net.spiking_layers[-1]
    for epoch in range(epochs, epochs + readout):  # as `stidi-rs train --readout-epochs`
        rule.lr = [0.0] * (len(lr) - 1) + [lr[-1] * decay**epoch]
        order = np.random.default_rng([0, epoch]).permutation(len(x))
        total, n = 0.0, 0
        for lo in range(0, len(x), 1024):
            idx = order[lo : lo + 1024]
            rule.steps(x[idx], y[idx], batch)
            total, n = total + out.weight, n + 1
        out.weight = total / n
        scores.append(round(float((net.predict(val[0]) == val[1]).mean()), 4))
        print(f"   read-out epoch {epoch + 1}: validation {scores[-1]:.4f}, "
              f"{time.time() - start:.0f} s", flush=True)
    return scores


def connection_table(shape, fan, seed=1):
    """A 0/1 mask for conv weights of `shape` (out, in, k, k) that connects every output
    channel to `fan` random input channels (LeNet-5's connection table). With positive
    random weights on every input channel, all channels start as the same blurred
    detector of early input activity."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(shape[:2])
    for row in mask:
        row[rng.choice(shape[1], fan, replace=False)] = 1.0
    return mask[:, :, None, None]


def dog_channels(t, sigmas):
    """Difference-of-Gaussians ON and OFF maps of the encoded images, each rescaled
    per image so that its strongest response fires at t = 0 (the DoG encoding of
    Kheradpisheh et al.'s STDP networks)."""
    img = 255.0 * (1.0 - t[:, 0] / 256.0)  # back to intensities
    r = np.arange(-3, 4)
    def blur(a, s):  # separable 7-tap Gaussian, zero padding
        k = np.exp(-(r**2) / (2 * s * s))
        k /= k.sum()
        p = np.pad(a, ((0, 0), (3, 3), (0, 0)))
        a = sum(w * p[:, 3 + o : 3 + o + a.shape[1]] for o, w in zip(r, k))
        p = np.pad(a, ((0, 0), (0, 0), (3, 3)))
        return sum(w * p[:, :, 3 + o : 3 + o + a.shape[2]] for o, w in zip(r, k))
    d = blur(img, sigmas[0]) - blur(img, sigmas[1])
    chans = np.stack([np.maximum(d, 0), np.maximum(-d, 0)], 1)
    peak = chans.reshape(len(chans), -1).max(1).reshape(-1, 1, 1, 1) + 1e-9
    return sr.encode(np.round(255.0 * chans / peak).astype(np.uint8))


def main():
    images, labels = datasets.load(sys.argv[3] if len(sys.argv) > 3 else "mnist", "train")
    n = int(sys.argv[2])
    x, y = sr.encode(images[:n, None]), labels[:n]
    val = (sr.encode(images[55000:57000, None]), labels[55000:57000])
    for line in open(sys.argv[1]):
        line = line.strip()
        if line and not line.startswith("#"):
            print(line, "=>", run(x, y, val, **eval(f"dict({line})")), flush=True)


if __name__ == "__main__":
    main()

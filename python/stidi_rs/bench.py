"""Side-by-side speed and memory of the engines, printed as a Markdown table or JSON.

Each configuration runs in its own subprocess; its peak memory is the peak RSS
(Linux VmHWM, reset after the data is loaded) above the RSS at that point. Images/s are
measured on real MNIST images from $STIDI_RS_DATA (or the dataset cache), and time per
synaptic event from the engine's own count (``Network.synaptic_events``).

    stidi-rs bench            # full table (about 12 minutes on 2 cores)
    stidi-rs bench --quick    # fewer images, for a smoke test
    stidi-rs bench --json     # one JSON object per configuration

The three benchmark networks are defined here, not taken from ``stidi_rs.presets``,
so that the figures do not move when a preset changes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

MODELS = ("csnn", "ramp", "dense")

# Learning rules as the `dense`, `csnn-deep-binary@ba5f36a` and `csnn-deep` presets set them.
RULES = {
    "dense": {"lr": 12.8, "displacement": "causal"},
    "csnn": {"lr": [12.8, 50.0, 12.8], "conv_reduce": "mean"},
    "ramp": {
        "lr": 0.1,
        "slope": "exact",
        "targets": "softmax",
        "normalize": False,
        "tau_soft": 25.6,
    },
}


def build(model: str, binary: bool, backend: str, seed: int = 0):
    """The benchmark network: ``dense`` 784-400-10 (θ 30, 60) or ``csnn``
    conv5x5(16) θ4 - pool2 - conv5x5(32) θ30 - pool2 - dense(10) θ40, both PSP(40, ∞);
    or ``ramp``, the ``csnn-deep`` preset's network: ramp neurons, conv5x5(32) -
    pool2 - conv3x3(64) - pool2 - dense(10), θ 1 (binary: ±scale weights)."""
    import stidi_rs as sr

    if model == "ramp":
        init = [(-0.49, 0.49), (-0.144, 0.144), (-0.061, 0.061)]
        scale = (0.245, 0.072, 0.0305) if binary else (1.0, 1.0, 1.0)
        kw = [{"binary": binary, "init": i, "scale": s} for i, s in zip(init, scale)]
        layers = [
            sr.Conv2d(1, 32, 5, 1.0, **kw[0]),
            sr.MaxPool2d(2),
            sr.Conv2d(32, 64, 3, 1.0, **kw[1]),
            sr.MaxPool2d(2),
            sr.Dense(64 * 25, 10, 1.0, **kw[2]),
        ]
        return sr.Network(layers, (1, 28, 28), seed=seed, backend=backend, neuron="ramp")
    if model == "dense":
        layers = [sr.Dense(784, 400, 30.0, binary=binary), sr.Dense(400, 10, 60.0, binary=binary)]
        shape = (784,)
    elif model == "csnn":
        layers = [
            sr.Conv2d(1, 16, 5, 4.0, binary=binary),
            sr.MaxPool2d(2),
            sr.Conv2d(16, 32, 5, 30.0, binary=binary),
            sr.MaxPool2d(2),
            sr.Dense(32 * 16, 10, 40.0, binary=binary),
        ]
        shape = (1, 28, 28)
    else:
        raise ValueError(f"unknown benchmark model {model!r}")
    return sr.Network(layers, shape, psp=sr.PSP(40.0), seed=seed, backend=backend)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> int:
    """Reset the peak-RSS mark (Linux clear_refs) and return the current RSS in KiB."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_kib("VmRSS")


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run_one(cfg: dict) -> dict:
    """Time inference and training steps of one configuration in this process."""
    import stidi_rs as sr
    from stidi_rs import datasets

    images, labels = datasets.load("mnist", "train")
    n = cfg["images"]
    binary = cfg["weights"] == "binary"
    net = build(cfg["model"], binary, cfg["engine"])
    x = sr.encode(images[:n].reshape(n, *net.input_shape))
    y = labels[:n]
    if cfg["engine"] == "rust":
        sr.set_num_threads(cfg["threads"])
    base = _reset_peak()
    settings = RULES[cfg["model"]]
    rule = sr.make_rule("stidi-bp", net, **settings)
    bs = cfg["batch"]
    net.predict(x[:bs])  # warm-up: thread pool, caches
    events_infer = net.synaptic_events(x)
    infer_s = _timed(lambda: net.predict(x, batch_size=256))
    # As the trainer runs: whole batches in chunks of about 1,024 images, one
    # engine call per chunk.
    chunk = bs * max(1, 1024 // bs)
    whole = n // bs * bs
    events_train = 0
    start = time.perf_counter()
    for lo in range(0, whole, chunk):
        hi = min(lo + chunk, whole)
        events_train += int(rule.steps(x[lo:hi], y[lo:hi], batch_size=bs)["events"].sum())
    train_s = time.perf_counter() - start
    # Per-sample updates (batch 1), the way the presets train, in one engine call.
    train1 = n / _timed(lambda: rule.steps(x, y, batch_size=1))
    peak = _status_kib("VmHWM") - base
    weights = sum(
        (layer.packed if layer.binary else layer.weight).nbytes for layer in net.spiking_layers
    )
    row = {
        "model": cfg["model"],
        "weights": cfg["weights"],
        "engine": cfg["engine"],
        "threads": cfg["threads"],
        "images": n,
        "batch": bs,
        "infer_img_s": n / infer_s,
        "train_img_s": whole / train_s,
        "train1_img_s": train1,
        "events_per_img_infer": events_infer / n,
        "events_per_img_train": events_train / whole,
        "ns_per_event_infer": infer_s * 1e9 / max(events_infer, 1),
        "ns_per_event_train": train_s * 1e9 / max(events_train, 1),
        "peak_mib": peak / 1024,
        "weight_bytes": weights,
    }
    if binary and cfg["engine"] == "rust":
        # Like for like: the same ±1 weights as floats in a real-valued network,
        # timed in alternation with the bit-packed kernels so that both see the
        # same machine load; the best of the rounds of each.
        twin = build(cfg["model"], False, "rust")
        fresh = build(cfg["model"], True, "rust")
        for a, b in zip(twin.spiking_layers, fresh.spiking_layers):
            a.weight = np.where(b.weight >= 0, b.scale, -b.scale)
        assert np.array_equal(twin.predict(x[:256]), fresh.predict(x[:256]))
        bits, floats = [], []
        for _ in range(cfg["rounds"]):
            bits.append(n / _timed(lambda: fresh.predict(x, batch_size=256)))
            floats.append(n / _timed(lambda: twin.predict(x, batch_size=256)))
        row["binary_infer_img_s"] = max(bits)
        row["float_infer_img_s"] = max(floats)
    if cfg["engine"] == "rust":
        # Both rules on the same fresh net and batches, in one engine call each.
        for key, name, kw in (
            ("train_stidi_img_s", "stidi-bp", settings),
            ("train_exact_img_s", "exact", {"lr": 1e-3}),
        ):
            fresh_rule = sr.make_rule(name, build(cfg["model"], binary, "rust"), **kw)
            row[key] = n / _timed(lambda r=fresh_rule: r.steps(x, y, batch_size=bs))
    return row


def measure(cfg: dict) -> dict:
    """Run one configuration in a fresh subprocess (its own peak memory)."""
    proc = subprocess.run(
        [sys.executable, "-m", "stidi_rs.bench", "--one", json.dumps(cfg)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "RAYON_NUM_THREADS": str(cfg["threads"])},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark {cfg} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def configurations(quick: bool) -> list[dict]:
    cores = os.cpu_count() or 1
    out = []
    for model in MODELS:
        for weights in ("real", "binary"):
            big = 256 if quick else {"csnn": 2048, "ramp": 1024}.get(model, 8192)
            small = 32 if quick else {"csnn": 64, "ramp": 64}.get(model, 256)
            for engine, threads, n in (
                ("numpy", 1, small),
                ("rust", 1, big),
                ("rust", cores, big),
            ):
                out.append(
                    {
                        "model": model,
                        "weights": weights,
                        "engine": engine,
                        "threads": threads,
                        "images": n,
                        "batch": 32,
                        "rounds": 5 if quick else 3,
                    }
                )
    return out


RATES = (
    "infer_img_s",
    "train_img_s",
    "train1_img_s",
    "binary_infer_img_s",
    "float_infer_img_s",
    "train_stidi_img_s",
    "train_exact_img_s",
)


def _median_row(runs: list[dict]) -> dict:
    """The first run's row with the median of every rate and time per event."""
    row = dict(runs[0])
    for key in (*RATES, "ns_per_event_infer", "ns_per_event_train"):
        if key in row:
            row[key] = float(np.median([r[key] for r in runs]))
    row["peak_mib"] = max(r["peak_mib"] for r in runs)
    return row


def _find(rows, r, engine, threads=None, weights=None):
    return next(
        (
            q
            for q in rows
            if q["model"] == r["model"]
            and q["weights"] == (weights or r["weights"])
            and q["engine"] == engine
            and threads in (None, q["threads"])
        ),
        None,
    )


def print_tables(rows: list[dict], repeat: int) -> None:
    from . import sweep_kernels

    print(
        f"MNIST, training batch {rows[0]['batch']} unless noted, {os.cpu_count()} cores, "
        f"{sweep_kernels()} sweep kernels, "
        f"median of {repeat} runs for Rust; ratios against the NumPy reference of the "
        "same model and weights. The epoch column is 60,000 per-sample updates plus "
        "10,000 inferences at the rates measured. ns/event: time per synaptic event "
        "counted by the engine (the synapses of every input that spikes).\n"
    )
    print(
        "| model | weights | engine | threads | infer img/s | ns/event infer | train img/s "
        "| ns/event train | train × numpy | train × 1 thread | train img/s, batch 1 "
        "| MNIST epoch s, batch 1 | peak MiB | stored weights |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        ref, one = _find(rows, r, "numpy"), _find(rows, r, "rust", 1)
        vs_one = (
            f"{r['train_img_s'] / one['train_img_s']:.2f}" if r["engine"] == "rust" and one else ""
        )
        epoch = 60000 / r["train1_img_s"] + 10000 / r["infer_img_s"]
        print(
            f"| {r['model']} | {r['weights']} | {r['engine']} | {r['threads']} | "
            f"{r['infer_img_s']:,.0f} | {r['ns_per_event_infer']:.2f} | "
            f"{r['train_img_s']:,.0f} | {r['ns_per_event_train']:.2f} | "
            f"{r['train_img_s'] / ref['train_img_s']:,.1f} | {vs_one} | "
            f"{r['train1_img_s']:,.0f} | {epoch:,.0f} | {r['peak_mib']:.0f} | "
            f"{r['weight_bytes']:,} B |"
        )
    print(
        "\nBinary kernels (bit-packed signs) against float kernels given the same ±1 "
        "weights, inference img/s (best of alternating rounds in one process), and "
        "binary against real training (batch 32):\n"
    )
    print("| model | threads | bits | floats | bits / floats | binary / real training |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        if "float_infer_img_s" in r:
            real = _find(rows, r, "rust", r["threads"], "real")
            vs_real = f"{r['train_img_s'] / real['train_img_s']:.2f}" if real else ""
            print(
                f"| {r['model']} | {r['threads']} | {r['binary_infer_img_s']:,.0f} | "
                f"{r['float_infer_img_s']:,.0f} | "
                f"{r['binary_infer_img_s'] / r['float_infer_img_s']:.2f} | {vs_real} |"
            )
    print(
        f"\nExact spike-time gradients (Adam) against STiDi-BP on the same net and "
        f"batches of {rows[0]['batch']}, training img/s:\n"
    )
    print("| model | weights | threads | STiDi-BP | exact | exact / STiDi-BP |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        if "train_exact_img_s" in r:
            print(
                f"| {r['model']} | {r['weights']} | {r['threads']} | "
                f"{r['train_stidi_img_s']:,.0f} | {r['train_exact_img_s']:,.0f} | "
                f"{r['train_exact_img_s'] / r['train_stidi_img_s']:.2f} |"
            )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="stidi-rs bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images (smoke test)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per Rust configuration")
    parser.add_argument(
        "--json", action="store_true", help="print a JSON list, one object per configuration"
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.one:
        print(json.dumps(run_one(json.loads(args.one))))
        return 0
    rows = []
    for cfg in configurations(args.quick):
        # Rust runs take seconds: repeat them and keep the median of each rate.
        runs = [measure(cfg) for _ in range(1 if cfg["engine"] == "numpy" else args.repeat)]
        rows.append(_median_row(runs))
        print(f"  measured {cfg}", file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print_tables(rows, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())

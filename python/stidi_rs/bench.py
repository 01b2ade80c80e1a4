"""Side-by-side speed and memory of the engines, printed as a Markdown table.

Each configuration runs in its own subprocess; its peak memory is the peak RSS
(Linux VmHWM, reset after the data is loaded) above the RSS at that point. Images/s are
measured on real MNIST images from $STIDI_RS_DATA (or the dataset cache).

    stidi-rs bench            # full table (about 12 minutes on 2 cores)
    stidi-rs bench --quick    # fewer images, for a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

MODELS = ("csnn", "dense")


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


def run_one(cfg: dict) -> dict:
    """Time inference and training steps of one configuration in this process."""
    import stidi_rs as sr
    from stidi_rs import datasets, presets

    images, labels = datasets.load("mnist", "train")
    n = cfg["images"]
    preset = presets.get(cfg["model"] + ("-binary" if cfg["binary"] else ""))
    net = preset.build(seed=0, backend=cfg["backend"])
    x = sr.encode(images[:n].reshape(n, *net.input_shape))
    y = labels[:n]
    if cfg["backend"] == "rust":
        sr.set_num_threads(cfg["threads"])
    base = _reset_peak()
    rule = sr.make_rule(preset.rule_name, net, **preset.rule)
    bs = cfg["batch"]
    net.predict(x[:bs])  # warm-up: thread pool, caches
    start = time.perf_counter()
    net.predict(x, batch_size=256)
    infer = n / (time.perf_counter() - start)
    start = time.perf_counter()
    for lo in range(0, n - bs + 1, bs):
        rule.step(x[lo : lo + bs], y[lo : lo + bs])
    train = (n // bs * bs) / (time.perf_counter() - start)
    # Per-sample updates (batch 1), the way the presets train, in one engine call.
    start = time.perf_counter()
    rule.steps(x, y, batch_size=1)
    train1 = n / (time.perf_counter() - start)
    peak = _status_kib("VmHWM") - base
    weights = sum(
        (layer.packed if layer.binary else layer.weight).nbytes for layer in net.spiking_layers
    )
    extra = {}
    if cfg["binary"] and cfg["backend"] == "rust":
        # Like for like: the same ±1 weights as floats in a real-valued network.
        twin = presets.get(cfg["model"]).build(seed=0, backend="rust")
        for a, b in zip(twin.spiking_layers, net.spiking_layers):
            a.weight = np.where(b.weight >= 0, 1.0, -1.0)
        assert np.array_equal(twin.predict(x[:256]), net.predict(x[:256]))
        for key, model in (("infer_bits", net), ("infer_floats", twin)):
            start = time.perf_counter()
            model.predict(x, batch_size=256)
            extra[key] = n / (time.perf_counter() - start)
    if cfg["backend"] == "rust":
        # Both rules on the same fresh net and batches, in one engine call each.
        for key, name, settings in (
            ("train_stidi", preset.rule_name, preset.rule),
            ("train_exact", "exact", {"lr": 1e-3}),
        ):
            fresh = preset.build(seed=0, backend="rust")
            fresh_rule = sr.make_rule(name, fresh, **settings)
            start = time.perf_counter()
            fresh_rule.steps(x, y, batch_size=bs)
            extra[key] = n / (time.perf_counter() - start)
    return {
        **extra,
        **cfg,
        "infer": infer,
        "train": train,
        "train1": train1,
        "peak_mib": peak / 1024,
        "weight_bytes": weights,
    }


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
        for binary in (False, True):
            big = 256 if quick else (2048 if model == "csnn" else 8192)
            small = 32 if quick else (64 if model == "csnn" else 256)
            for backend, threads, n in (
                ("numpy", 1, small),
                ("rust", 1, big),
                ("rust", cores, big),
            ):
                out.append(
                    {
                        "model": model,
                        "binary": binary,
                        "backend": backend,
                        "threads": threads,
                        "images": n,
                        "batch": 32,
                    }
                )
    return out


def main(argv=None) -> int:
    from . import sweep_kernels

    parser = argparse.ArgumentParser(prog="stidi-rs bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images (smoke test)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per Rust configuration")
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
        runs = [measure(cfg) for _ in range(1 if cfg["backend"] == "numpy" else args.repeat)]
        row = dict(runs[0])
        for key in (
            "infer",
            "train",
            "train1",
            "infer_bits",
            "infer_floats",
            "train_stidi",
            "train_exact",
        ):
            if key in row:
                row[key] = float(np.median([r[key] for r in runs]))
        row["peak_mib"] = max(r["peak_mib"] for r in runs)
        rows.append(row)
        print(f"  measured {cfg}", file=sys.stderr)

    def find(r, backend, threads=None):
        return next(
            (
                q
                for q in rows
                if q["model"] == r["model"]
                and q["binary"] == r["binary"]
                and q["backend"] == backend
                and threads in (None, q["threads"])
            ),
            None,
        )

    print(
        f"MNIST, training batch {rows[0]['batch']} unless noted, {os.cpu_count()} cores, "
        f"{sweep_kernels()} sweep kernels, "
        f"median of {args.repeat} runs for Rust; ratios against the NumPy reference of the "
        "same model and weights. The epoch column is 60,000 per-sample updates plus "
        "10,000 inferences at the rates measured.\n"
    )
    print(
        "| model | weights | engine | threads | infer img/s | train img/s | train × numpy "
        "| train × 1 thread | train img/s, batch 1 | MNIST epoch s, batch 1 | peak MiB "
        "| stored weights |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        ref, one = find(r, "numpy"), find(r, "rust", 1)
        vs_one = f"{r['train'] / one['train']:.2f}" if r["backend"] == "rust" and one else ""
        epoch = 60000 / r["train1"] + 10000 / r["infer"]
        print(
            f"| {r['model']} | {'binary' if r['binary'] else 'real'} | {r['backend']} | "
            f"{r['threads']} | {r['infer']:,.0f} | {r['train']:,.0f} | "
            f"{r['train'] / ref['train']:,.1f} | {vs_one} | {r['train1']:,.0f} | "
            f"{epoch:,.0f} | {r['peak_mib']:.0f} | {r['weight_bytes']:,} B |"
        )
    print(
        "\nBinary kernels (bit-packed signs) against float kernels given the same ±1 "
        "weights, inference img/s:\n"
    )
    print("| model | threads | bits | floats | bits / floats |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        if "infer_bits" in r:
            print(
                f"| {r['model']} | {r['threads']} | {r['infer_bits']:,.0f} | "
                f"{r['infer_floats']:,.0f} | {r['infer_bits'] / r['infer_floats']:.2f} |"
            )
    print(
        f"\nExact spike-time gradients (Adam) against STiDi-BP on the same net and "
        f"batches of {rows[0]['batch']}, training img/s:\n"
    )
    print("| model | weights | threads | STiDi-BP | exact | exact / STiDi-BP |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        if "train_exact" in r:
            print(
                f"| {r['model']} | {'binary' if r['binary'] else 'real'} | {r['threads']} | "
                f"{r['train_stidi']:,.0f} | {r['train_exact']:,.0f} | "
                f"{r['train_exact'] / r['train_stidi']:.2f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

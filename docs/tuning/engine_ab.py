"""Two builds of the engine side by side: images/s of inference and per-sample training.

Each build is an installed copy of the package (`pip install --no-deps --target
DIR wheel`; the empty path means the one installed in site-packages). For each
repetition, each checkpoint and each build in turn, a fresh subprocess imports
that build, then times `Network.predict` on the first N MNIST test images and
`STiDiBP.steps(..., batch_size=B)` (`--batch`, default 1) on the same images from the checkpoint's
weights (the rule and settings saved with it). Prints the median and best
images/s of CPU time per build (less skewed by other processes than wall time;
with one rayon thread it is the engine's time) and the ratio of each build's
median to the first build's.

    git worktree add /tmp/old-src 65a882b   # the engine before per-position conv sweeps
    (cd /tmp/old-src && maturin build --release -o /tmp/old-whl)
    pip install --no-deps --target /tmp/old /tmp/old-whl/*.whl
    STIDI_RS_DATA=../shared/datasets RAYON_NUM_THREADS=1 python docs/tuning/engine_ab.py \\
        --n 256 --reps 4 --checkpoint checkpoints/csnn-shallow-xxxwide-binary-mnist.npz \\
        old=/tmp/old new=

The same build may be listed twice, once with `--portable NAME`: that copy runs
its portable sweep kernels (`STIDI_RS_PORTABLE=1`), the other the AVX2 ones
where the CPU has them (`... --portable portable portable= avx2=`).
"""

import argparse
import os
import statistics
import subprocess
import sys

_CHILD = r"""
import sys, time
import stidi_rs as sr
from stidi_rs import checkpoint, datasets
path, n, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
net, cfg = checkpoint.load(path)
x, y = datasets.load("mnist", "test")
times = sr.encode(x[:n].reshape(n, *net.input_shape), tmax=net.tmax)
net.predict(times[:16])
t = time.process_time()
net.predict(times)
infer = n / (time.process_time() - t)
settings = dict(cfg["trainer"]["rule"])
rule = sr.make_rule(settings.pop("name", "stidi-bp"), net, **settings)
t = time.process_time()
rule.steps(times, y[:n], batch)
train = n / (time.process_time() - t)
print(infer, train)
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=1, help="training batch size")
    ap.add_argument("builds", nargs="+", help="NAME=PATH (empty PATH: the installed package)")
    ap.add_argument("--checkpoint", action="append", required=True, dest="checkpoints")
    ap.add_argument(
        "--portable",
        action="append",
        default=[],
        metavar="NAME",
        help="run this build with STIDI_RS_PORTABLE=1 (its portable sweep kernels)",
    )
    args = ap.parse_args()
    builds = [b.split("=", 1) for b in args.builds]
    seen = {}
    for _ in range(args.reps):
        for ckpt in args.checkpoints:
            for name, path in builds:
                env = dict(os.environ, PYTHONPATH=path)
                if name in args.portable:
                    env["STIDI_RS_PORTABLE"] = "1"
                cmd = [sys.executable, "-c", _CHILD, ckpt, str(args.n), str(args.batch)]
                out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
                infer, train = map(float, out.stdout.split())
                seen.setdefault((ckpt, name), []).append((infer, train))
    print(
        f"{args.n} MNIST test images, training batch {args.batch}, {args.reps} repetitions, "
        f"RAYON_NUM_THREADS={os.environ.get('RAYON_NUM_THREADS', 'all')}"
    )
    print(
        "| checkpoint | build | infer img/s, median (best) | train img/s, median (best) "
        "| infer × first | train × first |"
    )
    print("|---|---|---:|---:|---:|---:|")
    for ckpt in args.checkpoints:
        base = None
        for name, _ in builds:
            runs = seen[(ckpt, name)]
            med = [statistics.median(r[k] for r in runs) for k in (0, 1)]
            best = [max(r[k] for r in runs) for k in (0, 1)]
            base = base or med
            print(
                f"| {os.path.basename(ckpt)} | {name} | {med[0]:,.1f} ({best[0]:,.1f}) | "
                f"{med[1]:,.1f} ({best[1]:,.1f}) | "
                f"{med[0] / base[0]:.2f} | {med[1] / base[1]:.2f} |"
            )


if __name__ == "__main__":
    main()

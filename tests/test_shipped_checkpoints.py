"""The checkpoints shipped in checkpoints/ reproduce the test accuracies in docs/results.md."""

import json
import os
import re
from pathlib import Path

import pytest
from stidi_rs.cli import main

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = {  # checkpoint -> (preset, dataset) as written in the results table
    "csnn-mnist.npz": ("csnn", "MNIST"),
    "csnn-wide-mnist.npz": ("csnn-wide", "MNIST"),
    "csnn-shallow-mnist.npz": ("csnn-shallow", "MNIST"),
    "csnn-shallow-wide-mnist.npz": ("csnn-shallow-wide", "MNIST"),
    "csnn-shallow-wide-tau80-mnist.npz": ("csnn-shallow-wide-tau80", "MNIST"),
    "csnn-shallow-xwide-tau80-mnist.npz": ("csnn-shallow-xwide-tau80", "MNIST"),
    "csnn-shallow-xwide-tau80-fashion-mnist.npz": ("csnn-shallow-xwide-tau80", "Fashion-MNIST"),
    "csnn-shallow-wide-tau80-fashion-mnist.npz": ("csnn-shallow-wide-tau80", "Fashion-MNIST"),
    "csnn-shallow-wide-fashion-mnist.npz": ("csnn-shallow-wide", "Fashion-MNIST"),
    "csnn-shallow-wide-binary-mnist.npz": ("csnn-shallow-wide-binary", "MNIST"),
    "csnn-shallow-xwide-binary-mnist.npz": ("csnn-shallow-xwide-binary", "MNIST"),
    "csnn-shallow-xxwide-binary-mnist.npz": ("csnn-shallow-xxwide-binary", "MNIST"),
    "csnn-shallow-xxxwide-binary-mnist.npz": ("csnn-shallow-xxxwide-binary", "MNIST"),
    "csnn-shallow-xxwide-tau80-mnist.npz": ("csnn-shallow-xxwide-tau80", "MNIST"),
    "csnn-shallow-xxwide-tau80-fashion-mnist.npz": ("csnn-shallow-xxwide-tau80", "Fashion-MNIST"),
    "csnn-shallow-xxwide-binary-fashion-mnist.npz": ("csnn-shallow-xxwide-binary", "Fashion-MNIST"),
    "csnn-shallow-xwide-binary-fashion-mnist.npz": ("csnn-shallow-xwide-binary", "Fashion-MNIST"),
    "csnn-shallow-wide-binary-fashion-mnist.npz": ("csnn-shallow-wide-binary", "Fashion-MNIST"),
    "csnn-binary-mnist.npz": ("csnn-binary", "MNIST"),
    "csnn-fashion-mnist.npz": ("csnn", "Fashion-MNIST"),
    "csnn-binary-fashion-mnist.npz": ("csnn-binary", "Fashion-MNIST"),
    "dense-mnist.npz": ("dense", "MNIST"),
    "dense-long-mnist.npz": ("dense-long", "MNIST"),
    "dense-binary-mnist.npz": ("dense-binary", "MNIST"),
    "dense-binary-long-mnist.npz": ("dense-binary-long", "MNIST"),
    "dense-fashion-mnist.npz": ("dense", "Fashion-MNIST"),
    "dense-binary-fashion-mnist.npz": ("dense-binary", "Fashion-MNIST"),
    "dense-wide-fashion-mnist.npz": ("dense-wide", "Fashion-MNIST"),
    "dense-wide-binary-mnist.npz": ("dense-wide-binary", "MNIST"),
    "dense-wide-binary-long-mnist.npz": ("dense-wide-binary-long", "MNIST"),
    "dense-wide-binary-fashion-mnist.npz": ("dense-wide-binary", "Fashion-MNIST"),
    "dense-xwide-binary-mnist.npz": ("dense-xwide-binary", "MNIST"),
    "dense-xwide-binary-fashion-mnist.npz": ("dense-xwide-binary", "Fashion-MNIST"),
    "csnn-wide-binary-mnist.npz": ("csnn-wide-binary", "MNIST"),
}


def documented_accuracy(preset: str, dataset: str) -> float:
    """The bold test figure of the preset's row in docs/results.md, as a fraction."""
    for line in (ROOT / "docs" / "results.md").read_text().splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) > 5 and cells[1] == f"`{preset}`" and cells[2] == dataset:
            return float(re.search(r"\*\*([\d.]+) %\*\*", line).group(1)) / 100
    raise AssertionError(f"docs/results.md has no row for {preset} on {dataset}")


@pytest.mark.skipif(not os.environ.get("STIDI_RS_DATA"), reason="STIDI_RS_DATA is not set")
@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_checkpoint_reproduces_its_documented_accuracy(name, capsys):
    assert main(["eval", str(ROOT / "checkpoints" / name), "--json"]) == 0
    accuracy = json.loads(capsys.readouterr().out)["accuracy"]
    assert round(accuracy, 4) == pytest.approx(documented_accuracy(*SHIPPED[name]), abs=1e-9)

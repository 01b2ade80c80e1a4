"""The networks shipped in the package: networks/manifest.toml lists each file with
its test accuracy, which the presets' headlines, docs/results.md and `stidi-rs info`
print, and each network reproduces it."""

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import stidi_rs as sr
from stidi_rs import checkpoint, presets, shipped
from stidi_rs.cli import main

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PAIRS = [(name, d) for name, p in presets.PRESETS.items() for d in p.headline]
NETWORKS = Path(shipped.__file__).parent / "networks"
# Read from the package directory, so an installed wheel is checked for it too.
MANIFEST = tomllib.loads((NETWORKS / "manifest.toml").read_text())["network"]


def test_every_preset_ships_a_network_per_dataset_in_at_most_10_mib():
    files = sorted(NETWORKS.glob("*.npz"))
    assert sorted(f"{n}-{d}.npz" for n, d in PAIRS) == [f.name for f in files]
    assert sum(f.stat().st_size for f in files) <= 10 * 2**20
    assert [(n, d) for n, d, _ in shipped.available()] == PAIRS
    for name, dataset in PAIRS:
        _, config = checkpoint.load(shipped.pretrained_path(name, dataset))
        binary = presets.get(name).binary
        assert config.get("signs_only", False) == binary  # binary: signs only
        assert config.get("float32", False) == (not binary)  # real: float32
        assert config["trainer"]["config"]["dataset"] == dataset


def test_pretrained_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        sr.pretrained("nope")
    with pytest.raises(ValueError, match="no pretrained dense for 'cifar'"):
        sr.pretrained("dense", dataset="cifar")


def documented(name: str, dataset: str) -> float:
    """The test figure of (preset, dataset) in the table under docs/results.md's
    "Which preset to use": | `preset` | MNIST | Fashion-MNIST | ... |."""
    text = (ROOT / "docs" / "results.md").read_text()
    section = text.split("\n## Which preset to use\n", 1)[1].split("\n## ", 1)[0]
    column = {"mnist": 2, "fashion-mnist": 3}[dataset]
    for line in section.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) > 4 and cells[1] == f"`{name}`":
            return float(re.search(r"([\d.]+) %", cells[column]).group(1))
    raise AssertionError(f"docs/results.md has no row for {name} under Which preset to use")


@pytest.mark.parametrize("name, dataset", PAIRS)
def test_docs_print_each_presets_headline(name, dataset):
    assert documented(name, dataset) == presets.get(name).headline[dataset][0]


def test_the_manifest_lists_each_shipped_file_with_its_presets_headline():
    assert sorted(entry["file"] for entry in MANIFEST) == sorted(
        f.name for f in NETWORKS.glob("*.npz")
    )
    for entry in MANIFEST:
        name, dataset = entry["preset"], entry["dataset"]
        assert entry["file"] == f"{name}-{dataset}.npz"
        assert entry["test_accuracy"] == presets.get(name).headline[dataset][0], entry["file"]
        flag = "" if dataset == "mnist" else f" --dataset {dataset}"
        assert entry["command"] == f"stidi-rs train --preset {name}{flag}"
        # the export line says how the file was stored: signs only, or float32 reals
        _, config = checkpoint.load(NETWORKS / entry["file"])
        assert entry["export"].startswith(f"stidi-rs export runs/{name}-{dataset}/last.npz ")
        assert ("--float32" in entry["export"]) == config.get("float32", False), entry["file"]


@pytest.mark.slow
@pytest.mark.needs_data
@pytest.mark.parametrize("entry", MANIFEST, ids=[e["file"] for e in MANIFEST])
def test_a_pretrained_network_reproduces_its_headline_accuracy(entry, capsys):
    """The full test set, through the CLI (stidi-rs eval --pretrained)."""
    args = ["eval", "--pretrained", entry["preset"], "--dataset", entry["dataset"], "--json"]
    assert main(args) == 0
    accuracy = json.loads(capsys.readouterr().out)["accuracy"]
    assert round(100 * accuracy, 2) == entry["test_accuracy"]


@pytest.mark.needs_data
def test_pretrained_from_python_predicts_like_eval():
    from stidi_rs import datasets

    net = sr.pretrained("dense-binary", dataset="fashion-mnist")
    x, y = datasets.load("fashion-mnist", "test")
    pred = net.predict(sr.encode(x[:500].reshape(500, -1)))
    assert pred.shape == (500,) and (pred == y[:500]).mean() > 0.7
    assert np.array_equal(pred, net.predict(sr.encode(x[:500].reshape(500, -1))))


def test_info_lists_presets_with_headlines_and_the_pretrained_networks(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for name, p in presets.PRESETS.items():
        assert f"preset {name} " in out
        for dataset, (accuracy, _) in p.headline.items():
            assert f"{dataset} {accuracy:.2f} %" in out
            assert f"{name} {dataset}: test {accuracy:.2f} %" in out


def test_the_readme_preset_table_agrees_with_the_presets():
    rows = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) > 5 and cells[1].startswith("`") and cells[1].strip("`") in presets.PRESETS:
            rows[cells[1].strip("`")] = (float(cells[3].split()[0]), float(cells[4].split()[0]))
    assert rows == {
        name: (p.headline["mnist"][0], p.headline["fashion-mnist"][0])
        for name, p in presets.PRESETS.items()
    }

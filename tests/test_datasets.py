"""Tests for stidi_rs.datasets and stidi_rs.progress (no network: local http.server only)."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import io
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from stidi_rs import datasets
from stidi_rs.datasets import DatasetError, DownloadError, from_torchvision, load, load_idx
from stidi_rs.progress import progress_bar

# ----------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------
N, H, W = 5, 28, 28


def idx_images(images: np.ndarray) -> bytes:
    n, h, w = images.shape
    head = (0x803).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in (n, h, w))
    return head + images.astype(np.uint8).tobytes()


def idx_labels(labels: np.ndarray) -> bytes:
    return (0x801).to_bytes(4, "big") + len(labels).to_bytes(4, "big") + bytes(labels.tolist())


def fake_split(seed: int = 0, n: int = N) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, H, W), dtype=np.uint8), rng.integers(0, 10, n)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_split(
    directory: Path, split: str = "train", seed: int = 0, gz: bool = True
) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """Write a fake split's two IDX files; return the arrays and their hashes table."""
    directory.mkdir(parents=True, exist_ok=True)
    images, labels = fake_split(seed)
    img_stem, lab_stem = datasets.FILES[split]
    hashes = {}
    for stem, raw in ((img_stem, idx_images(images)), (lab_stem, idx_labels(labels))):
        path = directory / (stem + (".gz" if gz else ""))
        path.write_bytes(gzip.compress(raw) if gz else raw)
        hashes[stem] = sha(raw)
    return images, labels, hashes


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """No real data dirs, a scratch cache, no in-process cache, no internet mirrors."""
    monkeypatch.delenv("STIDI_RS_DATA", raising=False)
    monkeypatch.setenv("STIDI_RS_CACHE", str(tmp_path / "cache"))
    # a refused local port: an accidental download fails fast instead of going online
    monkeypatch.setenv("STIDI_RS_MIRRORS", "http://127.0.0.1:9/")
    monkeypatch.setattr(datasets, "SYSTEM_DATA_DIR", str(tmp_path / "system"))
    monkeypatch.setattr(datasets, "_VERIFIED", {})


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass


@pytest.fixture
def server(tmp_path):
    """Serve tmp_path/www on 127.0.0.1; yields (base_url, www_dir, request_log)."""
    www = tmp_path / "www"
    www.mkdir()
    log: list[str] = []

    class Handler(_QuietHandler):
        def do_GET(self):
            log.append(self.path)
            super().do_GET()

    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(www))
    )
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", www, log
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


# ----------------------------------------------------------------------------------
# IDX parsing
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("gz", [True, False])
def test_load_idx_roundtrip(tmp_path, gz):
    images, labels, _ = write_split(tmp_path, gz=gz)
    stems = datasets.FILES["train"]
    suffix = ".gz" if gz else ""
    x, y = load_idx(tmp_path / (stems[0] + suffix), tmp_path / (stems[1] + suffix))
    assert x.dtype == np.uint8 and x.shape == (N, H, W)
    assert y.dtype == np.int64 and y.shape == (N,)
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(y, labels)
    assert x.flags.owndata and x.flags.writeable and x.flags.c_contiguous
    assert y.flags.owndata


def test_load_idx_non_square_and_gzip_detected_by_content(tmp_path):
    images = np.arange(3 * 4 * 6, dtype=np.uint8).reshape(3, 4, 6)
    ip, lp = tmp_path / "imgs.bin", tmp_path / "labs.bin"
    ip.write_bytes(gzip.compress(idx_images(images)))  # gzip without a .gz suffix
    lp.write_bytes(idx_labels(np.array([1, 2, 3])))
    x, y = load_idx(ip, lp)
    assert x.shape == (3, 4, 6)
    np.testing.assert_array_equal(x, images)
    assert y.tolist() == [1, 2, 3]


def test_wrong_magic(tmp_path):
    images, labels = fake_split()
    ip, lp = tmp_path / "i", tmp_path / "l"
    ip.write_bytes(idx_labels(labels))  # labels where images are expected
    lp.write_bytes(idx_labels(labels))
    with pytest.raises(DatasetError, match=r"bad IDX magic 0x00000801.*0x00000803") as e:
        load_idx(ip, lp)
    assert str(ip) in str(e.value)


@pytest.mark.parametrize("drop", [1, 100, N * H * W + 6])  # last byte, a row, into the header
def test_truncated_raw(tmp_path, drop):
    images, labels = fake_split()
    ip, lp = tmp_path / "i", tmp_path / "l"
    ip.write_bytes(idx_images(images)[:-drop])
    lp.write_bytes(idx_labels(labels))
    with pytest.raises(DatasetError, match="truncated") as e:
        load_idx(ip, lp)
    assert str(ip) in str(e.value)


def test_trailing_bytes_rejected(tmp_path):
    images, labels = fake_split()
    ip, lp = tmp_path / "i", tmp_path / "l"
    ip.write_bytes(idx_images(images))
    lp.write_bytes(idx_labels(labels) + b"\x00")
    with pytest.raises(DatasetError, match="trailing bytes"):
        load_idx(ip, lp)


def test_truncated_gzip(tmp_path):
    images, labels = fake_split()
    ip, lp = tmp_path / "i.gz", tmp_path / "l.gz"
    ip.write_bytes(gzip.compress(idx_images(images))[:-30])
    lp.write_bytes(gzip.compress(idx_labels(labels)))
    with pytest.raises(DatasetError, match="gzip stream is truncated") as e:
        load_idx(ip, lp)
    assert str(ip) in str(e.value)


def test_count_mismatch(tmp_path):
    images, labels = fake_split()
    ip, lp = tmp_path / "i", tmp_path / "l"
    ip.write_bytes(idx_images(images))
    lp.write_bytes(idx_labels(labels[:-1]))
    with pytest.raises(DatasetError, match=f"{N} images but .* {N - 1} labels"):
        load_idx(ip, lp)


def test_load_idx_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        load_idx(tmp_path / "nope", tmp_path / "nope2")


# ----------------------------------------------------------------------------------
# load(): search order, verification, errors
# ----------------------------------------------------------------------------------
def test_load_from_root_named_dir(tmp_path):
    images, labels, hashes = write_split(tmp_path / "root" / "mnist", "test")
    x, y = load("mnist", "test", root=tmp_path / "root", download=False, hashes=hashes)
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(y, labels)


def test_load_torchvision_layout_raw_files(tmp_path):
    images, labels, hashes = write_split(tmp_path / "tv" / "FashionMNIST" / "raw", gz=False)
    x, y = load("FashionMNIST", "train", root=tmp_path / "tv", download=False, hashes=hashes)
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(y, labels)


def test_search_order(tmp_path, monkeypatch):
    """root > STIDI_RS_DATA > cache > system; <base>/<name> before torchvision layout."""
    root, env, system = tmp_path / "root", tmp_path / "env", tmp_path / "system"
    cache = Path(os.environ["STIDI_RS_CACHE"])
    monkeypatch.setenv("STIDI_RS_DATA", str(env))
    write_split(system / "mnist")
    write_split(cache / "MNIST" / "raw")
    assert datasets.find("mnist", "train", root)[0].parent == cache / "MNIST" / "raw"
    write_split(cache / "mnist")
    assert datasets.find("mnist", "train", root)[0].parent == cache / "mnist"
    write_split(env / "MNIST" / "raw")
    assert datasets.find("mnist", "train", root)[0].parent == env / "MNIST" / "raw"
    write_split(root / "mnist")
    assert datasets.find("mnist", "train", root)[0].parent == root / "mnist"
    assert datasets.find("mnist", "train")[0].parent == env / "MNIST" / "raw"
    # files directly in a base do not count, nor does a directory with only one file
    (tmp_path / "flat").mkdir()
    write_split(tmp_path / "flat")
    assert datasets.find("fashion-mnist", "train", tmp_path / "flat") is None
    (root / "fashion-mnist").mkdir()
    (root / "fashion-mnist" / "train-images-idx3-ubyte").write_bytes(b"x")
    assert datasets.find("fashion-mnist", "train", root) is None


def test_uncompressed_preferred_over_gz(tmp_path):
    d = tmp_path / "mnist"
    write_split(d, gz=True, seed=1)
    write_split(d, gz=False, seed=2)
    ip, lp = datasets.find("mnist", "train", tmp_path)
    assert ip.name == "train-images-idx3-ubyte" and lp.name == "train-labels-idx1-ubyte"


def test_cache_dir_env(tmp_path, monkeypatch):
    monkeypatch.setenv("STIDI_RS_CACHE", str(tmp_path / "c"))
    assert datasets.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("STIDI_RS_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert datasets.cache_dir() == tmp_path / "xdg" / "stidi-rs"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert datasets.cache_dir() == tmp_path / "home" / ".cache" / "stidi-rs"


def test_missing_without_download(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        load("mnist", "train", root=tmp_path / "r", download=False)
    msg = str(e.value)
    assert "train-images-idx3-ubyte" in msg and "STIDI_RS_DATA" in msg
    assert "download=True" in msg and str(tmp_path / "r" / "mnist") in msg


def test_bad_name_and_split():
    with pytest.raises(ValueError, match="unknown dataset"):
        load("cifar10", "train", download=False)
    with pytest.raises(ValueError, match="split"):
        load("mnist", "validation", download=False)


def test_hash_mismatch_with_pinned_hashes(tmp_path):
    write_split(tmp_path / "mnist")  # fake data can never match the real MNIST hashes
    with pytest.raises(DatasetError, match="SHA-256") as e:
        load("mnist", "train", root=tmp_path, download=False)
    msg = str(e.value)
    assert "train-images-idx3-ubyte.gz" in msg and "download=True" in msg
    assert datasets.SHA256["mnist"]["train-images-idx3-ubyte"] in msg


def test_truncated_file_in_load_says_what_to_do(tmp_path):
    _, _, hashes = write_split(tmp_path / "mnist", gz=False)
    p = tmp_path / "mnist" / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-5])
    with pytest.raises(DatasetError, match=r"truncated[\s\S]*Delete .*download=True"):
        load("mnist", "train", root=tmp_path, download=False, hashes=hashes)


def test_verification_is_cached_and_invalidated(tmp_path, monkeypatch):
    images, _, hashes = write_split(tmp_path / "mnist", gz=False)
    calls = []
    real = datasets._sha256
    monkeypatch.setattr(datasets, "_sha256", lambda b: calls.append(len(b)) or real(b))

    def run():
        return load("mnist", "train", root=tmp_path, download=False, hashes=hashes)

    run()
    assert len(calls) == 2  # images + labels hashed once
    run()
    assert len(calls) == 2  # in-process cache
    datasets._VERIFIED.clear()
    run()
    assert len(calls) == 2  # sidecar cache
    assert (Path(os.environ["STIDI_RS_CACHE"]) / "verified.json").is_file()

    # same size, same mtime, different content: must be detected
    p = tmp_path / "mnist" / "train-images-idx3-ubyte"
    st = p.stat()
    raw = bytearray(p.read_bytes())
    raw[-1] ^= 0xFF
    p.write_bytes(bytes(raw))
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert p.stat().st_size == st.st_size and p.stat().st_mtime_ns == st.st_mtime_ns
    with pytest.raises(DatasetError, match="SHA-256"):
        run()


def test_unwritable_cache_still_verifies(tmp_path, monkeypatch):
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("")
    monkeypatch.setenv("STIDI_RS_CACHE", str(blocker / "cache"))  # cannot be created
    images, _, hashes = write_split(tmp_path / "mnist")
    x, _ = load("mnist", "train", root=tmp_path, download=False, hashes=hashes)
    np.testing.assert_array_equal(x, images)


# ----------------------------------------------------------------------------------
# download path (local server only)
# ----------------------------------------------------------------------------------
def test_download_with_fallback_and_progress(tmp_path, server, capsys):
    base, www, log = server
    images, labels, hashes = write_split(www / "good", "test")
    # first mirror: corrupt images (valid gzip, wrong content) and no labels at all
    bad = www / "bad"
    bad.mkdir()
    (bad / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00" * 100))
    mirrors = [f"{base}/bad/", f"{base}/good"]
    root = tmp_path / "root"
    x, y = load("mnist", "test", root=root, mirrors=mirrors, hashes=hashes, progress=True)
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(y, labels)
    assert sorted(p.name for p in (root / "mnist").iterdir()) == [
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ]  # no temp files left behind
    assert log[:2] == ["/bad/t10k-images-idx3-ubyte.gz", "/good/t10k-images-idx3-ubyte.gz"]
    err = capsys.readouterr().err
    assert "t10k-images-idx3-ubyte.gz" in err and "100%" in err and "trying next mirror" in err
    # second call: found on disk, no new requests
    n_requests = len(log)
    load("mnist", "test", root=root, mirrors=mirrors, hashes=hashes)
    assert len(log) == n_requests


def test_download_to_cache_via_env_mirrors(tmp_path, server, monkeypatch):
    base, www, log = server
    images, _, hashes = write_split(www / "fashion-mnist", "train")
    monkeypatch.setenv("STIDI_RS_MIRRORS", f"{base}/missing/, {base}/{{name}}/")
    x, _ = load("fashion_mnist", "train", hashes=hashes, progress=False)
    np.testing.assert_array_equal(x, images)
    cache = Path(os.environ["STIDI_RS_CACHE"])
    assert (cache / "fashion-mnist" / "train-images-idx3-ubyte.gz").is_file()
    assert "/missing/train-images-idx3-ubyte.gz" in log


def test_download_all_mirrors_fail(tmp_path, server):
    base, www, _ = server
    _, _, hashes = write_split(www / "m")
    hashes = {k: "0" * 64 for k in hashes}  # served files never match
    root = tmp_path / "root"
    with pytest.raises(DownloadError, match="every mirror failed") as e:
        load("mnist", "train", root=root, mirrors=[f"{base}/m/", f"{base}/x/"], hashes=hashes)
    msg = str(e.value)
    assert f"{base}/m/train-images-idx3-ubyte.gz" in msg and "404" in msg
    assert "STIDI_RS_DATA" in msg
    assert list((root / "mnist").iterdir()) == []  # nothing partial left


def test_download_only_missing_file(tmp_path, server):
    base, www, log = server
    _, _, hashes = write_split(www / "m")
    # the target already has the images file; only labels must be fetched
    write_split(tmp_path / "mnist")
    (tmp_path / "mnist" / "train-labels-idx1-ubyte.gz").unlink()
    load("mnist", "train", root=tmp_path, mirrors=[f"{base}/m/"], hashes=hashes)
    assert log == ["/m/train-labels-idx1-ubyte.gz"]


def test_default_mirrors_are_official():
    assert datasets.MIRRORS["mnist"][0] == "https://ossci-datasets.s3.amazonaws.com/mnist/"
    assert len(datasets.MIRRORS["fashion-mnist"]) >= 2
    assert datasets._mirror_list("mnist", "http://a/{name}, http://b") == [
        "http://a/mnist/",
        "http://b/",
    ]


# ----------------------------------------------------------------------------------
# real data (needs_data: skipped unless STIDI_RS_DATA is set)
# ----------------------------------------------------------------------------------
REAL_DATA = os.environ.get("STIDI_RS_DATA")


@pytest.fixture(scope="module")
def real_data(tmp_path_factory):
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STIDI_RS_DATA", REAL_DATA)
        mp.setenv("STIDI_RS_CACHE", str(tmp_path_factory.mktemp("real-cache")))
        for name in datasets.DATASETS:
            for split in ("train", "test"):
                out[name, split] = load(name, split, download=False)
    return out


@pytest.mark.needs_data
@pytest.mark.parametrize("name", datasets.DATASETS)
@pytest.mark.parametrize("split,n", [("train", 60000), ("test", 10000)])
def test_real_data(real_data, name, split, n):
    x, y = real_data[name, split]
    assert x.shape == (n, 28, 28) and x.dtype == np.uint8
    assert y.shape == (n,) and y.dtype == np.int64
    assert y.min() == 0 and y.max() == 9 and len(np.unique(y)) == 10
    assert x.max() == 255 and x.min() == 0


@pytest.mark.needs_data
def test_real_data_known_values(real_data):
    # first labels of the canonical files
    assert real_data["mnist", "train"][1][:5].tolist() == [5, 0, 4, 1, 9]
    assert real_data["mnist", "test"][1][:5].tolist() == [7, 2, 1, 0, 4]
    assert real_data["fashion-mnist", "train"][1][:5].tolist() == [9, 0, 0, 3, 0]
    assert np.bincount(real_data["fashion-mnist", "test"][1]).tolist() == [1000] * 10


# ----------------------------------------------------------------------------------
# torchvision adapter (stand-in objects; torchvision is never imported)
# ----------------------------------------------------------------------------------
class FakeTensor:
    """Minimal torch.Tensor stand-in: detach()/cpu()/numpy()."""

    def __init__(self, a):
        self.a = np.asarray(a)

    def detach(self):
        return self

    def cpu(self):
        return self

    def numpy(self):
        return self.a


class DataTargets:
    def __init__(self, data, targets):
        self.data, self.targets = data, targets


class Indexable:
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_from_torchvision_data_targets_tensors():
    images, labels = fake_split()
    x, y = from_torchvision(DataTargets(FakeTensor(images), FakeTensor(labels.astype(np.int32))))
    np.testing.assert_array_equal(x, images)
    assert x.dtype == np.uint8 and y.dtype == np.int64 and y.tolist() == labels.tolist()
    assert x.flags.owndata or x.base is None


def test_from_torchvision_list_targets_and_channel_axis():
    images = np.arange(2 * 32 * 32, dtype=np.uint8).reshape(2, 32, 32, 1)
    x, y = from_torchvision(DataTargets(images, [3, 4]))
    assert x.shape == (2, 32, 32) and y.tolist() == [3, 4]


def test_from_torchvision_indexable_float_tensors():
    images, labels = fake_split()
    items = [
        (FakeTensor(im[None] / 255.0), FakeTensor(np.int64(lab)))
        for im, lab in zip(images, labels, strict=True)
    ]
    x, y = from_torchvision(Indexable(items))
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(y, labels)


def test_from_torchvision_indexable_pil_like():
    class FakePIL:  # PIL images expose __array_interface__
        def __init__(self, a):
            self.__array_interface__ = a.__array_interface__
            self._keep = a

    images, labels = fake_split()
    x, y = from_torchvision(
        Indexable([(FakePIL(im), int(lab)) for im, lab in zip(images, labels, strict=True)])
    )
    np.testing.assert_array_equal(x, images)
    assert y.dtype == np.int64


def test_from_torchvision_subset():
    images, labels = fake_split()

    class Subset:
        dataset = DataTargets(images, labels)
        indices = [4, 0]

    x, y = from_torchvision(Subset())
    np.testing.assert_array_equal(x, images[[4, 0]])
    assert y.tolist() == [labels[4], labels[0]]


def test_from_torchvision_rejects_bad_input():
    with pytest.raises(DatasetError, match="Normalize"):
        from_torchvision(DataTargets(np.full((2, 4, 4), -0.5), [0, 1]))
    with pytest.raises(DatasetError, match="single-channel"):
        from_torchvision(DataTargets(np.zeros((2, 4, 4, 3), np.uint8), [0, 1]))
    with pytest.raises(DatasetError, match="2 images but 3 labels"):
        from_torchvision(DataTargets(np.zeros((2, 4, 4), np.uint8), [0, 1, 2]))
    with pytest.raises(TypeError):
        from_torchvision(42)


# ----------------------------------------------------------------------------------
# progress bars: our defaults on top of tqdm, not tqdm itself
# ----------------------------------------------------------------------------------
class TTY(io.StringIO):
    def isatty(self):
        return True


def frames(stream: io.StringIO) -> list[str]:
    """The states a bar drew, oldest first."""
    return [f for f in stream.getvalue().rstrip("\n").split("\r") if f]


def test_progress_is_quiet_off_a_terminal_unless_forced():
    for show, stream in ((None, io.StringIO()), (False, TTY()), (False, io.StringIO())):
        with progress_bar(3, "quiet", show=show, file=stream) as bar:
            bar.update(3)
        assert stream.getvalue() == "", show
    tty = TTY()
    with progress_bar(3, "on a terminal", show=None, file=tty) as bar:
        bar.update(3)
    assert "on a terminal" in tty.getvalue() and "3/3" in tty.getvalue()


def test_a_forced_bar_shows_desc_counts_unit_and_postfix():
    out = io.StringIO()  # not a terminal: show=True draws anyway
    with progress_bar(200, "epoch 1/3", "img", show=True, file=out) as bar:
        bar.set_postfix(acc="91.2%", refresh=False)
        bar.update(50)
    last = frames(out)[-1]
    assert last.startswith("epoch 1/3:") and "50/200" in last and "img/s" in last
    assert "acc=91.2%" in last
    assert out.getvalue().endswith("\n")  # the finished bar keeps its line


def test_progress_counts_the_initial_work_as_done():
    out = io.StringIO()
    with progress_bar(10, "sweep", "trial", show=True, initial=6, file=out) as bar:
        assert "6/10" in frames(out)[0]  # a resumed sweep starts where it was
        bar.update(2)
    assert "8/10" in frames(out)[-1]


def test_download_bars_scale_bytes_and_item_bars_count_exactly():
    out = io.StringIO()
    with progress_bar(10 * 2**20, "file.gz", "B", show=True, file=out) as bar:
        bar.update(3 * 2**20)
    assert "3.00M/10.0M" in frames(out)[-1] and "B/s" in frames(out)[-1]  # 1024-based
    assert str(3 * 2**20) not in out.getvalue()
    out = io.StringIO()
    with progress_bar(60000, "epoch 1/1", "img", show=True, file=out) as bar:
        bar.update(1500)
    assert "1500/60000" in frames(out)[-1]

"""MNIST and Fashion-MNIST loaders, an IDX reader and a torchvision adapter.

Only numpy, the standard library and tqdm (download bars) are used; torchvision is
never imported.

Where :func:`load` looks for files
----------------------------------
Base directories, in this order (each one that is set):

1. the ``root`` argument,
2. ``$STIDI_RS_DATA``,
3. the user cache: ``$STIDI_RS_CACHE``, else ``$XDG_CACHE_HOME/stidi-rs``,
   else ``~/.cache/stidi-rs``,
4. ``/usr/share/datasets`` (:data:`SYSTEM_DATA_DIR`; Debian's ``dataset-fashion-mnist``).

Inside each base two sub-directories are tried: ``<base>/<name>/`` (``mnist``,
``fashion-mnist``), then torchvision's ``<base>/MNIST/raw/`` or
``<base>/FashionMNIST/raw/``. The first directory holding *both* files of the split
(images and labels, each as ``<file>`` or ``<file>.gz``; the uncompressed one is
preferred) wins. Files directly in ``<base>`` are not considered, so one base can hold
both datasets.

If nothing is found and ``download=True``, missing files are downloaded to
``<root>/<name>/`` when ``root`` is given, else to ``<cache>/<name>/``
(``$STIDI_RS_DATA`` and system directories are never written to).

Verification
------------
Every file used by :func:`load` is checked against the pinned SHA-256 of its
*decompressed* bytes (:data:`SHA256`). Results are remembered in-process and in
``<cache>/verified.json`` (written only if the cache directory is writable), keyed by
the file's real path, device, inode, size, mtime and ctime; any change to the file
(even with its mtime restored) changes the key, so the file is hashed again.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import os
import sys
import tempfile
import urllib.request
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .progress import progress_bar

__all__ = [
    "DATASETS",
    "MIRRORS",
    "SHA256",
    "SYSTEM_DATA_DIR",
    "DatasetError",
    "DownloadError",
    "cache_dir",
    "find",
    "from_torchvision",
    "load",
    "load_idx",
    "read_idx",
]

DATASETS = ("mnist", "fashion-mnist")
"""Names accepted by :func:`load`."""

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
"""Canonical (images, labels) file names per split, without ``.gz``."""

SHA256: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",  # noqa: E501
        "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",  # noqa: E501
        "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",  # noqa: E501
        "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",  # noqa: E501
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",  # noqa: E501
        "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",  # noqa: E501
        "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",  # noqa: E501
        "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",  # noqa: E501
    },
}
"""Pinned SHA-256 of the decompressed files, per dataset and file name."""

MIRRORS: dict[str, tuple[str, ...]] = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ),
    "fashion-mnist": (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ),
}
"""Download base URLs, tried in order; ``<url><file>.gz`` is fetched.

Overridden by ``load(..., mirrors=[...])`` or by ``$STIDI_RS_MIRRORS`` (comma- or
whitespace-separated URLs). A ``{name}`` placeholder in a URL is replaced by the
dataset name.
"""

SYSTEM_DATA_DIR = "/usr/share/datasets"
"""System-wide base directory searched last."""

_TORCHVISION_DIRS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
_IMAGES_MAGIC = 0x00000803
_LABELS_MAGIC = 0x00000801
_TIMEOUT = 60.0
_CHUNK = 1 << 16
_VERIFIED: dict[tuple[Any, ...], str] = {}  # in-process verification cache
_SIDECAR = "verified.json"


class DatasetError(ValueError):
    """A dataset file is malformed, truncated, or fails its checksum."""


class DownloadError(DatasetError):
    """No mirror delivered a valid file."""


# ----------------------------------------------------------------------------------
# IDX parsing
# ----------------------------------------------------------------------------------
def _read_bytes(path: Path) -> tuple[bytes, os.stat_result]:
    """Read a file, gunzipping it when it starts with the gzip magic; also return its stat."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            head = f.read(2)
            f.seek(0)
            if head == b"\x1f\x8b":
                try:
                    with gzip.GzipFile(fileobj=f) as g:
                        data = g.read()
                except EOFError as e:
                    raise DatasetError(
                        f"{path}: gzip stream is truncated (incomplete download?): {e}"
                    ) from e
                except (OSError, zlib.error) as e:  # BadGzipFile, CRC errors
                    raise DatasetError(f"{path}: corrupt gzip data: {e}") from e
            else:
                data = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"IDX file not found: {path}") from None
    return data, st


def _parse_idx(data: bytes, path: Path, magic: int, ndim: int) -> np.ndarray:
    what = "images" if magic == _IMAGES_MAGIC else "labels"
    header = 4 + 4 * ndim
    got = int.from_bytes(data[:4], "big")
    if len(data) >= 4 and got != magic:
        raise DatasetError(
            f"{path}: bad IDX magic 0x{got:08x}, expected 0x{magic:08x} for {what} "
            f"(ubyte, {ndim}-D); is this the right file?"
        )
    if len(data) < header:
        raise DatasetError(
            f"{path}: truncated: only {len(data)} bytes, shorter than an IDX {what} "
            f"header ({header} bytes)"
        )
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims, dtype=np.int64))
    body = len(data) - header
    if body != expected:
        kind = "truncated" if body < expected else "has trailing bytes"
        raise DatasetError(
            f"{path}: {kind}: header says shape {dims} ({expected} bytes of data) "
            f"but the file has {body}"
        )
    # reshape first, then copy: the copy is C-contiguous and owns its buffer
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


def read_idx(path: str | os.PathLike[str], kind: str) -> np.ndarray:
    """Read one IDX file (raw or gzip, detected from its content).

    Parameters
    ----------
    path : path-like
        The file.
    kind : {"images", "labels"}
        Expected content: 3-D ubyte (magic 0x803) or 1-D ubyte (magic 0x801).

    Returns
    -------
    numpy.ndarray
        uint8 array of shape (N, H, W) for images, int64 of shape (N,) for labels.
    """
    arr, _ = _read_checked(Path(path), kind)
    return arr


def _read_checked(path: Path, kind: str) -> tuple[np.ndarray, tuple[bytes, os.stat_result]]:
    if kind not in ("images", "labels"):
        raise ValueError(f"kind must be 'images' or 'labels', not {kind!r}")
    data, st = _read_bytes(path)
    if kind == "images":
        arr = _parse_idx(data, path, _IMAGES_MAGIC, 3)
    else:
        arr = _parse_idx(data, path, _LABELS_MAGIC, 1).astype(np.int64)
    return arr, (data, st)


def load_idx(
    images_path: str | os.PathLike[str], labels_path: str | os.PathLike[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Load an IDX image/label pair (each raw or ``.gz``); no checksum is applied.

    Parameters
    ----------
    images_path, labels_path : path-like
        IDX3 ubyte images and IDX1 ubyte labels.

    Returns
    -------
    images : numpy.ndarray
        uint8, shape (N, H, W), owning its data.
    labels : numpy.ndarray
        int64, shape (N,).

    Raises
    ------
    FileNotFoundError
        A file does not exist.
    DatasetError
        Bad magic, truncated or oversized data, corrupt gzip, or N mismatch.
    """
    images = read_idx(images_path, "images")
    labels = read_idx(labels_path, "labels")
    _check_counts(images, labels, Path(images_path), Path(labels_path))
    return images, labels


def _check_counts(images: np.ndarray, labels: np.ndarray, ip: Path, lp: Path) -> None:
    if len(images) != len(labels):
        raise DatasetError(
            f"{ip} has {len(images)} images but {lp} has {len(labels)} labels; "
            "they do not belong together"
        )


# ----------------------------------------------------------------------------------
# Locating files
# ----------------------------------------------------------------------------------
def cache_dir() -> Path:
    """Return the user cache directory (``$STIDI_RS_CACHE``, XDG, or ``~/.cache/stidi-rs``)."""
    env = os.environ.get("STIDI_RS_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "stidi-rs"


def _base_dirs(root: str | os.PathLike[str] | None) -> list[Path]:
    bases = []
    if root is not None:
        bases.append(Path(root).expanduser())
    env = os.environ.get("STIDI_RS_DATA")
    if env:
        bases.append(Path(env).expanduser())
    bases.append(cache_dir())
    bases.append(Path(SYSTEM_DATA_DIR))
    return bases


def _candidate_dirs(name: str, root: str | os.PathLike[str] | None) -> list[Path]:
    out: list[Path] = []
    for base in _base_dirs(root):
        for d in (base / name, base / _TORCHVISION_DIRS[name] / "raw"):
            if d not in out:
                out.append(d)
    return out


def _existing(directory: Path, stem: str) -> Path | None:
    for p in (directory / stem, directory / f"{stem}.gz"):
        if p.is_file():
            return p
    return None


def _normalize(name: str, split: str) -> tuple[str, str]:
    key = name.lower().replace("_", "-")
    if key == "fashionmnist":
        key = "fashion-mnist"
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {DATASETS}")
    if split not in FILES:
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    return key, split


def find(
    name: str, split: str, root: str | os.PathLike[str] | None = None
) -> tuple[Path, Path] | None:
    """Locate a split on disk without reading or verifying it.

    Parameters
    ----------
    name : {"mnist", "fashion-mnist"}
        Dataset.
    split : {"train", "test"}
        Split.
    root : path-like, optional
        Extra base directory searched first.

    Returns
    -------
    (images_path, labels_path) or None
        The first directory (see the module docstring) holding both files.
    """
    name, split = _normalize(name, split)
    stems = FILES[split]
    for d in _candidate_dirs(name, root):
        paths = [_existing(d, s) for s in stems]
        if paths[0] is not None and paths[1] is not None:
            return paths[0], paths[1]
    return None


# ----------------------------------------------------------------------------------
# Verification
# ----------------------------------------------------------------------------------
def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _stat_key(path: Path, st: os.stat_result) -> tuple[Any, ...]:
    return (
        os.path.realpath(path),
        st.st_dev,
        st.st_ino,
        st.st_size,
        st.st_mtime_ns,
        st.st_ctime_ns,
    )


def _sidecar_path() -> Path:
    return cache_dir() / _SIDECAR


def _sidecar_read() -> dict[str, Any]:
    try:
        with open(_sidecar_path(), encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _sidecar_lookup(key: tuple[Any, ...]) -> str | None:
    entry = _sidecar_read().get(key[0])
    if isinstance(entry, dict) and entry.get("key") == list(key[1:]):
        sha = entry.get("sha256")
        return sha if isinstance(sha, str) else None
    return None


def _sidecar_store(key: tuple[Any, ...], sha: str) -> None:
    """Record a verified file; silently does nothing if the cache is not writable."""
    path = _sidecar_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _sidecar_read()
        data[key[0]] = {"key": list(key[1:]), "sha256": sha}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".verified.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1, sort_keys=True)
            os.replace(tmp, path)
        except BaseException:
            _unlink(tmp)
            raise
    except OSError:
        pass


def _verify(path: Path, data: bytes, st: os.stat_result, expected: str) -> None:
    """Check ``sha256(data) == expected`` unless this exact file version was verified before."""
    expected = expected.lower()
    key = _stat_key(path, st)
    if _VERIFIED.get(key) == expected or _sidecar_lookup(key) == expected:
        _VERIFIED[key] = expected
        return
    got = _sha256(data)
    if got != expected:
        raise DatasetError(
            f"{path}: SHA-256 of the decompressed data is {got}, expected {expected}; "
            "the file is corrupt or not the official one. Delete it and call "
            "load(..., download=True), or point STIDI_RS_DATA / root= at good files."
        )
    _VERIFIED[key] = expected
    _sidecar_store(key, expected)


# ----------------------------------------------------------------------------------
# Download
# ----------------------------------------------------------------------------------
def _mirror_list(name: str, mirrors: Iterable[str] | str | None) -> list[str]:
    if mirrors is None:
        env = os.environ.get("STIDI_RS_MIRRORS", "").strip()
        mirrors = env.replace(",", " ").split() if env else MIRRORS[name]
    elif isinstance(mirrors, str):
        mirrors = mirrors.replace(",", " ").split()
    out = [m.replace("{name}", name) for m in mirrors]
    return [m if m.endswith("/") else m + "/" for m in out]


def _unlink(path: str | Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _fetch(url: str, target: Path, expected: str, progress: bool | None) -> None:
    """Download ``url`` to ``target`` atomically after checking its decompressed hash."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            with urllib.request.urlopen(url, timeout=_TIMEOUT) as resp:
                length = resp.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                with progress_bar(total, target.name, "B", show=progress) as bar:
                    while chunk := resp.read(_CHUNK):
                        out.write(chunk)
                        bar.update(len(chunk))
            if total is not None and out.tell() != total:
                raise DatasetError(f"{url}: got {out.tell()} of {total} bytes")
        data, _ = _read_bytes(Path(tmp))
        got = _sha256(data)
        if got != expected.lower():
            raise DatasetError(f"{url}: SHA-256 {got} does not match expected {expected}")
        os.replace(tmp, target)
    except BaseException:
        _unlink(tmp)
        raise


def _download(
    name: str, stem: str, directory: Path, mirrors: list[str], expected: str, progress: bool | None
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{stem}.gz"
    errors = []
    for i, base in enumerate(mirrors):
        url = f"{base}{stem}.gz"
        try:
            _fetch(url, target, expected, progress)
            return target
        except (OSError, ValueError, http.client.HTTPException) as e:
            errors.append(f"  {url}: {e}")
            if progress is not False and i + 1 < len(mirrors):
                print(f"stidi-rs: {url} failed ({e}); trying next mirror", file=sys.stderr)
    tried = "\n".join(errors) or "  (no mirrors configured)"
    raise DownloadError(
        f"could not download {name}/{stem}.gz into {directory}; every mirror failed:\n{tried}\n"
        f"Download it by hand into {directory} (or into $STIDI_RS_DATA/{name}/), "
        "or set STIDI_RS_MIRRORS to a working mirror."
    )


# ----------------------------------------------------------------------------------
# Public loader
# ----------------------------------------------------------------------------------
def load(
    name: str,
    split: str,
    root: str | os.PathLike[str] | None = None,
    download: bool = True,
    *,
    mirrors: Sequence[str] | str | None = None,
    hashes: Mapping[str, str] | None = None,
    progress: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Load MNIST or Fashion-MNIST, verified against pinned SHA-256 hashes.

    Parameters
    ----------
    name : {"mnist", "fashion-mnist"}
        Dataset (``"fashion_mnist"`` and ``"FashionMNIST"`` are accepted too).
    split : {"train", "test"}
        Split.
    root : path-like, optional
        Base directory searched first, and where downloads go (``<root>/<name>/``).
    download : bool
        Download missing files from the mirrors; otherwise raise FileNotFoundError.
    mirrors : sequence of str or str, optional
        Base URLs to try in order, overriding ``$STIDI_RS_MIRRORS`` and :data:`MIRRORS`.
    hashes : mapping, optional
        ``{file name without .gz: sha256 hex}`` overriding entries of :data:`SHA256`
        (for private copies and tests).
    progress : bool or None
        Download progress bar on stderr: ``None`` shows it only on a terminal.

    Returns
    -------
    images : numpy.ndarray
        uint8, shape (N, 28, 28).
    labels : numpy.ndarray
        int64, shape (N,).

    Raises
    ------
    FileNotFoundError
        Files are missing and ``download=False``.
    DatasetError
        A file is truncated, corrupt, has the wrong magic, or fails its checksum.
    DownloadError
        Every mirror failed.
    """
    name, split = _normalize(name, split)
    table = {**SHA256[name], **(dict(hashes) if hashes else {})}
    stems = FILES[split]
    found = find(name, split, root)
    if found is None:
        target_dir = (Path(root).expanduser() if root is not None else cache_dir()) / name
        if not download:
            searched = "\n".join(f"  {d}" for d in _candidate_dirs(name, root))
            raise FileNotFoundError(
                f"{name} {split} files ({stems[0]}[.gz], {stems[1]}[.gz]) not found in:\n"
                f"{searched}\nSet STIDI_RS_DATA to a directory containing '{name}/', "
                "pass root=..., or call load(..., download=True)."
            )
        urls = _mirror_list(name, mirrors)
        paths = []
        for stem in stems:
            have = _existing(target_dir, stem)
            if have is None:
                have = _download(name, stem, target_dir, urls, table[stem], progress)
            paths.append(have)
        found = (paths[0], paths[1])

    arrays = []
    for path, stem, kind in zip(found, stems, ("images", "labels"), strict=True):
        try:
            arr, (data, st) = _read_checked(path, kind)
        except DatasetError as e:
            raise DatasetError(
                f"{e}\nDelete {path} and call load({name!r}, {split!r}, download=True)."
            ) from e
        _verify(path, data, st, table[stem])
        del data
        arrays.append(arr)
    images, labels = arrays
    _check_counts(images, labels, found[0], found[1])
    return images, labels


# ----------------------------------------------------------------------------------
# torchvision adapter
# ----------------------------------------------------------------------------------
def _to_numpy(x: Any) -> np.ndarray:
    """Convert a tensor, PIL image, list or array to a numpy array without importing torch."""
    if hasattr(x, "detach"):
        x = x.detach()
    if hasattr(x, "cpu"):
        x = x.cpu()
    if hasattr(x, "numpy") and not isinstance(x, np.ndarray):
        x = x.numpy()
    return np.asarray(x)


def _to_uint8(images: np.ndarray) -> np.ndarray:
    if images.dtype == np.uint8:
        return images
    if images.size == 0:
        return images.astype(np.uint8)
    if images.dtype == np.bool_:
        return images.astype(np.uint8) * 255
    lo, hi = images.min(), images.max()
    if np.issubdtype(images.dtype, np.integer):
        if lo < 0 or hi > 255:
            raise DatasetError(f"integer pixel values span [{lo}, {hi}], outside 0..255")
        return images.astype(np.uint8)
    if np.issubdtype(images.dtype, np.floating):
        if not np.isfinite(images).all() or lo < 0 or hi > 255:
            raise DatasetError(
                f"float pixel values span [{lo}, {hi}]; expected [0, 1] or [0, 255] "
                "(drop a Normalize transform, or pass the dataset without transforms)"
            )
        scale = 255.0 if hi <= 1.0 else 1.0
        return np.rint(images * scale).astype(np.uint8)
    raise DatasetError(f"unsupported pixel dtype {images.dtype}")


def _squeeze_channel(images: np.ndarray) -> np.ndarray:
    if images.ndim == 4 and images.shape[1] == 1:  # (N, 1, H, W)
        images = images[:, 0]
    elif images.ndim == 4 and images.shape[3] == 1:  # (N, H, W, 1)
        images = images[..., 0]
    if images.ndim != 3:
        raise DatasetError(f"expected single-channel images of shape (N, H, W), got {images.shape}")
    return images


def from_torchvision(dataset: Any) -> tuple[np.ndarray, np.ndarray]:
    """Convert a torchvision-style dataset to ``(images, labels)`` arrays.

    Parameters
    ----------
    dataset : object
        Either has ``.data`` and ``.targets`` (tensors, arrays or lists; transforms are
        bypassed), or is a ``Subset``-like object with ``.dataset`` and ``.indices``, or
        supports ``len()`` and ``dataset[i] -> (image, label)`` with a PIL image,
        array or tensor. Float pixels in [0, 1] are scaled to 0..255; a singleton
        channel axis is dropped.

    Returns
    -------
    images : numpy.ndarray
        uint8, shape (N, H, W), C-contiguous and owning its data.
    labels : numpy.ndarray
        int64, shape (N,).
    """
    if hasattr(dataset, "data") and hasattr(dataset, "targets"):
        images = _to_numpy(dataset.data)
        labels = _to_numpy(dataset.targets)
    elif hasattr(dataset, "dataset") and hasattr(dataset, "indices"):
        images, labels = from_torchvision(dataset.dataset)
        idx = np.asarray(_to_numpy(dataset.indices), dtype=np.int64)
        return images[idx], labels[idx]
    elif hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__"):
        imgs, labs = [], []
        for i in range(len(dataset)):
            item = dataset[i]
            imgs.append(_to_numpy(item[0]))
            labs.append(int(_to_numpy(item[1])))
        if not imgs:
            raise DatasetError("dataset is empty")
        images = np.stack(imgs)
        labels = np.asarray(labs)
    else:
        raise TypeError(
            f"{type(dataset).__name__} has neither .data/.targets nor len() and indexing"
        )
    images = _squeeze_channel(_to_uint8(images))
    labels = np.asarray(labels)
    if labels.ndim != 1 or not (
        np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_
    ):
        raise DatasetError(f"labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise DatasetError(f"{len(images)} images but {len(labels)} labels")
    return np.array(images, dtype=np.uint8, order="C"), np.array(labels, dtype=np.int64)

"""Random translations and mirror images of training images.

Off unless asked for (``stidi-rs train --augment-shift N --augment-flip``). Each
epoch draws one offset (and one mirror bit) per training image from a generator
seeded by ``(seed, epoch)``, so a run, and a resumed run, stays deterministic.
Pixels shifted in from outside the image are 0 (no spike); nothing is resampled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Augment:
    """``shift``: largest offset in pixels along each axis; ``flip``: mirror left-right."""

    shift: int = 0
    flip: bool = False

    def __post_init__(self):
        if isinstance(self.shift, bool) or not isinstance(self.shift, (int, np.integer)):
            raise ValueError(f"shift must be an integer number of pixels, got {self.shift!r}")
        if self.shift < 0:
            raise ValueError(f"shift must be at least 0, got {self.shift}")
        object.__setattr__(self, "shift", int(self.shift))
        object.__setattr__(self, "flip", bool(self.flip))

    @property
    def active(self) -> bool:
        return self.shift > 0 or self.flip

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Per image: row offset, column offset, mirror (0/1); shape ``(n, 3)``."""
        s = self.shift
        out = np.zeros((n, 3), dtype=np.int64)
        if s:
            out[:, :2] = rng.integers(-s, s + 1, size=(n, 2))
        if self.flip:
            out[:, 2] = rng.integers(0, 2, size=n)
        return out

    def apply(self, images: np.ndarray, draws: np.ndarray) -> np.ndarray:
        """Move image ``k`` by ``draws[k, :2]`` (down, right) after mirroring it if asked."""
        x = np.asarray(images)
        if x.ndim != 3:
            raise ValueError(f"augmentation needs images of shape (N, H, W), got {x.shape}")
        if draws.shape != (len(x), 3):
            raise ValueError(f"need one (dy, dx, flip) per image, got {draws.shape}")
        if self.flip:
            x = np.where(draws[:, 2, None, None].astype(bool), x[:, :, ::-1], x)
        s = self.shift
        if not s:
            return x
        if s >= min(x.shape[1:]):
            raise ValueError(f"shift {s} is not smaller than the images ({x.shape[1:]})")
        n, h, w = x.shape
        padded = np.zeros((n, h + 2 * s, w + 2 * s), dtype=x.dtype)
        padded[:, s : s + h, s : s + w] = x
        # output pixel (r, c) reads input pixel (r - dy, c - dx)
        rows = (s - draws[:, 0])[:, None] + np.arange(h)
        cols = (s - draws[:, 1])[:, None] + np.arange(w)
        return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]

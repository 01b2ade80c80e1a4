"""A tiny dependency-free progress bar.

Example
-------
>>> with ProgressBar(total=1000, desc="train", unit="img") as bar:  # doctest: +SKIP
...     for batch in batches:
...         bar.update(len(batch))
...         bar.set_postfix(f"acc {acc:.1%}")

The bar writes ``\\r``-terminated updates to ``sys.stderr`` (or ``file``), at most
every ``mininterval`` seconds (0.1 s by default, i.e. ~10 Hz), plus a final line on
``close()``. It is silent when ``disable=True``, and also when the stream is not a
terminal unless ``force=True``, so logs and CI output stay clean.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

__all__ = ["ProgressBar", "format_count", "format_time"]

_SI = ("", "k", "M", "G", "T", "P")
_BINARY = ("", "Ki", "Mi", "Gi", "Ti", "Pi")


def format_time(seconds: float | None) -> str:
    """Format a duration as ``MM:SS`` or ``H:MM:SS`` (``?`` if unknown)."""
    if seconds is None or seconds != seconds or seconds in (float("inf"), float("-inf")):
        return "?"
    s = max(0, int(round(seconds)))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def format_count(value: float, unit: str = "") -> str:
    """Format a count with a unit prefix: binary (KiB, MiB) for ``unit="B"``, else SI.

    Plain item counts below 1000 are printed as integers (``"42"``).
    """
    base, prefixes = (1024.0, _BINARY) if unit == "B" else (1000.0, _SI)
    v = float(value)
    i = 0
    while abs(v) >= base and i < len(prefixes) - 1:
        v /= base
        i += 1
    if i == 0:
        num = f"{v:.0f}" if v == int(v) else f"{v:.1f}"
    else:
        num = f"{v:.1f}"
    return f"{num} {prefixes[i]}{unit}".rstrip() if unit == "B" else f"{num}{prefixes[i]}"


class ProgressBar:
    """Progress bar for loops and downloads, usable as a context manager.

    Parameters
    ----------
    total : int or None
        Expected number of items (or bytes); ``None`` hides the bar, percent and ETA.
    desc : str
        Description printed before the bar.
    unit : str
        Item unit for counts and rate; ``"B"`` formats counts as KiB/MiB and rate as MiB/s.
    file : text stream, optional
        Output stream; defaults to ``sys.stderr`` at construction time.
    disable : bool
        Never write anything.
    force : bool
        Write even when ``file`` is not a TTY (ignored when ``disable=True``).
    mininterval : float
        Minimum seconds between two redraws.
    iterable : iterable, optional
        Iterate through ``bar`` to advance by one per item; ``total`` defaults to its length.
    width : int
        Number of characters of the bar itself.
    clock : callable, optional
        Time source (seconds); ``time.monotonic`` by default. For tests.
    initial : int
        Items already done before the bar started (resumed work): counted in the
        progress, not in the rate and ETA.
    """

    def __init__(
        self,
        total: int | None = None,
        desc: str = "",
        unit: str = "it",
        *,
        file: IO[str] | None = None,
        disable: bool = False,
        force: bool = False,
        mininterval: float = 0.1,
        iterable: Iterable[Any] | None = None,
        width: int = 20,
        clock: Callable[[], float] | None = None,
        initial: int = 0,
    ) -> None:
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        self.total = total
        self.desc = desc
        self.unit = unit
        self.file = sys.stderr if file is None else file
        self.mininterval = mininterval
        self.iterable = iterable
        self.width = width
        self._clock = clock or time.monotonic
        self.n = self.initial = initial
        self.postfix = ""
        self.disabled = bool(disable) or not (force or _isatty(self.file))
        self._start = self._clock()
        self._last_draw: float | None = None
        self._last_len = 0
        self._closed = False

    # -- public API -----------------------------------------------------------------
    def update(self, n: int = 1) -> None:
        """Advance by ``n`` items and redraw if ``mininterval`` has passed."""
        self.n += n
        if self.disabled:
            return
        now = self._clock()
        if self._last_draw is None or now - self._last_draw >= self.mininterval:
            self._draw(now)

    def set_postfix(self, text: str = "", **values: Any) -> None:
        """Set text shown after the rate, e.g. ``set_postfix("acc 91.2%")`` or ``loss=0.3``."""
        parts = [text] if text else []
        parts += [f"{k}={_fmt_value(v)}" for k, v in values.items()]
        self.postfix = ", ".join(parts)

    def set_description(self, desc: str) -> None:
        """Change the description (shown at the next redraw)."""
        self.desc = desc

    def render(self, now: float | None = None) -> str:
        """Return the current status line (without ``\\r``)."""
        now = self._clock() if now is None else now
        elapsed = max(0.0, now - self._start)
        rate = (self.n - self.initial) / elapsed if elapsed > 0 else None
        unit = self.unit
        n_txt = self._count(self.n)
        head = f"{self.desc}: " if self.desc else ""
        if self.total:
            frac = min(1.0, max(0.0, self.n / self.total))
            filled = int(frac * self.width)
            bar = "#" * filled + "-" * (self.width - filled)
            total_txt = self._count(self.total)
            eta = (self.total - self.n) / rate if rate else None
            counts = f"{n_txt}/{total_txt}" + ("" if unit == "B" else f" {unit}")
            line = f"{head}{frac * 100:3.0f}%|{bar}| {counts} [{format_time(elapsed)}<"
            line += f"{format_time(eta)}"
        else:
            counts = n_txt + ("" if unit == "B" else f" {unit}")
            line = f"{head}{counts} [{format_time(elapsed)}"
        rate_txt = "?" if rate is None else format_count(rate, unit)
        rate_unit = "/s" if unit == "B" else f" {unit}/s"
        line += f", {rate_txt}{rate_unit}"
        if self.postfix:
            line += f", {self.postfix}"
        return line + "]"

    def refresh(self) -> None:
        """Redraw now, regardless of throttling."""
        if not self.disabled:
            self._draw(self._clock())

    def close(self) -> None:
        """Draw the final state and end the line; idempotent."""
        if self._closed:
            return
        self._closed = True
        if not self.disabled:
            self._draw(self._clock())
            self.file.write("\n")
            self.file.flush()

    # -- protocols ------------------------------------------------------------------
    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("ProgressBar was created without an iterable")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    # -- internals ------------------------------------------------------------------
    def _count(self, n: float) -> str:
        # bytes are scaled (KiB, MiB); item counts stay exact integers
        return format_count(n, "B") if self.unit == "B" else str(int(n))

    def _draw(self, now: float) -> None:
        line = self.render(now)
        pad = " " * max(0, self._last_len - len(line))
        self.file.write("\r" + line + pad)
        self.file.flush()
        self._last_len = len(line)
        self._last_draw = now


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)

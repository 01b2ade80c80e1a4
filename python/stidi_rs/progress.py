"""The one place that makes progress bars (tqdm), so every bar has the same defaults.

``show`` is the tri-state ``progress`` argument of :func:`stidi_rs.datasets.load`,
:class:`stidi_rs.Trainer` and the CLI: ``None`` draws the bar only when its stream is
a terminal (logs and CI stay clean), ``True`` always, ``False`` never.
"""

from __future__ import annotations

from typing import IO

from tqdm.auto import tqdm

__all__ = ["progress_bar"]


def progress_bar(
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    *,
    show: bool | None = None,
    initial: int = 0,
    file: IO[str] | None = None,
) -> tqdm:
    """A tqdm bar on ``file`` (stderr by default).

    ``unit="B"`` counts bytes in KiB/MiB steps; other units stay exact counts.
    ``initial`` is work done before the bar started (a resumed sweep): it counts in
    the bar but not in the rate and the ETA.
    """
    bytes_ = unit == "B"
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=bytes_,
        unit_divisor=1024 if bytes_ else 1000,
        initial=initial,
        file=file,
        # tqdm's None: disabled unless the stream is a TTY
        disable=None if show is None else not show,
    )

"""Type stubs for the compiled engine (rust/stidi-py)."""

from typing import Any

import numpy as np
import numpy.typing as npt

__version__: str

class DivergenceError(ValueError): ...

class Engine:
    """An architecture compiled for the Rust engine; weights are passed per call."""

    def __init__(
        self,
        layers: list[dict[str, Any]],
        input_shape: list[int],
        tau_rise: float,
        tau_fall: float,
        tmax: float,
        neuron: str = "psp",
    ) -> None: ...
    def forward(
        self,
        weights: list[npt.NDArray[np.float64] | None],
        packed: list[npt.NDArray[np.uint64] | None],
        times: npt.NDArray[np.float64],
    ) -> tuple[list[npt.NDArray[np.float64]], npt.NDArray[np.float64], int]: ...
    def predict(
        self,
        weights: list[npt.NDArray[np.float64] | None],
        packed: list[npt.NDArray[np.uint64] | None],
        times: npt.NDArray[np.float64],
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]: ...
    def train_steps(
        self,
        weights: list[npt.NDArray[np.float64] | None],
        packed: list[npt.NDArray[np.uint64] | None],
        times: npt.NDArray[np.float64],
        labels: npt.NDArray[np.int64],
        batch_size: int,
        rule: dict[str, Any],
        moments: tuple[list[npt.NDArray[np.float64] | None], list[npt.NDArray[np.float64] | None]]
        | None = None,
    ) -> dict[str, Any]:
        """Consecutive steps of ``rule`` over ``batch_size``-row slices of ``times``
        (the last may be smaller), in one call, updating the weights in place.
        ``rule`` holds ``name`` (``"stidi-bp"`` or ``"exact"``) and the rule's
        settings by name (``Rule.config()``; ``adam_step`` for the exact rule);
        ``moments`` is Adam's ``(m, v)`` per layer, updated in place. Returns
        ``predictions`` and ``cases`` of shape ``(n,)``, ``loss`` of shape
        ``(steps,)``, ``fired`` of shape ``(steps, layers)`` and ``adam_step``."""
    def gradients(
        self,
        weights: list[npt.NDArray[np.float64] | None],
        packed: list[npt.NDArray[np.uint64] | None],
        times: npt.NDArray[np.float64],
        labels: npt.NDArray[np.int64],
        rule: dict[str, Any],
    ) -> tuple[float, list[npt.NDArray[np.float64] | None]]:
        """Batch-mean loss and one flat gradient per layer (``None`` for pooling)."""
        ...

def pack_signs(weight: npt.NDArray[np.float64]) -> npt.NDArray[np.uint64]: ...
def set_num_threads(n: int) -> None: ...
def num_threads() -> int: ...
def max_threads() -> int: ...
def sweep_kernels() -> str: ...

"""stidi-rs: exact, event-driven convolutional spiking networks trained with STiDi-BP
(or exact spike-time gradients).

The Rust engine (``backend="rust"``, the default) and the NumPy reference
(``backend="numpy"``, module :mod:`stidi_rs.reference`) implement the same maths,
described in ``docs/algorithm.md``.
"""

from ._core import __version__, max_threads, num_threads, set_num_threads, sweep_kernels
from .layers import PSP, Conv2d, Dense, MaxPool2d, pack_signs, unpack_signs
from .learning import DivergenceError, ExactGradient, Homeostasis, Rule, STiDiBP, make_rule
from .network import Network, encode
from .shipped import pretrained

__all__ = [
    "PSP",
    "Conv2d",
    "MaxPool2d",
    "Dense",
    "Network",
    "Rule",
    "STiDiBP",
    "ExactGradient",
    "make_rule",
    "Homeostasis",
    "DivergenceError",
    "encode",
    "pretrained",
    "pack_signs",
    "unpack_signs",
    "set_num_threads",
    "num_threads",
    "max_threads",
    "sweep_kernels",
    "__version__",
]

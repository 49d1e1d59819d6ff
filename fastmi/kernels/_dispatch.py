"""One place that decides which implementation of a fused op runs.

* ``"triton"``: the Triton kernels.  Default for CUDA tensors.  On CPU tensors they run only
  under the interpreter (``TRITON_INTERPRET=1`` set before ``fastmi.kernels`` is imported), which
  is how the tests hold them against the reference without a GPU.
* ``"cpu"``: the chunked torch / numba paths.  Default for CPU tensors.
* ``"reference"``: the plain torch references that materialise logits.  Ground truth only.

Override with the environment variable ``FASTMI_KERNELS`` or, scoped, ``with fastmi.kernels.backend("triton"):``.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

import torch

BACKENDS = ("triton", "cpu", "reference")
_local = threading.local()


def _forced() -> str | None:
    forced = getattr(_local, "backend", None) or os.environ.get("FASTMI_KERNELS") or None
    if forced is not None and forced not in BACKENDS:
        raise ValueError(f"unknown fastmi kernel backend {forced!r}; choose one of {BACKENDS}")
    return forced


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def choose_backend(tensor: torch.Tensor) -> str:
    """The backend for an op whose main input is ``tensor``."""
    forced = _forced()
    if forced == "triton" and tensor.device.type == "cpu" and not interpreter_enabled():
        raise RuntimeError(
            "the Triton backend on CPU tensors needs TRITON_INTERPRET=1 set before fastmi.kernels is imported"
        )
    if forced is not None:
        return forced
    return "triton" if tensor.device.type == "cuda" else "cpu"


@contextlib.contextmanager
def backend(name: str) -> Iterator[None]:
    """Force one backend inside a ``with`` block (this thread only)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown fastmi kernel backend {name!r}; choose one of {BACKENDS}")
    previous = getattr(_local, "backend", None)
    _local.backend = name
    try:
        yield
    finally:
        _local.backend = previous

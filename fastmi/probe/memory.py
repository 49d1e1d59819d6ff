"""The probe's memory while it trains: one model, used by the layer grouping and by the planner.

:func:`fastmi.recoverability` trains layers in groups sized by :func:`layers_per_group`, and
:func:`fastmi.plan` promises those same groups, so what a plan says fits is what a run allocates.

Bytes of one layer in training (all on the probe's device):

* **features**: z of every sentence in fp32, twice: the standardised [N, d] block and its train and
  validation copies (0.8 N between them), rounded up to 2 N.  The cache dtype (fp32, bf16, fp16) is
  what is on disk; the probe reads any of them and computes in fp32.
* **trainable parameters** P: ``linear``: W [M, d] and b [M]; ``unembedding``: A [d, d], c [d] and
  b [M], with logits U (A z + c) + b where U [M, d] is the model's own output embedding, frozen and
  held once per group, not per layer (issue 11).
* per trainable parameter: the working value, its gradient, Adam's two moments and the best copy
  kept for early stopping: 5 fp32 values = 20 bytes.  ``bf16`` and ``tf32`` change the matmuls, not
  this: bf16 keeps fp32 master weights, gradients and moments and adds a 2-byte working copy (22
  bytes), so it saves time, not memory.
* **batch temporaries**: the logits of a batch block [B, S] in fp32, S = M for ``full`` training and
  S = K + the batch's distinct bag ids for ``sampled:K``; the fused kernels never hold more than one
  bounded block of them (:data:`LOGIT_BLOCK_BYTES`).  ``sampled:K`` also gathers the S rows of W and
  their gradient ([S, d] each).

Everything here is integer arithmetic on shapes: no tensor is made.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fastmi.probe.checks import parse_train_softmax

__all__ = [
    "CACHE_DTYPE_BYTES",
    "PRECISIONS",
    "ProbeMemory",
    "format_bytes",
    "layer_groups",
    "layers_per_group",
    "parse_bytes",
    "probe_layer_bytes",
    "probe_parameters_per_layer",
    "probe_shared_bytes",
]

PRECISIONS = ("fp32", "tf32", "bf16")
PROBES = ("linear", "unembedding", "embedding", "auto")
CACHE_DTYPE_BYTES = {"fp32": 4, "float32": 4, "bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2}
FEATURE_COPIES = 2  # the standardised z and its train/validation copies (see the module docstring)
# Bytes per trainable parameter: value, gradient, Adam m and v, best copy (+ a bf16 working copy).
STATE_BYTES = {"fp32": 20, "tf32": 20, "bf16": 22}
# The fused bag CE holds at most one block of logits at a time: 48 MiB per row block on the CPU path,
# 256 MiB per vocabulary chunk of the Triton backward (fastmi/kernels/bag_cross_entropy_*.py).
LOGIT_BLOCK_BYTES = 256 * 2**20


def _check(precision: str, probe: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if probe not in PROBES:
        raise ValueError(f"probe must be one of {', '.join(PROBES)}, got {probe!r}")


@dataclass(frozen=True)
class ProbeMemory:
    """The shapes and settings that decide the probe's memory; its methods give bytes."""

    rows: int  # sentences whose features are on the device (all of them: train, validation, test)
    dim: int  # d, the hidden size
    alphabet: int  # M, the alphabet of T
    batch_size: int = 256  # sentences per Adam step
    precision: str = "fp32"
    train_softmax: str = "full"
    probe: str = "linear"
    mean_bag: float = 16.0  # distinct ids per sentence (sets the bag part of a sampled sub-vocabulary)

    def __post_init__(self) -> None:
        _check(self.precision, self.probe)
        parse_train_softmax(self.train_softmax)
        for name in ("rows", "dim", "alphabet", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def trained_columns(self) -> int:
        """S: alphabet columns one training step touches (M, or K + the batch's bag ids)."""
        k, _ = parse_train_softmax(self.train_softmax)
        if k is None:
            return self.alphabet
        return min(self.alphabet, k + math.ceil(self.batch_size * self.mean_bag))

    @property
    def parameters_per_layer(self) -> int:
        return probe_parameters_per_layer(self.dim, self.alphabet, self.probe)

    @property
    def feature_bytes(self) -> int:
        # "auto" holds the raw features besides the embedding probe's standardised copy of its rows.
        copies = FEATURE_COPIES + (1 if self.probe == "auto" else 0)
        return copies * self.rows * self.dim * 4

    @property
    def state_bytes(self) -> int:
        # The embedding probe also keeps its start W0, which the decay pulls W toward: 4 bytes a weight.
        # "auto" trains it first, then the unembedding probe (d^2 per layer) beside its fitted W.
        anchor = 4 if self.probe in ("embedding", "auto") else 0
        return self.parameters_per_layer * (STATE_BYTES[self.precision] + anchor)

    @property
    def temporary_bytes(self) -> int:
        s, b, d = self.trained_columns, self.batch_size, self.dim
        logits = min(4 * b * s, LOGIT_BLOCK_BYTES)
        gathered = 2 * 4 * s * d if s < self.alphabet else 0  # sampled: W[ids] and its gradient
        batch = 2 * 4 * b * d  # the batch's rows of z and the gradient at the probe's input
        return logits + gathered + batch

    @property
    def layer_bytes(self) -> int:
        """Bytes each layer of a group adds while training."""
        return self.feature_bytes + self.state_bytes + self.temporary_bytes

    @property
    def shared_bytes(self) -> int:
        """Bytes a group holds once, whatever its size: the frozen unembedding U of ``unembedding``, the
        embedding rows (U's, and E's for an untied model) that start ``embedding``."""
        if self.probe == "linear":
            return 0
        if self.probe in ("embedding", "auto"):
            # U's and E's rows as starts; "auto" also holds U's rows for the unembedding probe
            return (3 if self.probe == "auto" else 2) * self.alphabet * self.dim * 4
        return self.alphabet * self.dim * (2 if self.precision == "bf16" else 4)

    def layers_per_group(self, budget_bytes: int, num_layers: int) -> int:
        """Most layers that train together within ``budget_bytes`` (at least 1, at most ``num_layers``)."""
        room = int(budget_bytes) - self.shared_bytes
        return max(1, min(int(num_layers), room // max(self.layer_bytes, 1)))

    def fits(self, budget_bytes: int) -> bool:
        """Whether even one layer fits in ``budget_bytes``."""
        return self.shared_bytes + self.layer_bytes <= int(budget_bytes)


def probe_parameters_per_layer(dim: int, alphabet: int, probe: str = "linear") -> int:
    """Trainable parameters of one layer's probe: M (d + 1), or d^2 + d + M through the unembedding."""
    if probe in ("linear", "embedding", "auto"):  # "auto": the larger of its two forms
        return alphabet * (dim + 1)
    if probe == "unembedding":
        return dim * dim + dim + alphabet
    raise ValueError(f"probe must be one of {', '.join(PROBES)}, got {probe!r}")


def probe_layer_bytes(rows: int, dim: int, alphabet: int, batch_size: int, **settings) -> int:
    """Bytes one layer adds while training (``settings``: precision, train_softmax, probe, mean_bag)."""
    return ProbeMemory(rows, dim, alphabet, batch_size, **settings).layer_bytes


def probe_shared_bytes(dim: int, alphabet: int, precision: str = "fp32", probe: str = "linear") -> int:
    return ProbeMemory(1, dim, alphabet, 1, precision=precision, probe=probe).shared_bytes


def layers_per_group(
    budget_bytes: int, num_layers: int, rows: int, dim: int, alphabet: int, batch_size: int, **settings
) -> int:
    """How many layers train at once within ``budget_bytes``: the probe's grouping and the planner's."""
    return ProbeMemory(rows, dim, alphabet, batch_size, **settings).layers_per_group(budget_bytes, num_layers)


def layer_groups(layers: list[int], group_size: int) -> list[list[int]]:
    """Consecutive groups of ``group_size`` layers, in order (the last one may be smaller)."""
    size = max(1, int(group_size))
    return [list(layers[i : i + size]) for i in range(0, len(layers), size)]


_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "t": 10**12,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_bytes(text: str | float) -> int:
    """ "141GB" -> 141e9, "80GiB" -> 80 * 2^30, 1024 -> 1024 (decimal units, as GPU vendors state them)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text <= 0:
            raise ValueError(f"a memory size must be positive, got {text}")
        return int(text)
    value = str(text).strip().lower().replace(" ", "")
    number = value.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = value[len(number) :]
    try:
        amount = float(number)
    except ValueError:
        amount = -1.0
    if unit not in _UNITS or amount <= 0:
        raise ValueError(f"cannot read the memory size {text!r}: expected e.g. 141GB, 80GiB or 512MB")
    return int(amount * _UNITS[unit])


def format_bytes(n: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} B"

"""Fused ops of fastmi (import name ``fastmi.kernels``).

* :func:`bag_cross_entropy`: linear + softmax + bag-of-tokens cross-entropy, never a [B, V] tensor.
* :func:`bag_topk`: top-k ids and log-sum-exp of ``W z + b``, never a [B, V] tensor.
* :func:`masked_pool`: mean / first / last / max pooling of [B, T, d] under a padding mask.

Each runs Triton on CUDA and a chunked torch path on CPU; :mod:`fastmi.kernels.reference` holds
the plain torch ground truth.  z and W of different dtypes meet in :func:`compute_dtype`.
:func:`backend` forces one implementation (tests use it).
"""

from fastmi.kernels._dispatch import BACKENDS, backend, choose_backend
from fastmi.kernels._dtypes import compute_dtype
from fastmi.kernels.bag_cross_entropy import bag_cross_entropy
from fastmi.kernels.bag_topk import bag_topk
from fastmi.kernels.masked_pool import masked_pool

__all__ = ["BACKENDS", "backend", "choose_backend", "compute_dtype", "bag_cross_entropy", "bag_topk", "masked_pool"]

"""Test set-up: the Triton kernels run on CPU tensors through the interpreter.

TRITON_INTERPRET must be set before any ``@triton.jit`` function is defined, that is before
``fastmi.kernels`` is imported, hence at the top of conftest.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

"""Test set-up: the Triton kernels run on CPU tensors through the interpreter, and nothing a test
makes lands in the user's home.

TRITON_INTERPRET must be set before any ``@triton.jit`` function is defined, that is before
``fastmi.kernels`` is imported, hence at the top of conftest.

Every cache location (FASTMI_HOME, XDG_CACHE_HOME, HF_HOME, TRITON_CACHE_DIR, HOME itself) points
into one temporary directory made for the session and deleted after it, so a test run never writes
activations or dequantised models (hundreds of MB) into ~/.cache.  It is set here, at import, rather than in a
function-scoped fixture, because module-scoped fixtures run before those.  To reuse converted demo
models across runs, ask for it: FASTMI_TEST_HOME=/some/dir becomes FASTMI_HOME.
"""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REAL_HOME = Path.home()  # for the test that checks the default location
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="fastmi-test-home-"))
atexit.register(shutil.rmtree, _SESSION_HOME, ignore_errors=True)
# Triton's compile cache too (a few MB; the tests compile the same whether it is warm or cold).
os.environ.setdefault("TRITON_CACHE_DIR", str(_SESSION_HOME / ".triton" / "cache"))
os.environ["HOME"] = str(_SESSION_HOME)
os.environ["XDG_CACHE_HOME"] = str(_SESSION_HOME / ".cache")
os.environ["HF_HOME"] = str(_SESSION_HOME / ".cache" / "huggingface")
os.environ["FASTMI_HOME"] = os.environ.get("FASTMI_TEST_HOME") or str(_SESSION_HOME / "fastmi")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture
def one_thread():
    """torch on one thread, as each process of a multi-process run has (torchrun sets
    OMP_NUM_THREADS=1): CPU matmuls split over threads round differently, and the multi-process
    contract is the same bytes for the same arithmetic, however the rows are spread over processes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

"""Progress bars of the libraries fastmi calls follow fastmi's own ``progress`` switch.

transformers draws a "Loading weights" bar for every model it loads (gone in a fraction of a
second, but printed as two lines, 0% and 100%, wherever stderr is not a terminal), huggingface_hub
draws download bars, and transformers' GGUF reader draws a dequantisation bar with tqdm directly.
While fastmi loads a model: the per-tensor loading bar never shows (fastmi's own bars say what is
happening); with ``progress=False`` none of them shows.  Everything is restored on exit.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

__all__ = ["loading_bars"]

_LOADING_BARS = ("Loading weights", "Loading checkpoint shards")


@contextlib.contextmanager
def loading_bars(progress: bool) -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    restore = []
    was_enabled = hf_logging.is_progress_bar_enabled()
    if not progress and was_enabled:
        hf_logging.disable_progress_bar()  # transformers' bars and huggingface_hub's
        restore.append(hf_logging.enable_progress_bar)
    set_hook = getattr(hf_logging, "set_tqdm_hook", None)  # transformers >= 5
    if set_hook is not None:
        previous = None

        def hook(factory, args, kwargs):
            if str(kwargs.get("desc", "")).startswith(_LOADING_BARS):
                kwargs = {**kwargs, "disable": True}
            return previous(factory, args, kwargs) if previous is not None else factory(*args, **kwargs)

        previous = set_hook(hook)
        restore.append(lambda: set_hook(previous))
    if not progress:
        with contextlib.suppress(ImportError):  # the GGUF reader needs the gguf package
            import transformers.modeling_gguf_pytorch_utils as gguf_utils

            bar = gguf_utils.tqdm
            gguf_utils.tqdm = functools.partial(bar, disable=True)
            restore.append(lambda: setattr(gguf_utils, "tqdm", bar))
    try:
        yield
    finally:
        for undo in reversed(restore):
            undo()

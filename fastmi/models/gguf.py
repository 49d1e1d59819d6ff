"""GGUF files, dequantised once into a safetensors model directory.

transformers reads GGUF (``gguf_file=``) by parsing the whole file in Python and dequantising
every tensor to fp32: tens of seconds even for a 135M model.  The first load therefore writes
the result (fp32 weights, config, tokenizer) to ``<cache_dir>/<sha256 of the gguf>/`` and every
later load reads that directory, which takes well under a second.

The directory is built under a temporary name and renamed into place, so a load killed half-way
leaves no directory that a later load could mistake for a finished one; the next conversion of
the same file removes such leftovers of dead processes.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import socket
from pathlib import Path

from fastmi.models.hashing import file_sha256
from fastmi.runtime.files import fsync_dir

__all__ = ["gguf_to_local_dir", "gguf_block_count", "SOURCE_RECORD"]

SOURCE_RECORD = "fastmi-gguf-source.json"  # written last: a directory without it is not finished
CACHE_FORMAT = 1  # bump when the layout of a converted directory changes; older ones are redone


def gguf_to_local_dir(gguf_path: str | os.PathLike, cache_dir: str | os.PathLike) -> tuple[Path, str]:
    """Return (directory of the dequantised model, revision ``"sha256:<hex of the gguf>"``)."""
    gguf_path = Path(gguf_path).resolve()
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    sha = file_sha256(gguf_path, cache_dir)
    target = cache_dir / sha
    if _cache_format(target) != CACHE_FORMAT:
        _convert(gguf_path, sha, target)
    return target, f"sha256:{sha}"


# GGUF metadata value types (ggml's gguf.h): fixed-size scalars by struct code, then string and array.
_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def gguf_block_count(gguf_path: str | os.PathLike) -> int:
    """Number of transformer blocks, read from the GGUF header alone (``<arch>.block_count``).

    The gguf package's reader indexes every tensor first (seconds for a 100 MB file); arguments are
    checked before any work, so this walks the key-value section and stops at the key it needs.
    """
    import struct

    with open(gguf_path, "rb") as f:

        def read(fmt: str):
            size = struct.calcsize("<" + fmt)
            return struct.unpack("<" + fmt, f.read(size))[0]

        def read_string() -> str:
            return f.read(read("Q")).decode("utf-8", "replace")

        def skip(kind: int) -> None:
            if kind == _GGUF_STRING:
                f.seek(read("Q"), 1)
            elif kind == _GGUF_ARRAY:
                item, count = read("I"), read("Q")
                if item in _GGUF_SCALARS:
                    f.seek(struct.calcsize("<" + _GGUF_SCALARS[item]) * count, 1)
                else:
                    for _ in range(count):
                        skip(item)
            else:
                f.seek(struct.calcsize("<" + _GGUF_SCALARS[kind]), 1)

        if f.read(4) != b"GGUF":
            raise ValueError(f"{gguf_path} is not a GGUF file")
        if read("I") < 2:
            raise ValueError(f"{gguf_path} is a GGUF file of version 1, which is not supported")
        read("Q")  # tensor count
        arch = None
        for _ in range(read("Q")):
            key, kind = read_string(), read("I")
            if key == "general.architecture" and kind == _GGUF_STRING:
                arch = read_string()
            elif arch is not None and key == f"{arch}.block_count" and kind in _GGUF_SCALARS:
                return int(read(_GGUF_SCALARS[kind]))
            else:
                skip(kind)
    raise ValueError(f"{gguf_path} does not state its number of blocks (<architecture>.block_count)")


def _cache_format(directory: Path) -> int | None:
    """The format version of a finished conversion in ``directory``; None if there is none."""
    try:
        return json.loads((directory / SOURCE_RECORD).read_text()).get("format")
    except (OSError, ValueError, AttributeError):
        return None


def _convert(gguf_path: Path, sha: str, target: Path) -> None:
    import safetensors.torch
    import torch
    import transformers
    from transformers import AutoModel, AutoTokenizer

    from fastmi.runtime.interrupts import note_remaining

    _remove_dead_leftovers(target.parent, sha)
    # For a one-line report if the disk fills up: 4-bit weights become fp32, about 8 times the file.
    note_remaining(target.parent, 8 * gguf_path.stat().st_size)
    tmp = target.parent / f".{sha}.{socket.gethostname()}.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        folder, name = str(gguf_path.parent), gguf_path.name
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        with _memoized_tensor_name_map():
            model = AutoModel.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        # The weights are plain fp32 now, but transformers keeps a "gguf quantizer" marker on the
        # model that makes save_pretrained refuse; write weights and config ourselves instead.
        safetensors.torch.save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.architectures = [type(model).__name__]
        config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _list_added_tokens(tokenizer, tmp / "tokenizer_config.json")
        record = {
            "format": CACHE_FORMAT,
            "gguf": str(gguf_path),
            "sha256": sha,
            "transformers": transformers.__version__,
        }
        (tmp / SOURCE_RECORD).write_text(json.dumps(record, indent=1))
        _fsync_tree(tmp)
        if target.exists():  # an older format: swap it out, then delete it
            stale = tmp.with_name(tmp.name + ".stale")
            os.rename(target, stale)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(tmp, target)
        except OSError:
            if _cache_format(target) != CACHE_FORMAT:  # not "another process finished first"
                raise
            shutil.rmtree(tmp, ignore_errors=True)
        fsync_dir(target.parent)  # the rename itself must survive a power cut
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _list_added_tokens(tokenizer, config_path: Path) -> None:
    """Write the added (special) tokens into tokenizer_config.json.

    Without this list, transformers parses the whole tokenizer.json in Python on every load just
    to find them (most of a second for a 50k vocabulary), and save_pretrained leaves it out.
    """
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["added_tokens_decoder"] = {
        str(index): {
            "content": t.content,
            "single_word": t.single_word,
            "lstrip": t.lstrip,
            "rstrip": t.rstrip,
            "normalized": t.normalized,
            "special": t.special,
        }
        for index, t in sorted(tokenizer.added_tokens_decoder.items())
    }
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")


@contextlib.contextmanager
def _memoized_tensor_name_map():
    """Build gguf's tensor-name table once per (arch, blocks) instead of once per submodule.

    transformers maps GGUF names to its own by walking every submodule and calling
    ``gguf.get_tensor_name_map`` afresh for each (about 400 times for a 30-layer model, a third
    of the conversion time).  The table is a pure function of its arguments, so a cache is safe.
    """
    import gguf

    original = gguf.get_tensor_name_map
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(original)
    try:
        yield
    finally:
        gguf.get_tensor_name_map = original


def _fsync_tree(directory: Path) -> None:
    for p in directory.iterdir():
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    fsync_dir(directory)


def _remove_dead_leftovers(cache_dir: Path, sha: str) -> None:
    """Delete temporary directories of conversions on this host whose process has died."""
    host = socket.gethostname()
    for p in cache_dir.glob(f".{sha}.{host}.*"):
        try:
            pid = int(p.name.rsplit(".", 1)[1])
        except ValueError:
            continue
        if not _alive(pid):
            shutil.rmtree(p, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

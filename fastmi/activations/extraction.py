"""The function ``fastmi.extract``: every requested layer's pooled sentence embeddings, into an activation cache.

Work is cut into shards of consecutive corpus rows.  Inside a shard, rows are sorted by length into
batches (less padding), the forward pass is tapped by :class:`fastmi.models.hooks.LayerPooler`, and the
pooled rows are put back in corpus order in host memory; then one safetensors file per layer is
written and the shard is listed in the manifest.  A killed run resumes at the first unfinished
(layer, shard): shards are a pure function of their rows, so the result is bit-identical.

Under torch.distributed (e.g. ``torchrun -m fastmi extract``), rank 0 opens the cache and lists
the unfinished shards; every rank then takes the next unlisted one whenever it is free
(:func:`fastmi.runtime.distributed.take_turns`) and writes only those, while rank 0 first writes the
targets and the output embedding (docs/distributed.md); the files are the ones one process would
write.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fastmi import __version__
from fastmi.activations.cache import ActivationCache, CacheWriter, default_cache_dir, resolve_cache_dtype
from fastmi.data.corpus import Corpus
from fastmi.defaults import DEFAULT_MAX_LENGTH
from fastmi.kernels.reference import POOL_MODES
from fastmi.models.hooks import LayerPooler, find_layer_taps, forward_parameters, hidden_states_pooled
from fastmi.models.placement import input_device
from fastmi.models.unembedding import output_embedding_or_reason
from fastmi.runtime import distributed
from fastmi.runtime.notices import notice

__all__ = ["extract", "parse_layers", "batch_plan", "batches_by_length", "collate", "NonFiniteActivationError"]

DEFAULT_SHARD_BYTES = 1 << 30  # one shard of all requested layers, fp32, in host memory
_VERIFY_ROWS = 4


class NonFiniteActivationError(RuntimeError):
    """A pooled embedding came out NaN or infinite (overflow in fp16, a broken checkpoint, ...)."""


def extract(
    model,
    corpus,
    pooling: str = "mean",
    layers: str | Sequence[int] = "all",
    cache_dir: str | os.PathLike | None = None,
    resume: bool = True,
    overwrite: bool = False,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    batch_size: int = 32,
    max_length: int = DEFAULT_MAX_LENGTH,
    progress: bool = True,
    shard_rows: int | None = None,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    padding_side: str | None = None,
    verify: bool = True,
    cache_dtype: str = "fp32",
) -> ActivationCache:
    """Pool the hidden states of ``layers`` for every sentence of ``corpus`` into an activation cache.

    ``model``: a :class:`fastmi.models.loading.LoadedModel` or a spec for :func:`fastmi.load_model` (hub id,
    local directory, .gguf file, "minilm", "smollm2").  ``corpus``: a :class:`fastmi.Corpus`, a list
    of sentences, or a spec for :meth:`Corpus.load` ("demo", a .txt or .jsonl path).
    ``pooling``: mean | first | last | max over the non-padding tokens (special tokens included, as
    the model sees them).  ``layers``: "all", "last", "0,3,6", "2-5" or a list of ints (layer 0 is
    the embedding output, L the last block).  ``cache_dir``: default
    ``$FASTMI_HOME/activations/<model>-<hash>``.  ``resume`` continues a cache of the same identity
    (model, revision, dtype, pooling, max_length, corpus); ``overwrite`` replaces whatever is there.
    ``shard_rows`` (default: as many as keep one shard of all layers under ``shard_bytes``) fixes
    the unit of work and of resumption.  ``verify`` checks once, on a few sentences, that the taps
    reproduce ``output_hidden_states=True`` of the same model.  ``cache_dtype``: fp32 | bf16 | fp16,
    how the pooled embeddings are stored (pooling itself is always fp32; part of the identity).
    ``progress``: a bar in sentences that moves after every batch; under torch.distributed rank 0
    alone draws it, counting the sentences of every rank (:class:`_progress`).
    """
    if pooling not in POOL_MODES:
        raise ValueError(f"pooling must be one of {POOL_MODES}, got {pooling!r}")
    for name, value in (("batch_size", batch_size), ("max_length", max_length), ("shard_bytes", shard_bytes)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    corpus = _as_corpus(corpus)
    if isinstance(model, (str, os.PathLike)):  # --layers 99 fails on the config, before the weights load
        from fastmi.models.loading import model_num_layers

        parse_layers(layers, model_num_layers(model))
    loaded = _as_loaded_model(model, device, dtype, progress)
    tokenizer = loaded.tokenizer
    if padding_side is not None:
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    side = padding_side or getattr(tokenizer, "padding_side", "right")
    wanted = parse_layers(layers, loaded.num_layers)
    taps = find_layer_taps(loaded.model, loaded.num_layers)

    token_lists = corpus.tokenize(tokenizer, max_length)
    truncated = corpus.count_truncated(tokenizer, max_length, token_lists)
    lengths = np.fromiter(map(len, token_lists), dtype=np.int64, count=len(token_lists))
    metadata = _metadata(loaded, corpus, pooling, max_length, batch_size, side, taps.sources)
    metadata["cache_dtype"] = resolve_cache_dtype(cache_dtype)
    metadata["truncated_rows"] = truncated  # descriptive, not part of the identity
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir(metadata, loaded.name)
    requested_rows = shard_rows
    if shard_rows is None:
        shard_rows = max(1, min(len(corpus), shard_bytes // (len(wanted) * loaded.hidden_size * 4)))
    elif not isinstance(shard_rows, int) or isinstance(shard_rows, bool) or shard_rows < 1:
        raise ValueError(f"shard_rows must be a positive int, got {shard_rows!r}")

    ctx = distributed.context()

    def prepare() -> tuple[CacheWriter, tuple[list[tuple[int, list[int]]], str]]:
        writer = CacheWriter.prepare(directory, metadata, shard_rows, resume=resume, overwrite=overwrite)
        try:
            if requested_rows is not None and writer.shard_rows != requested_rows:
                notice(
                    f"the cache at {directory} was started with shard_rows={writer.shard_rows}; "
                    f"continuing with it, not {requested_rows}"
                )
            writer.drop_bad_units()
            _note_progress(writer, wanted)
            todo = [(s, writer.missing_layers(s, wanted)) for s in range(writer.num_shards)]
            todo = [(s, missing) for s, missing in todo if missing]
            _announce(
                directory,
                todo,
                writer.num_shards * len(wanted),
                f"{loaded.name}: {truncated} of {len(corpus)} sentences are longer than "
                f"max_length={max_length} tokens and were truncated to it"
                if truncated
                else "",
            )
            return writer, (todo, f"fastmi.extract/{uuid.uuid4().hex}")  # the name of this run's shard queue
        except BaseException:
            writer.close()
            raise

    writer, (todo, queue) = _on_main_then_share(prepare, ctx, lambda: CacheWriter.attach(directory))
    try:
        if ctx.is_main:
            if 0 < len(todo) < ctx.world:
                notice(
                    f"{len(todo)} unfinished shard(s) for {ctx.world} processes: some have nothing to do; "
                    "pass a smaller shard_rows (--shard-rows)"
                )
            # Meanwhile the other ranks are already taking shards (distributed.take_turns).
            _write_shared_files(writer, loaded, token_lists, lengths)
        progress = progress and ctx.is_main
        if todo:
            run = _Run(loaded, taps, token_lists, lengths, pooling, side, batch_size)
            if verify:
                run.verify_taps(wanted)
            sizes = {s: writer.shard_range(s)[1] - writer.shard_range(s)[0] for s, _ in todo}
            name = loaded.name if ctx.world == 1 else f"{loaded.name} ({ctx.world} processes)"
            with _progress(sum(sizes.values()), progress, name) as bar:
                for shard, missing in distributed.take_turns(todo, queue, ctx):
                    pooled = run.shard(writer.shard_range(shard), missing, shard, on_batch=bar.batch_done)
                    writer.write_shard(shard, pooled)
                    if progress and ctx.world > 1:  # all ranks' rows: the manifest was just re-read and merged
                        bar.shards_done(sum(sizes[s] for s, m in todo if not writer.missing_layers(s, m)))
                    elif progress:
                        bar.shards_done(bar.listed + sizes[shard])
        distributed.barrier()  # every rank's units are listed before anyone reads the cache
    finally:
        writer.close()  # rank 0 releases the run lock only once all ranks are done
    return ActivationCache.open(directory)


def _write_shared_files(writer: CacheWriter, loaded, token_lists: list[list[int]], lengths: np.ndarray) -> None:
    """The bags of tokens and the output embedding U, unless the cache holds them intact already."""
    if not writer.targets_ok():
        from fastmi.data.bags import BagTargets

        targets = BagTargets.from_token_lists(token_lists, exclude=loaded.special_ids, vocab_size=loaded.vocab_size)
        writer.write_targets(targets, torch.from_numpy(lengths))
    if not writer.unembedding_ok():  # stored once per cache, for probe="unembedding"
        writer.write_unembedding(*output_embedding_or_reason(loaded.model))


def _on_main_then_share(prepare, ctx, attach):
    """Rank 0 runs ``prepare() -> (writer, todo)``; the others get its todo list (or its error)
    and ``attach()`` to the cache it opened.  One process: just ``prepare()``."""
    if ctx.world == 1:
        return prepare()
    if ctx.is_main:
        try:
            writer, todo = prepare()
        except Exception as err:
            distributed.broadcast((type(err).__name__, str(err)))
            raise
        distributed.broadcast(("ok", todo))
        return writer, todo
    status, payload = distributed.broadcast(None)
    if status != "ok":
        kind = {"ValueError": ValueError, "FileNotFoundError": FileNotFoundError}.get(status, RuntimeError)
        raise kind(f"rank 0 could not open the cache: {payload}")
    return attach(), payload


def _announce(directory: Path, todo: list, total_units: int, truncated: str) -> None:
    """One plain line each: a cache resumed or already complete, and sentences cut at max_length."""
    left = sum(len(missing) for _, missing in todo)
    if left == 0:
        notice(f"the activation cache at {directory} is already complete; nothing to extract")
    elif left < total_units:
        notice(
            f"resuming the activation cache at {directory}: {total_units - left} of {total_units} "
            "(layer, shard) units already finished"
        )
    if truncated and left:  # said once, by the run that extracts them
        notice(truncated)


def _note_progress(writer: CacheWriter, wanted: list[int]) -> None:
    """Tell :mod:`fastmi.runtime.interrupts` how to say what is finished, should the run be stopped."""
    from fastmi.runtime.interrupts import note_kept, note_remaining

    every, total = set(range(writer.num_shards)), len(wanted) * writer.num_shards

    def done() -> int:  # asked at the moment of the interrupt: the manifest is the truth
        return sum(len(every & writer.finished_shards(layer)) for layer in wanted)

    note_kept(writer.directory, lambda: f"{done()} of {total} (layer, shard) units of the activation cache")
    note_remaining(writer.directory, lambda: (total - done()) * writer.shard_rows * writer.hidden_size * 4)


# ---- inputs ---------------------------------------------------------------------------------------
def parse_layers(layers: str | int | Sequence[int], num_layers: int) -> list[int]:
    """ "all" -> [0..L]; "last" -> [L]; "0,3,6"; "2-5" (inclusive); "0,2-4"; ints (negative: from L)."""
    L = num_layers
    if isinstance(layers, str):
        text = layers.strip().lower()
        if text == "all":
            return list(range(L + 1))
        if text == "last":
            return [L]
        values: list[int] = []
        for part in filter(None, (p.strip() for p in text.split(","))):
            m = re.fullmatch(r"(-?\d+)(?:\s*-\s*(\d+))?", part)
            if m is None:
                raise ValueError(f"cannot read layers {layers!r}: expected 'all', 'last', '0,3,6' or '2-5'")
            lo, hi = int(m.group(1)), int(m.group(2) if m.group(2) is not None else m.group(1))
            if m.group(2) is not None and hi < lo:
                raise ValueError(f"empty layer range {part!r} in {layers!r}")
            values.extend(range(lo, hi + 1))
    elif isinstance(layers, int) and not isinstance(layers, bool):
        values = [layers]
    else:
        values = [int(v) for v in layers]
    resolved = sorted({v + L + 1 if v < 0 else v for v in values})
    bad = [v for v in values if not -(L + 1) <= v <= L]
    if bad or not resolved:
        raise ValueError(
            f"layers {bad or layers!r} out of range: this model has layers 0..{L} "
            "(0 = embedding output, negative counts from the last)"
        )
    return resolved


def _as_corpus(corpus) -> Corpus:
    if isinstance(corpus, Corpus):
        return corpus
    if isinstance(corpus, (str, os.PathLike)):
        return Corpus.load(corpus)
    if isinstance(corpus, Sequence):
        return Corpus.from_sentences(list(corpus))
    raise TypeError(
        f"corpus must be a fastmi.Corpus, a list of sentences or a corpus spec, not {type(corpus).__name__}"
    )


def _as_loaded_model(model, device, dtype, progress: bool = True):
    from fastmi.models.loading import LoadedModel, load_model

    if isinstance(model, LoadedModel):
        want_device = torch.device(device) if device is not None else None
        want_dtype = _torch_dtype(dtype) if dtype is not None else None
        if (want_device is not None and torch.device(model.device) != want_device) or (
            want_dtype is not None and model.dtype != want_dtype
        ):
            raise ValueError(
                f"the model is loaded on {model.device} in {model.dtype}; pass device/dtype to "
                "load_model (or pass the model spec to extract) to change them"
            )
        return model
    if isinstance(model, (str, os.PathLike)):
        return load_model(model, device=device if device is not None else "cpu", dtype=dtype, progress=progress)
    raise TypeError(f"model must be a LoadedModel or a model spec, not {type(model).__name__}")


def _torch_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype).replace("torch.", ""), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16")
    return value


def _metadata(loaded, corpus: Corpus, pooling, max_length, batch_size, side, sources) -> dict:
    return {
        "model": loaded.name,
        "revision": loaded.revision,
        "architecture": loaded.architecture,
        "kind": loaded.kind,
        "num_layers": loaded.num_layers,
        "hidden_size": loaded.hidden_size,
        "vocab_size": loaded.vocab_size,
        "excluded_ids": sorted(int(i) for i in loaded.special_ids),
        "pooling": pooling,
        "max_length": max_length,
        "dtype": str(loaded.dtype).replace("torch.", ""),
        "corpus_name": corpus.name,
        "corpus_fingerprint": corpus.fingerprint,
        "num_rows": len(corpus),
        "fastmi_version": __version__,
        "batch_size": batch_size,
        "padding_side": side,
        "layer_sources": list(sources),
    }


# ---- batching ---------------------------------------------------------------------------------------
def batches_by_length(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Positions of ``lengths`` grouped into batches of similar length, longest first.

    Zero-length rows are left out (they pool to zeros without a forward).  The sort is stable, so
    the batches, and therefore every bit of the result, depend only on the lengths.
    """
    order = np.argsort(-lengths, kind="stable")
    order = order[lengths[order] > 0]
    return [order[i : i + batch_size] for i in range(0, order.size, batch_size)]


def batch_plan(lengths: np.ndarray, shard_rows: int, batch_size: int) -> list[np.ndarray]:
    """Corpus rows of every batch, in the order :func:`extract` runs them (shard by shard)."""
    return [
        positions + start
        for start in range(0, lengths.size, shard_rows)
        for positions in batches_by_length(lengths[start : start + shard_rows], batch_size)
    ]


def collate(token_lists: Sequence[Sequence[int]], pad_id: int, side: str, device, parameters: set[str]) -> dict:
    """Pad to the longest row on ``side``; positions count real tokens only, so padding never shifts them."""
    width = max(len(t) for t in token_lists)
    ids = torch.full((len(token_lists), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(token_lists), width), dtype=torch.long)
    for i, row in enumerate(token_lists):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[i, span] = torch.as_tensor(row, dtype=torch.long)
        mask[i, span] = 1
    inputs = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
    if "position_ids" in parameters:
        inputs["position_ids"] = (mask.cumsum(1) - 1).clamp(min=0).to(device)
    if "use_cache" in parameters:
        inputs["use_cache"] = False
    return inputs


@dataclass
class _Run:
    """One extraction pass over a model and the tokenized corpus."""

    loaded: object
    taps: object
    token_lists: list[list[int]]
    lengths: np.ndarray
    pooling: str
    side: str
    batch_size: int

    def __post_init__(self) -> None:
        model = self.loaded.model
        self.parameters = forward_parameters(model)
        self.input_device = input_device(model)  # not the weight's: accelerate may have offloaded it
        pad = self.loaded.tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else 0  # masked out anyway

    def inputs(self, rows: Sequence[int]) -> dict:
        return collate([self.token_lists[r] for r in rows], self.pad_id, self.side, self.input_device, self.parameters)

    @torch.inference_mode()
    def shard(
        self, row_range: tuple[int, int], layers: list[int], shard: int, on_batch: Callable[[int], None] | None = None
    ) -> dict[int, np.ndarray]:
        """fp32 [rows, d] per layer for corpus rows ``row_range``, in corpus order; ``on_batch(rows)``
        after each batch (a shard of a large model takes minutes)."""
        start, stop = row_range
        out = {l: np.zeros((stop - start, self.loaded.hidden_size), dtype=np.float32) for l in layers}
        with LayerPooler(self.loaded.model, self.taps, layers, self.pooling) as pooler:
            for b, positions in enumerate(batches_by_length(self.lengths[start:stop], self.batch_size)):
                rows = positions + start
                pooled = _to_host(pooler.run(self.inputs(rows)), layers)
                for layer in layers:
                    _check_finite(pooled[layer], layer, shard, b, rows)
                    out[layer][positions] = pooled[layer]
                if on_batch is not None:
                    on_batch(len(rows))
        return out

    def verify_taps(self, layers: list[int]) -> None:
        """The taps must reproduce ``output_hidden_states=True`` on a few real sentences."""
        rows = np.flatnonzero(self.lengths > 0)[:_VERIFY_ROWS]
        if rows.size == 0:
            return
        inputs = self.inputs(rows)
        with torch.inference_mode(), LayerPooler(self.loaded.model, self.taps, layers, self.pooling) as pooler:
            tapped = pooler.run(inputs)
        expected = hidden_states_pooled(self.loaded.model, inputs, layers, self.pooling)
        for layer in layers:
            got, want = tapped[layer].float().cpu(), expected[layer].float().cpu()
            if not torch.allclose(got, want, rtol=1e-4, atol=1e-5, equal_nan=True):
                raise RuntimeError(
                    f"the hook for layer {layer} ({self.taps.sources[layer]}) does not reproduce "
                    f"hidden_states[{layer}] "
                    f"of {self.loaded.architecture} (max difference {float((got - want).abs().max()):.3g}); "
                    "this architecture needs its own layer taps in fastmi.models.hooks"
                )


def _to_host(pooled: dict[int, torch.Tensor], layers: list[int]) -> dict[int, np.ndarray]:
    """fp32 numpy copies, one device-to-host transfer per device (not one per layer)."""
    host: dict[int, np.ndarray] = {}
    by_device: dict[torch.device, list[int]] = {}
    for layer in layers:
        by_device.setdefault(pooled[layer].device, []).append(layer)
    for group in by_device.values():
        stacked = torch.stack([pooled[l] for l in group]).float().cpu().numpy()
        host.update(zip(group, stacked))
    return host


def _check_finite(values: np.ndarray, layer: int, shard: int, batch: int, rows: np.ndarray) -> None:
    finite = np.isfinite(values).all(axis=1)
    if not finite.all():
        bad = rows[~finite]
        shown = ", ".join(map(str, bad[:8])) + (", ..." if bad.size > 8 else "")
        raise NonFiniteActivationError(
            f"layer {layer}: non-finite pooled values in batch {batch} of shard {shard} "
            f"(corpus rows {shown}); nothing of this shard was written. Try dtype=float32 if the model runs in "
            "float16, or check the checkpoint"
        )


class _progress:
    """A tqdm bar in sentences, or nothing.

    It moves after every batch, not every shard: one shard of a large model is minutes of work.  The
    total is every unfinished sentence of every rank; under torch.distributed only rank 0 draws, so
    its own sentences count batch by batch and the other ranks' as their shards are listed in the
    manifest (which rank 0 reads whenever it finishes a shard of its own).
    """

    def __init__(self, total: int, enabled: bool, name: str) -> None:
        self.bar = None
        self.listed = 0  # sentences of shards listed as finished, by any rank
        self.running = 0  # sentences of this rank's current shard done so far
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=int(total), unit="sent", desc=f"extract {Path(str(name)).name}", dynamic_ncols=True)

    def __enter__(self):
        return self

    def batch_done(self, rows: int) -> None:
        self.running += int(rows)
        self._show()

    def shards_done(self, listed: int) -> None:
        """``listed``: sentences of every shard now listed, this rank's just finished one included."""
        self.listed, self.running = max(self.listed, int(listed)), 0
        self._show()

    def _show(self) -> None:
        if self.bar is not None and self.listed + self.running > self.bar.n:
            self.bar.update(self.listed + self.running - self.bar.n)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()

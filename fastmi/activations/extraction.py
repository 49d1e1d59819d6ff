"""The function ``fastmi.extract``: every requested layer's pooled sentence embeddings, into an activation cache.

Work is cut into shards of consecutive corpus rows.  Inside a shard, rows are sorted by length into
batches (less padding; :mod:`fastmi.activations.batching`), the forward pass is tapped and pooled
(:mod:`fastmi.activations.pooling_pass`), and the pooled rows are put back in corpus order in host
memory; then one safetensors file per layer is written and the shard is listed in the manifest.  A
killed run resumes at the first unfinished (layer, shard): shards are a pure function of their rows,
so the result is bit-identical.

Under torch.distributed (e.g. ``torchrun -m fastmi extract``) rank 0 opens the cache and lists the
unfinished shards; every rank then takes the next one whenever it is free
(:class:`fastmi.runtime.shard_queue.ShardQueue`) and writes only those, while rank 0 first writes
the targets and the output embedding (docs/distributed.md); the files are the ones one process would
write.  The code below reads the same for one process and for N: every rank decision is in
:mod:`fastmi.runtime`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from fastmi.activations.batching import batch_plan, batches_by_length, collate
from fastmi.activations.cache import ActivationCache, CacheWriter, default_cache_dir, resolve_cache_dtype
from fastmi.activations.inputs import as_corpus, as_loaded_model, cache_metadata, parse_layers
from fastmi.activations.pooling_pass import NonFiniteActivationError, PoolingPass
from fastmi.activations.progress import SentenceBar
from fastmi.defaults import DEFAULT_MAX_LENGTH
from fastmi.models.hooks import find_layer_taps
from fastmi.models.unembedding import input_embedding_or_reason, output_embedding_or_reason
from fastmi.runtime import distributed
from fastmi.runtime.notices import notice
from fastmi.runtime.preflight import check_extraction_arguments
from fastmi.runtime.shard_queue import ShardQueue

__all__ = ["extract", "parse_layers", "batch_plan", "batches_by_length", "collate", "NonFiniteActivationError"]

DEFAULT_SHARD_BYTES = 1 << 30  # one shard of all requested layers, fp32, in host memory
_as_corpus = as_corpus  # the name fastmi.planning reads it under


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
    alone draws it, counting the sentences of every rank (:class:`fastmi.activations.progress.SentenceBar`).
    """
    # The CLI's own check; a model spec's --layers fails on its config, before the weights load.
    specs = [os.fspath(model)] if isinstance(model, (str, os.PathLike)) else []
    check_extraction_arguments(
        specs,
        layers,
        pooling,
        batch_size,
        max_length,
        shard_rows,
        shard_bytes=shard_bytes,
        padding_side=padding_side,
        as_flags=False,
    )
    corpus = as_corpus(corpus)
    loaded = as_loaded_model(model, device, dtype, progress)
    side = padding_side or getattr(loaded.tokenizer, "padding_side", "right")
    wanted = parse_layers(layers, loaded.num_layers)
    taps = find_layer_taps(loaded.model, loaded.num_layers)

    token_lists = corpus.tokenize(loaded.tokenizer, max_length)
    truncated = corpus.count_truncated(loaded.tokenizer, max_length, token_lists)
    lengths = np.fromiter(map(len, token_lists), dtype=np.int64, count=len(token_lists))
    metadata = cache_metadata(loaded, corpus, pooling, max_length, batch_size, side, taps.sources)
    metadata["cache_dtype"] = resolve_cache_dtype(cache_dtype)
    metadata["truncated_rows"] = truncated  # descriptive, not part of the identity
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir(metadata, loaded.name)
    rows = shard_rows
    if rows is None:  # as many as keep one shard of every layer under shard_bytes
        rows = max(1, min(len(corpus), shard_bytes // (len(wanted) * loaded.hidden_size * 4)))
    truncation = (
        f"{loaded.name}: {truncated} of {len(corpus)} sentences are longer than "
        f"max_length={max_length} tokens and were truncated to it"
        if truncated
        else ""
    )

    writer, queue = ShardQueue.listed_by_main(
        lambda: _open_cache(directory, metadata, rows, shard_rows, resume, overwrite, wanted, truncation),
        attach=lambda: CacheWriter.attach(directory),
        what="open the cache",
    )
    try:
        queue.note_idle_ranks("shard(s)", "pass a smaller shard_rows (--shard-rows)")
        # Meanwhile the other ranks are already taking shards.
        distributed.on_main(_write_shared_files, writer, loaded, token_lists, lengths)
        if len(queue):
            run = PoolingPass(loaded, taps, token_lists, lengths, pooling, side, batch_size)
            if verify:
                run.verify_taps(wanted)
            sizes = {s: writer.shard_range(s)[1] - writer.shard_range(s)[0] for s, _ in queue.items}
            label = distributed.job_label(loaded.name)
            with SentenceBar(sum(sizes.values()), distributed.main_only(progress), label) as bar:
                for shard, missing in queue:
                    pooled = run.shard(writer.shard_range(shard), missing, shard, on_batch=bar.batch_done)
                    writer.write_shard(shard, pooled)
                    bar.shards_done(queue.finish(sizes[shard]))  # every rank's finished sentences
        distributed.barrier()  # every rank's units are listed before anyone reads the cache
    finally:
        writer.close()  # rank 0 releases the run lock only once all ranks are done
    return ActivationCache.open(directory)


def _open_cache(
    directory: Path,
    metadata: dict,
    shard_rows: int,
    requested_rows: int | None,
    resume: bool,
    overwrite: bool,
    wanted: list[int],
    truncation: str,
) -> tuple[CacheWriter, list[tuple[int, list[int]]]]:
    """Start, continue or refuse the cache at ``directory``; its writer and the unfinished
    ``(shard, missing layers)``, said in one line each (resumed, complete, truncated sentences)."""
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
        _announce(directory, todo, writer.num_shards * len(wanted), truncation)
        return writer, todo
    except BaseException:
        writer.close()
        raise


def _write_shared_files(writer: CacheWriter, loaded, token_lists: list[list[int]], lengths: np.ndarray) -> None:
    """The bags of tokens and the output (and input) embedding, unless the cache holds them intact already."""
    if not writer.targets_ok():
        from fastmi.data.bags import BagTargets

        targets = BagTargets.from_token_lists(token_lists, exclude=loaded.special_ids, vocab_size=loaded.vocab_size)
        writer.write_targets(targets, torch.from_numpy(lengths))
    if not writer.unembedding_ok():  # stored once per cache, for probe="unembedding" and "embedding"
        writer.write_unembedding(*output_embedding_or_reason(loaded.model))
    if not writer.input_embedding_ok():  # E apart from U, for probe="embedding" (untied models only)
        writer.write_input_embedding(*input_embedding_or_reason(loaded.model))


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

"""CPU benchmark: the cost of ``fastmi.extract`` over the bare model forward, timed in the same run.

    python -m pytest bench/test_bench_extract.py --benchmark-only -s

``minilm`` (6 layers, d = 384) on the first 2,000 demo sentences, max_length 128, batch 32.  The
baseline runs the plain forward on exactly the batches extract runs (same rows, order, padding,
position ids), building each batch from the token ids as extract does.  extract is timed whole:
tokenization, bags, the one-off tap check, hooks + pooling of all 7 layers, the finite check and
the cache writes (sha256, fsync, rename).  Each round times the baseline first (in pytest-benchmark's
``setup``) and then extract, so load drift on a shared machine hits both alike; the ratio of the
fastest rounds goes to ``extra_info`` and is printed.  Target: at most 1.15.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

import fastmi
from fastmi.activations.extraction import batch_plan, collate
from fastmi.models.hooks import forward_parameters

SENTENCES, BATCH, MAX_LENGTH, ROUNDS = 2000, 32, 128, 3


@pytest.fixture(scope="module")
def workload():
    loaded = fastmi.load_model("minilm")
    corpus = fastmi.Corpus.demo(SENTENCES)
    return loaded, corpus


def bare_forward(loaded, corpus) -> None:
    """The model alone on extract's batches (one shard holds the whole corpus at these sizes)."""
    ids = corpus.tokenize(loaded.tokenizer, MAX_LENGTH)
    lengths = np.fromiter(map(len, ids), dtype=np.int64)
    params = forward_parameters(loaded.model)
    with torch.inference_mode():
        for rows in batch_plan(lengths, shard_rows=len(ids), batch_size=BATCH):
            loaded.model(
                **collate(
                    [ids[r] for r in rows], loaded.tokenizer.pad_token_id, loaded.tokenizer.padding_side, "cpu", params
                )
            )


def test_extract_over_bare_forward(benchmark, workload, tmp_path):
    loaded, corpus = workload
    bare_times: list[float] = []

    def time_bare():
        start = time.perf_counter()
        bare_forward(loaded, corpus)
        bare_times.append(time.perf_counter() - start)

    def run_extract():
        return fastmi.extract(
            loaded,
            corpus,
            cache_dir=tmp_path / "cache",
            overwrite=True,
            progress=False,
            batch_size=BATCH,
            max_length=MAX_LENGTH,
        )

    benchmark.group = f"extract minilm {SENTENCES} demo sentences"
    cache = benchmark.pedantic(run_extract, setup=time_bare, rounds=ROUNDS, warmup_rounds=0)
    assert cache.num_shards == 1  # so the baseline's batches are extract's batches
    assert cache.layers == list(range(loaded.num_layers + 1))
    assert all(bool(torch.isfinite(cache.embeddings(l)).all()) for l in cache.layers)

    stats = benchmark.stats.stats
    ratio, median_ratio = stats.min / min(bare_times), stats.median / float(np.median(bare_times))
    benchmark.extra_info.update(
        bare_forward_s=bare_times,
        extract_over_bare_forward=ratio,
        extract_over_bare_forward_median=median_ratio,
        target=1.15,
    )
    print(
        f"\nextract / bare forward: {ratio:.3f} fastest rounds "
        f"(extract {stats.min:.2f}s, bare {min(bare_times):.2f}s), "
        f"{median_ratio:.3f} medians, {ROUNDS} rounds each"
    )

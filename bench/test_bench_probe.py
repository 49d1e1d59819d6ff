"""CPU benchmark: probe-stage throughput on the demo caches, in sentence-layers per second.

    python -m pytest bench/test_bench_probe.py --benchmark-only -s

For each demo model (``minilm``: 7 layers, d = 384; ``smollm2``: 31 layers, d = 576) on the demo
corpus at the demo's size and alphabet (``fastmi demo`` defaults), the whole ``fastmi.recoverability`` call is
timed: loading the layers, standardising, training all layers as one batched problem with early
stopping, scoring the held-out rows and the bootstrap bounds.  Throughput = sentences x layers /
seconds.  Baseline, timed in the same round just before: one epoch of the bare fused loss, forward
and backward of ``bag_cross_entropy`` over the training rows of all layers at once; the ratio says
how many such epochs the whole probe costs.  Caches are built once into a temporary directory
(extraction is not timed here; see test_bench_demo.py).
"""

from __future__ import annotations

import time

import pytest
import torch

import fastmi
from fastmi.commands.demo import DEMO_MAX_LENGTH, DEMO_SENTENCES, DEMO_VOCAB
from fastmi.data.alphabet import Alphabet
from fastmi.data.split import Split

ROUNDS = 2


@pytest.fixture(scope="module")
def demo_caches(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe-bench")
    corpus = fastmi.Corpus.demo(DEMO_SENTENCES)
    return {
        name: fastmi.extract(name, corpus, cache_dir=root / name, max_length=DEMO_MAX_LENGTH, progress=False)
        for name in ("minilm", "smollm2")
    }


def one_epoch_of_the_loss(cache) -> None:
    """Forward + backward of the fused loss over the training rows of every layer, batch 256."""
    targets = cache.targets
    alphabet = Alphabet.build(DEMO_VOCAB, targets, int(cache.metadata["vocab_size"]))
    bags = alphabet.compact(targets)
    train = torch.as_tensor(Split.make(targets.num_rows).train)
    z = torch.stack([cache.embeddings(layer)[train] for layer in cache.layers])
    weight = torch.zeros(z.shape[0], alphabet.size, z.shape[2], requires_grad=True)
    bias = torch.zeros(z.shape[0], alphabet.size, requires_grad=True)
    for start in range(0, train.numel(), 256):
        rows = torch.arange(start, min(start + 256, train.numel()))
        fastmi.kernels.bag_cross_entropy(z[:, rows], weight, bias, bags.select(train[rows])).sum().backward()


@pytest.mark.parametrize("model", ["minilm", "smollm2"])
def test_probe_throughput(benchmark, demo_caches, model):
    cache = demo_caches[model]
    baseline: list[float] = []

    def time_baseline():
        start = time.perf_counter()
        one_epoch_of_the_loss(cache)
        baseline.append(time.perf_counter() - start)

    result = benchmark.pedantic(
        lambda: fastmi.recoverability(cache, vocab=DEMO_VOCAB, progress=False),
        setup=time_baseline,
        rounds=ROUNDS,
        iterations=1,
    )
    seconds = benchmark.stats.stats.min
    sentence_layers = cache.metadata["num_rows"] * len(cache.layers)
    benchmark.extra_info.update(
        {
            "sentence_layers_per_s": sentence_layers / seconds,
            "probe_s": seconds,
            "loss_epoch_s": min(baseline),
            "probe_over_loss_epoch": seconds / min(baseline),
            "epochs_run": max(v["epochs_run"] for v in result.config["training"].values()),
            "alphabet_size": result.config["alphabet_size"],
        }
    )
    print(
        f"\n{model}: {sentence_layers / seconds:.0f} sentence-layers/s ({seconds:.1f} s for "
        f"{sentence_layers} sentence-layers, M = {result.config['alphabet_size']}); "
        f"{seconds / min(baseline):.1f} x one epoch of the bare loss"
    )
    assert len(result) == len(cache.layers)

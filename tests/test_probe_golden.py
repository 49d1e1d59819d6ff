"""Golden results: what ``fastmi.recoverability`` stores for a fixed synthetic input, byte for byte.

The probe's code may be reorganised (one config, one optimiser, one epoch loop), but a result made
with the same settings must not change: its config (what a sweep compares to reuse it) and its
table (the numbers) are compared as JSON text with files under tests/golden/.  Besides the default
settings, three others run the code paths the default does not: sampled softmax with tied unseen ids,
lazy moments and a sample-size curve, the unembedding probe, and the embedding probe.

To regenerate after an intended change: FASTMI_UPDATE_GOLDEN=1 pytest tests/test_probe_golden.py
(and say in the commit why the numbers moved).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

import fastmi
from fastmi.data.bags import BagTargets
from fastmi.probe.training import TrainConfig

GOLDEN = Path(__file__).parent / "golden"
VOCAB = 24
ROWS = 300


def synthetic_input() -> tuple[dict[int, torch.Tensor], BagTargets]:
    """Three layers over one bag of tokens per sentence: pure noise, a noisy view and a cleaner one."""
    g = torch.Generator().manual_seed(20240601)
    rows = []
    for _ in range(ROWS):
        length = int(torch.randint(1, 9, (1,), generator=g))
        # a skewed draw, so the alphabet has frequent and rare ids (top:K has something to drop)
        rows.append((torch.rand(length, generator=g) ** 2 * VOCAB).long().clamp(max=VOCAB - 1).tolist())
    bags = BagTargets.from_token_lists(rows, vocab_size=VOCAB)
    dense = torch.zeros(ROWS, VOCAB)
    dense.index_put_((bags.row_index, bags.ids), bags.counts.float(), accumulate=True)
    dense = dense / bags.lengths.clamp(min=1).unsqueeze(1)
    layers = {
        0: torch.randn(ROWS, VOCAB, generator=g),
        3: dense + 0.5 * torch.randn(ROWS, VOCAB, generator=g),
        6: dense + 0.2 * torch.randn(ROWS, VOCAB, generator=g),
    }
    return layers, bags


def unembedding() -> torch.Tensor:
    return torch.randn(VOCAB, VOCAB, generator=torch.Generator().manual_seed(7))


CASES = {
    # The default settings (the device named, so that a GPU machine probes on the CPU as well).
    "default": lambda: {},
    "sampled": lambda: {
        "vocab": "top:16",
        "train_softmax": "sampled:6",
        "train": TrainConfig(max_epochs=8, patience=2, batch_size=64, sampled_adam="lazy", weight_decay=0.01),
        "curve": (0.5, 1.0),
        "n_bootstrap": 300,
        "seed": 3,
    },
    "unembedding": lambda: {
        "probe": "unembedding",
        "unembedding": unembedding(),
        "vocab": "full",
        "train": TrainConfig(max_epochs=6, batch_size=64),
        "n_bootstrap": 300,
        "validation_fraction": 0.15,
        "k": 3,
    },
    # The embedding probe, its start scale chosen per layer.
    "embedding": lambda: {
        "probe": "embedding",
        "unembedding": torch.eye(VOCAB),
        "train": TrainConfig(max_epochs=6, batch_size=64),
        "n_bootstrap": 300,
        "curve": (0.5, 1.0),
    },
    # "auto" with the model's rows given: the embedding and unembedding probes, the better kept per
    # layer; two probe seeds and a curve, which train the kept form only.
    "auto": lambda: {
        "unembedding": unembedding(),
        "train": TrainConfig(max_epochs=6, batch_size=64),
        "n_bootstrap": 300,
        "curve": (0.5, 1.0),
        "probe_seeds": 2,
    },
}


def stored_text(result) -> str:
    """The parts of a result that must not move, as the JSON a result file holds them."""
    document = {"config": result.config, "table": result.table}
    return json.dumps(document, indent=2, allow_nan=False) + "\n"


@pytest.mark.parametrize("case", sorted(CASES))
def test_result_is_byte_identical_to_the_golden_file(case, one_thread):
    layers, bags = synthetic_input()
    result = fastmi.recoverability(
        layers, targets=bags, vocab_size=VOCAB, device="cpu", progress=False, **CASES[case]()
    )
    text = stored_text(result)
    path = GOLDEN / f"recoverability_{case}.json"
    if os.environ.get("FASTMI_UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.is_file(), f"{path} is missing; make it with FASTMI_UPDATE_GOLDEN=1"
    expected = path.read_text()
    if text != expected:  # name the first field that moved, not a 300-line diff
        got, want = json.loads(text), json.loads(expected)
        moved = [key for key in want["config"] if got["config"].get(key) != want["config"][key]]
        rows = [i for i, (a, b) in enumerate(zip(got["table"], want["table"])) if a != b]
        pytest.fail(f"{case}: config keys {moved} and table rows {rows} differ from {path.name}")

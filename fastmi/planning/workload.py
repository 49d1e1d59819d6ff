"""The corpus side of a plan: tokens, padding, bags and the alphabet, from the sentences or a summary.

With a corpus and a tokenizer (read without weights) the figures are exact: the sentences are
tokenized as :func:`fastmi.extract` tokenizes them and batched as it batches them, so the padded
tokens are the ones the forward passes will process.  With ``sentences=N`` and ``mean_tokens`` they
are a summary: no padding (extraction sorts by length), and a bag of distinct ids per sentence of
``DISTINCT_SHARE`` of its tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastmi.models.shape import ModelShape

__all__ = ["DEFAULT_MEAN_TOKENS", "Workload", "corpus_workload", "synthetic_workload"]

DEFAULT_MEAN_TOKENS = 32
DISTINCT_SHARE = 0.85  # distinct ids / tokens in an English sentence of ~30 tokens
CHARS_PER_TOKEN = 4.0  # when no tokenizer can be read: BPE vocabularies of 30k-250k tokens on English text
# Alphabets that need the corpus's token counts (fastmi.data.alphabet.parse_vocab kinds).
COUNTED = ("observed", "min", "auto")
TEST_FRACTION, VALIDATION_FRACTION = 0.2, 0.1  # fastmi.recoverability's defaults


@dataclass(frozen=True)
class Workload:
    sentences: int
    tokens: int  # after truncation to max_length, special tokens included
    padded_tokens: int  # what the forward passes process, padding included
    mean_width: float  # mean padded width of a batch: the attention context
    max_width: int
    mean_bag: float  # distinct target ids per sentence (special tokens excluded)
    alphabet_size: int  # M for the chosen vocab setting
    probe_rows: int  # sentences with a non-empty bag: the rows the probe holds
    source: str  # "tokenized" | "estimated from characters" | "summary"
    tokenize_seconds: float = 0.0  # tokenizing the corpus as extraction does, timed here (0 without a tokenizer)

    @property
    def train_rows(self) -> int:
        return max(1, round(self.probe_rows * (1 - TEST_FRACTION) * (1 - VALIDATION_FRACTION)))

    @property
    def validation_rows(self) -> int:
        return max(1, round(self.probe_rows * (1 - TEST_FRACTION) * VALIDATION_FRACTION))


def synthetic_workload(
    shape: ModelShape, sentences: int, mean_tokens: float | None, max_length: int, vocab: str
) -> Workload:
    from fastmi.data.alphabet import parse_vocab

    if sentences < 2:
        raise ValueError(f"sentences must be at least 2, got {sentences}")
    kind, top = parse_vocab(vocab)
    if kind in COUNTED:
        raise ValueError(
            f"vocab={vocab!r} needs the corpus to count the ids it holds; give a corpus, "
            "or plan with vocab='full' or 'top:K'"
        )
    per_sentence = min(float(mean_tokens or DEFAULT_MEAN_TOKENS), float(max_length))
    alphabet = shape.vocab_size if kind == "full" else min(top, shape.vocab_size)
    tokens = int(round(sentences * per_sentence))
    return Workload(
        sentences,
        tokens,
        tokens,
        per_sentence,
        int(math.ceil(per_sentence)),
        DISTINCT_SHARE * per_sentence,
        alphabet,
        sentences,
        "summary",
    )


def corpus_workload(
    shape: ModelShape, corpus, max_length: int, vocab: str, batch_size: int, num_layers: int, model_cache_dir=None
) -> Workload:
    from fastmi.activations.extraction import DEFAULT_SHARD_BYTES, _as_corpus, batch_plan
    from fastmi.data.alphabet import parse_vocab

    kind, top = parse_vocab(vocab)
    corpus = _as_corpus(corpus)
    tokenizer = _tokenizer(shape, model_cache_dir)
    if tokenizer is None:
        if kind in COUNTED:
            raise ValueError(
                f"vocab={vocab!r} needs {shape.name}'s tokenizer, which cannot be read here; "
                "plan with vocab='full' or 'top:K'"
            )
        lengths = np.array([min(max_length, 2 + math.ceil(len(s) / CHARS_PER_TOKEN)) for s in corpus.sentences])
        tokenize_seconds = 0.0
        distinct = DISTINCT_SHARE * lengths
        alphabet_full, source = shape.vocab_size, "estimated from characters"
    else:
        from fastmi.planning import rates

        specials = set(int(i) for i in tokenizer.all_special_ids)
        started = rates._clock()
        token_lists = corpus.tokenize(tokenizer, max_length)  # what every extracting process does first
        tokenize_seconds = rates._clock() - started
        lengths = np.fromiter(map(len, token_lists), dtype=np.int64, count=len(token_lists))
        bags = [set(ids) - specials for ids in token_lists]
        distinct = np.fromiter(map(len, bags), dtype=np.float64, count=len(bags))
        alphabet_full, source = len(tokenizer) - len(specials), "tokenized"
    if kind == "full":
        alphabet = alphabet_full
    elif tokenizer is not None:
        alphabet = probe_alphabet_size(vocab, token_lists, specials, len(tokenizer))
    else:  # fastmi.data.alphabet: the K-1 most frequent ids and "other"
        alphabet = top
    shard_rows = max(1, min(len(corpus), DEFAULT_SHARD_BYTES // (num_layers * shape.hidden_size * 4)))
    batches = batch_plan(lengths, shard_rows, batch_size)
    widths = np.array([int(lengths[b].max()) for b in batches]) if batches else np.zeros(1)
    sizes = np.array([b.size for b in batches]) if batches else np.zeros(1)
    padded = int((widths * sizes).sum())
    return Workload(
        sentences=len(corpus),
        tokens=int(lengths.sum()),
        padded_tokens=padded,
        mean_width=float((widths * sizes).sum() / max(sizes.sum(), 1)),
        max_width=int(widths.max()),
        mean_bag=float(distinct.mean()) if distinct.size else 0.0,
        alphabet_size=max(int(alphabet), 1),
        probe_rows=int((distinct > 0).sum()),
        source=source,
        tokenize_seconds=tokenize_seconds,
    )


def _tokenizer(shape: ModelShape, model_cache_dir=None):
    """The model's tokenizer, read without its weights (from a GGUF: its metadata), or None."""
    from transformers import AutoTokenizer

    from fastmi.models.loading import DEMO_MODELS, _demo_path

    if shape.tokenizer_source is not None:
        return AutoTokenizer.from_pretrained(shape.tokenizer_source)
    path = _demo_path(shape.name) if shape.name in DEMO_MODELS else Path(shape.name).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return None


def probe_alphabet_size(vocab: str, token_lists, specials: set[int], vocab_size: int) -> int:
    """M as the probe will have it: the alphabet built, as :func:`fastmi.recoverability` builds it, from
    the training (and validation) sentences of the default split, never from all of them."""
    from fastmi.data.alphabet import Alphabet
    from fastmi.data.bags import BagTargets
    from fastmi.probe.config import ProbeConfig

    if vocab == "auto":  # its finest trial, the largest M the run can keep (fastmi.probe.alphabet_choice)
        vocab = "observed"
    bags = BagTargets.from_token_lists(token_lists, exclude=sorted(specials), vocab_size=vocab_size)
    split = ProbeConfig().make_split(bags.num_rows)
    nonempty = (bags.lengths > 0).numpy()
    train, validation = (part[nonempty[part]] for part in (split.train, split.validation))
    alphabet = Alphabet.build(vocab, bags.select(train), vocab_size, sorted(specials), bags.select(validation))
    return alphabet.size

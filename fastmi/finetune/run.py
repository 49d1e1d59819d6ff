"""``fastmi.finetune.run``: a model's own objective plus lambda * recoverability, through the HF Trainer.

The own objective is causal LM for decoders and masked LM for encoders (chosen from the config,
:func:`fastmi.models.loading.model_kind`).  Training uses the *train* rows of the same seeded split that
``fastmi sweep`` / ``fastmi probe`` score on (:class:`fastmi.data.split.Split`, saved as OUT/split.json),
so the held-out sentences of an evaluation are never trained on.

OUT holds, in the standard ``from_pretrained`` layout:

* OUT/config.json, model.safetensors, tokenizer files: the tuned model (LoRA merged into the base
  weights unless ``merge=False``), readable by ``from_pretrained`` and ``fastmi extract --model OUT``;
* OUT/adapter/: the PEFT LoRA adapter (``PeftModel.from_pretrained(base, OUT/adapter)``), with ``--lora``;
* OUT/recoverability/: the probes (:func:`fastmi.finetune.trainer.load_probe`);
* OUT/checkpoints/: the Trainer's checkpoints: a killed run resumes from the last one;
* OUT/log.jsonl: every Trainer log line; OUT/finetune.json (written last: the run is finished), with
  the settings, among them ``max_length``: a sweep of OUT should truncate where training did.
* OUT/finetune_config.json (written first): the settings of a run under way.  Running the same
  command again resumes from the last *complete* checkpoint (a half-written one, from a kill during a
  save, is removed) or, with no checkpoint yet, starts over; other settings are refused.
* OUT/claim_split.json, with ``tune_fraction``: the three-way split of :mod:`fastmi.finetune.split`;
  training then uses its tune part alone, not the sweep split's train rows.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from fastmi.defaults import DEFAULT_MAX_LENGTH
from fastmi.probe.config import ProbeConfig, default_of
from fastmi.runtime.distributed import trainer_step_sentences
from fastmi.runtime.files import atomic_write_text
from fastmi.runtime.notices import notice

__all__ = ["FinetuneConfig", "finetune", "training_source", "load_trainable"]

FINISHED = "finetune.json"
STARTED = "finetune_config.json"  # the settings of a run under way: a resumed run must have the same


@dataclass
class FinetuneConfig:
    """Settings of one fine-tuning run (the CLI's options)."""

    model: str  # demo alias, local directory, .gguf file or hub id
    out: str  # output directory
    corpus: str = "demo"  # 'demo', a .txt or .jsonl file
    max_sentences: int | None = None  # first N sentences (None: all; 'demo' defaults to 2000)
    layers: str = "middle"  # layers whose recoverability is trained: 'middle', 'last', '3', '2,4'
    lam: float = 0.1  # lambda: weight of the recoverability term in the model's gradient
    steps: int = 200
    lr: float = 2e-4  # model learning rate (LoRA adapters, or all weights with lora=False)
    probe_lr: float = 1e-3  # the probes' learning rate (they start at zero)
    lora: bool = True  # LoRA adapters (peft) or full fine-tuning
    lora_r: int = 16
    batch_size: int = 8
    max_length: int = DEFAULT_MAX_LENGTH  # the same as extract's and sweep's: score what was trained on
    # The split's settings are the probe's (fastmi.probe.config), so OUT's held-out sentences are a sweep's.
    seed: int = default_of(ProbeConfig, "seed")  # split, initialisation, data order, masking
    test_fraction: float = default_of(ProbeConfig, "test_fraction")  # held-out share of the split
    pooling: str = "mean"
    merge: bool = True  # with lora: also write merged weights to OUT
    mlm_probability: float = 0.15
    logging_steps: int = 10
    save_steps: int = 50
    bf16: bool = False
    max_grad_norm: float = 1.0  # each term (own loss, lambda * recoverability) clipped to it on its own; 0: none
    gradient_checkpointing: bool = False
    progress: bool = True
    # The third claim's three-way split (fastmi.finetune.split.claim_split): with tune_fraction set,
    # training uses its tune part alone, and the probe and held-out parts are never trained on.
    tune_fraction: float | None = None
    probe_fraction: float = 0.3
    split_seed: int = 0  # seed of the three-way split (the same for every arm and training seed)


def training_source(spec: str | os.PathLike, model_cache_dir: str | os.PathLike | None = None) -> str:
    """Where ``from_pretrained`` finds ``spec``: a local directory (demo aliases and GGUF files are
    resolved as :func:`fastmi.load_model` does) or the hub id itself."""
    from fastmi.models.gguf import gguf_to_local_dir
    from fastmi.models.loading import default_model_cache_dir, resolve_spec

    name = os.fspath(spec)
    path, _ = resolve_spec(name, None)  # a missing path or a typo fails here, in one line, as extract's does
    if path is None:
        return name  # a hub id, cached or reachable
    if path.is_file() and path.suffix.lower() == ".gguf":
        cache = Path(model_cache_dir) if model_cache_dir is not None else default_model_cache_dir()
        return str(gguf_to_local_dir(path, cache)[0])
    if path.is_dir():
        return str(path)
    if path.exists():
        raise ValueError(f"{name} is a file but not a .gguf model; pass a model directory, a .gguf file or a hub id")
    return name


def load_trainable(source: str, seed: int = 0, dtype: torch.dtype = torch.float32):
    """``(model with its LM head, tokenizer, kind, missing_keys)`` in train mode, all weights trainable.

    :func:`fastmi.load_model` returns a frozen base model for extraction; training needs the head of
    the model's own objective.  Weights the checkpoint lacks (e.g. the MLM head of a sentence-
    transformers BERT) are initialised from ``seed`` and reported in ``missing_keys``.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from fastmi.models.loading import _ensure_pad_token, model_kind

    config = AutoConfig.from_pretrained(source)
    kind = model_kind(config)
    auto = AutoModelForCausalLM if kind == "decoder" else AutoModelForMaskedLM
    torch.manual_seed(seed)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # missing heads are reported below, once, in our words
    try:
        model, info = auto.from_pretrained(source, config=config, dtype=dtype, output_loading_info=True)
    finally:
        hf_logging.set_verbosity(verbosity)
    tokenizer = AutoTokenizer.from_pretrained(source)
    _ensure_pad_token(tokenizer)
    model.train().requires_grad_(True)
    return model, tokenizer, kind, sorted(info.get("missing_keys") or [])


def resolve_training_layers(layers: str, num_layers: int) -> list[int]:
    """'middle' -> [L // 2]; otherwise :func:`fastmi.activations.extraction.parse_layers`."""
    from fastmi.activations.extraction import parse_layers

    if str(layers).strip().lower() == "middle":
        return [num_layers // 2]
    return parse_layers(layers, num_layers)


def finetune(config: FinetuneConfig) -> dict[str, Any]:
    """Run (or resume, or reuse a finished) fine-tuning; return the contents of OUT/finetune.json."""
    from transformers import DataCollatorForLanguageModeling, TrainingArguments

    from fastmi.data.corpus import Corpus
    from fastmi.finetune.loss import MultiLayerRecoverabilityLoss
    from fastmi.finetune.saving import JsonlLogCallback, save_tuned_model
    from fastmi.finetune.trainer import RecoverabilityTrainer, save_probe

    _check_config(config)
    out = Path(config.out)
    settings = asdict(config)
    settings.pop("progress")
    if (out / FINISHED).is_file():
        done = json.loads((out / FINISHED).read_text())
        if _with_defaults(done.get("config")) == settings:
            return done
        raise ValueError(f"{out} holds a finished run with other settings; use a new --out directory")
    if (out / STARTED).is_file() and _with_defaults(json.loads((out / STARTED).read_text())) != settings:
        raise ValueError(f"{out} holds an unfinished run with other settings; use a new --out directory")
    source = training_source(config.model)  # before OUT is made: a missing model leaves nothing behind
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / STARTED, json.dumps(settings, indent=2))
    model, tokenizer, kind, missing = load_trainable(source, config.seed)
    if missing:  # a notice: said once under torchrun, not once per rank
        notice(
            f"finetune: {len(missing)} weights of the {kind} head are not in {source} and start at random "
            f"(seed {config.seed}): {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}"
        )
    num_layers = int(model.config.num_hidden_layers)
    layers = resolve_training_layers(config.layers, num_layers)

    corpus = Corpus.load(config.corpus, max_sentences=config.max_sentences)
    split = split_settings(config).make_split(len(corpus), corpus.fingerprint)
    split.save(out / "split.json")
    token_lists = corpus.tokenize(tokenizer, config.max_length)
    rows, three_way = training_rows(config, corpus, split, out)
    train = [{"input_ids": token_lists[i]} for i in rows if token_lists[i]]

    if config.lora:
        model = _with_lora(model, config, kind, missing)
    special = sorted({int(i) for i in tokenizer.all_special_ids})
    recoverability = MultiLayerRecoverabilityLoss(
        int(model.config.hidden_size), len(tokenizer), layers, pooling=config.pooling, exclude_ids=special
    )
    collator = DataCollatorForLanguageModeling(
        tokenizer, mlm=kind == "encoder", mlm_probability=config.mlm_probability, seed=config.seed
    )
    args = TrainingArguments(
        output_dir=str(out / "checkpoints"),
        max_steps=config.steps,
        per_device_train_batch_size=config.batch_size,
        learning_rate=config.lr,
        weight_decay=0.0,
        warmup_steps=min(10, config.steps // 10),
        lr_scheduler_type="linear",
        logging_steps=config.logging_steps,
        logging_first_step=True,
        save_steps=config.save_steps,
        save_total_limit=1,
        seed=config.seed,
        data_seed=config.seed,
        report_to=[],
        remove_unused_columns=False,
        dataloader_num_workers=0,
        bf16=config.bf16,
        max_grad_norm=config.max_grad_norm,
        **_checkpointing_argument(TrainingArguments, config.gradient_checkpointing),
        disable_tqdm=not config.progress,
        use_cpu=not torch.cuda.is_available(),
    )
    # Within one pass every batch's term is scored by a probe that has not yet trained on its bags (a
    # held-out-bag term); a second pass rewards what the probe memorised (docs/finetune.md, "One pass").
    per_step = trainer_step_sentences(args)
    passes = config.steps * per_step / max(len(train), 1)
    if passes > 1:
        notice(
            f"finetune: {config.steps} steps of {per_step} sentences pass over the {len(train):,} training "
            f"sentences {passes:.2f} times; after the first pass the recoverability term is scored by a probe "
            f"that has trained on the batch's bags, and rewards what it memorised (docs/finetune.md, "
            f"'One pass'); {len(train) // per_step} steps make one pass"
        )
    trainer = RecoverabilityTrainer(
        model=model,
        args=args,
        train_dataset=train,
        data_collator=collator,
        processing_class=tokenizer,
        recoverability=recoverability,
        lam=config.lam,
        probe_lr=config.probe_lr,
        callbacks=[JsonlLogCallback(out / "log.jsonl")],
    )
    resume = last_complete_checkpoint(args.output_dir)
    result = trainer.train(resume_from_checkpoint=resume)

    save_tuned_model(trainer.model, tokenizer, out, source, kind, lora=config.lora, merge=config.merge)
    save_probe(recoverability, out / "recoverability", lam=config.lam)
    logs = [entry for entry in trainer.state.log_history if "own_loss" in entry]
    done = {
        "config": settings,
        "source": source,
        "kind": kind,
        "layers": layers,
        "max_length": config.max_length,  # tokens per sentence trained on (also in "config")
        "train_sentences": len(train),
        "passes": passes,  # sentences drawn per training sentence: steps x sentences a step / train_sentences
        "claim_split": three_way,  # None: the sweep split's train rows
        "missing_weights": missing,
        "train_runtime_s": result.metrics.get("train_runtime"),  # this sitting's: from resumed_from_step
        "resumed_from_step": None if resume is None else int(Path(resume).name.rsplit("-", 1)[-1]),
        "last_log": logs[-1] if logs else None,
    }
    atomic_write_text(out / FINISHED, json.dumps(done, indent=2))
    return done


def training_rows(config: FinetuneConfig, corpus, split, out: Path):
    """``(rows trained on, record)``: the sweep split's train rows, or with ``tune_fraction`` the tune
    part of :func:`fastmi.finetune.split.claim_split` (its three parts saved as OUT/claim_split.json)."""
    if config.tune_fraction is None:
        return split.train, None
    from fastmi.finetune.split import claim_split

    parts = claim_split(len(corpus), config.split_seed, config.tune_fraction, config.probe_fraction)
    atomic_write_text(out / "claim_split.json", json.dumps({**parts.to_dict(), "corpus": corpus.fingerprint}))
    record = {
        "seed": parts.seed,
        "tune_fraction": parts.tune_fraction,
        "probe_fraction": parts.probe_fraction,
        "num_rows": parts.num_rows,
        "corpus": corpus.fingerprint,
        "sizes": {"tune": int(parts.tune.size), "probe": int(parts.probe.size), "heldout": int(parts.heldout.size)},
    }
    return parts.tune, record


def last_complete_checkpoint(folder: str | os.PathLike) -> str | None:
    """The last checkpoint the Trainer finished writing (its trainer_state.json is written last);
    half-written ones, left by a run killed while saving, are removed so that they are not resumed."""
    import shutil

    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    folder = Path(folder)
    if not folder.is_dir():
        return None
    found = []
    for path in folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        step = path.name.rsplit("-", 1)[-1]
        if not (path.is_dir() and step.isdigit()):
            continue
        if (path / "trainer_state.json").is_file():
            found.append((int(step), path))
        else:
            shutil.rmtree(path, ignore_errors=True)
    return str(max(found)[1]) if found else None


def _with_defaults(settings: dict | None) -> dict | None:
    """Settings recorded before an option existed, with that option at its default."""
    if settings is None:
        return None
    defaults = {f.name: f.default for f in dataclasses.fields(FinetuneConfig) if f.name != "progress"}
    return {**{k: v for k, v in defaults.items() if k not in settings}, **settings}


def _with_lora(model, config: FinetuneConfig, kind: str, missing: list[str]):
    from peft import LoraConfig, TaskType, get_peft_model

    # A head that starts at random (missing from the checkpoint) must be trained in full.
    heads = sorted({key.split(".")[0] for key in missing})
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=2 * config.lora_r,
        lora_dropout=0.0,
        task_type=TaskType.CAUSAL_LM if kind == "decoder" else None,
        modules_to_save=heads or None,
    )
    with warnings.catch_warnings():
        # peft reads the model's is_gradient_checkpointing, which transformers 5 renamed (a
        # FutureWarning on every run, about code neither fastmi nor the user wrote).
        warnings.filterwarnings("ignore", r"`is_gradient_checkpointing` is deprecated", FutureWarning)
        model = get_peft_model(model, lora)
    if config.gradient_checkpointing:
        model.enable_input_require_grads()  # checkpointed blocks need an input that requires grad
    return model


def _checkpointing_argument(arguments_class, enabled: bool) -> dict[str, bool]:
    """TrainingArguments' switch for recomputing activations in the backward, under its current name:
    transformers 5 calls it ``activation_checkpointing`` and warns at every use of the old one."""
    names = {field.name for field in dataclasses.fields(arguments_class)}
    return {"activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing": enabled}


def split_settings(config: FinetuneConfig) -> ProbeConfig:
    """The probe settings of the split a sweep scores on (checked as they are made); the sweep's
    held-out sentences depend on ``seed`` and ``test_fraction`` alone, so they are never trained on."""
    return ProbeConfig(seed=config.seed, test_fraction=config.test_fraction)


def _check_config(config: FinetuneConfig) -> None:
    split_settings(config)
    for name in ("steps", "batch_size", "max_length", "lora_r", "logging_steps", "save_steps"):
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not config.max_grad_norm >= 0:
        raise ValueError(f"max_grad_norm must be >= 0 (0: no clipping), got {config.max_grad_norm!r}")
    for name in ("lr", "probe_lr"):
        if not getattr(config, name) > 0:
            raise ValueError(f"{name} must be > 0, got {getattr(config, name)!r}")
    if not config.lam >= 0:
        raise ValueError(f"lambda must be >= 0, got {config.lam!r}")
    if config.tune_fraction is not None:
        from fastmi.finetune.split import check_fractions

        check_fractions(config.tune_fraction, config.probe_fraction)

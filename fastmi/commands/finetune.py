"""Fine-tune a model on its own objective plus lambda * recoverability of chosen layers.

The own objective is causal LM for decoders and masked LM for encoders.  Trains on the train
sentences of the split that `fastmi sweep` uses (same --seed and --test-fraction), with the
Hugging Face Trainer (its progress bar and log lines), and writes the tuned model to OUT in the
from_pretrained layout (LoRA merged; the adapter in OUT/adapter), the probes in
OUT/recoverability, the log in OUT/log.jsonl.  A killed run resumes from OUT/checkpoints.
Then compare with `fastmi sweep --model BASE --model OUT ...`.  With --tune-fraction it trains on the
tune part of a three-way split alone (tune / evaluation probes / held out, OUT/claim_split.json), as the
third claim's test does (bench/finetune_claim.py).  Example:

    fastmi finetune --model minilm --corpus demo --max-sentences 1000 --layers 3 --lambda 1 \\
        --steps 200 --full --lr 5e-5 --out runs/minilm-recover

That takes over 20 minutes on 2 CPU cores; a first run of about a minute (20 steps, 200 sentences,
32 tokens) is in docs/finetune.md.
"""

from __future__ import annotations

import argparse

from fastmi.commands._probe_options import add_setting_option, check_options
from fastmi.defaults import DEFAULT_MAX_LENGTH
from fastmi.probe.config import ProbeConfig

HELP = "fine-tune a model with lambda * recoverability added to its own (causal or masked) LM loss"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        help="'minilm' or 'smollm2' (bundled demos), a local model directory, a .gguf file or a hub id",
    )
    parser.add_argument("--corpus", default="demo", help="'demo' (BBC News sentences), a .txt or a .jsonl file")
    parser.add_argument(
        "--max-sentences", type=int, default=None, help="use only the first N sentences (default: all; 2000 for 'demo')"
    )
    parser.add_argument("--out", required=True, help="output directory (model, adapter, probes, checkpoints, log)")
    parser.add_argument(
        "--layers",
        default="middle",
        help="layers whose recoverability is trained: 'middle' (L // 2), 'last', '3', '2,4' "
        "(0 = embedding output); several layers share the term equally",
    )
    parser.add_argument(
        "--lambda",
        dest="lam",
        type=float,
        default=0.1,
        help="weight of the recoverability term in the model's gradient (0: a control run)",
    )
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps")
    parser.add_argument("--lr", type=float, default=2e-4, help="learning rate of the model (adapters or all weights)")
    parser.add_argument("--probe-lr", type=float, default=1e-3, help="learning rate of the recoverability probes")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--lora", dest="lora", action="store_true", default=True, help="train LoRA adapters (default)")
    mode.add_argument("--full", dest="lora", action="store_false", help="train every weight of the model")
    parser.add_argument("--lora-r", type=int, default=16, help="LoRA rank")
    parser.add_argument(
        "--no-merge",
        dest="merge",
        action="store_false",
        help="with --lora, write only the adapter (OUT/adapter), not merged weights in OUT",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="sentences per step")
    parser.add_argument(
        "--max-length",
        type=int,
        default=DEFAULT_MAX_LENGTH,
        help="tokens per sentence, longer ones truncated (default: %(default)s, as in sweep and extract, so that a "
        "sweep of OUT scores the text it was trained on; recorded in OUT/finetune.json)",
    )
    # The split's settings, declared with the probe's (fastmi.probe.config): the split a sweep scores on.
    add_setting_option(parser, ProbeConfig, "seed", help="seed of the split, initialisation, data order and masking")
    add_setting_option(parser, ProbeConfig, "test_fraction", help="held-out share of the split, never trained on")
    parser.add_argument(
        "--tune-fraction",
        type=float,
        default=None,
        help="train only on the tune part of a three-way split (tune / evaluation probes / held out, "
        "fastmi.finetune.split.claim_split), this share of the corpus; recorded in OUT/finetune.json",
    )
    parser.add_argument(
        "--probe-fraction", type=float, default=0.3, help="with --tune-fraction: the evaluation probes' share"
    )
    parser.add_argument(
        "--split-seed",
        type=int,
        default=0,
        help="with --tune-fraction: seed of the three-way split (same for every arm)",
    )
    parser.add_argument(
        "--pooling",
        default="mean",
        choices=("mean", "first", "last", "max"),
        help="pooling of the probed hidden states",
    )
    parser.add_argument("--logging-steps", type=int, default=10, help="steps between log lines")
    parser.add_argument("--save-steps", type=int, default=50, help="steps between checkpoints (the unit of resumption)")
    parser.add_argument(
        "--max-grad-norm",
        type=float,
        default=1.0,
        help="clip the own loss's gradient and lambda * recoverability's each to this norm, on its own "
        "(so that every lambda shrinks the own loss's step alike); 0: no clipping",
    )
    parser.add_argument("--bf16", action="store_true", help="bf16 mixed precision (autocast)")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations in the backward")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from fastmi.finetune.run import FinetuneConfig, finetune

    check_options(args, ProbeConfig, ("seed", "test_fraction"))
    config = FinetuneConfig(
        model=args.model,
        out=args.out,
        corpus=args.corpus,
        max_sentences=args.max_sentences,
        layers=args.layers,
        lam=args.lam,
        steps=args.steps,
        lr=args.lr,
        probe_lr=args.probe_lr,
        lora=args.lora,
        lora_r=args.lora_r,
        batch_size=args.batch_size,
        max_length=args.max_length,
        seed=args.seed,
        test_fraction=args.test_fraction,
        pooling=args.pooling,
        merge=args.merge,
        logging_steps=args.logging_steps,
        save_steps=args.save_steps,
        bf16=args.bf16,
        max_grad_norm=args.max_grad_norm,
        gradient_checkpointing=args.gradient_checkpointing,
        progress=args.progress,
        tune_fraction=args.tune_fraction,
        probe_fraction=args.probe_fraction,
        split_seed=args.split_seed,
    )
    done = finetune(config)
    last = done.get("last_log") or {}
    bounds = {k.split("/")[-1]: v for k, v in last.items() if k.startswith("variational_bound_bits/")}
    print(
        f"tuned {done['kind']} {args.model} for {args.steps} steps on {done['train_sentences']} sentences, "
        f"layers {done['layers']}, lambda {args.lam}: wrote {args.out}"
    )
    if last:
        print(
            f"last log: own loss {last.get('own_loss')}, recoverability {last.get('recoverability')} nats, "
            f"running variational bound (train) {bounds} bits"
        )
    return 0

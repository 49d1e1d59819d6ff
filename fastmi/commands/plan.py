"""Estimate what extracting and probing a model will cost, and whether it fits, before running it.

Reads only the model's config (config.json, or a GGUF file's metadata) and the corpus, never the
weights.  Prints the parameter count, the weight bytes and their placement (data-parallel replicas,
devices per replica, offload), the extraction FLOPs and time, the cache size, the probe's memory
per layer and layer groups, and its FLOPs and time per epoch.  Every figure is an estimate.
Where something does not fit it says so and names the change that makes it fit.  Examples:

    fastmi plan --model minilm --corpus demo --max-sentences 1000
    fastmi plan --model path/to/Llama-3.1-70B/config.json --sentences 100000 --mean-tokens 32 \\
        --vocab full --gpus 8 --gpu-memory 141GB --matmul-tflops 593 --json
"""

from __future__ import annotations

import argparse
import json

HELP = "estimate the cost, memory and placement of a sweep from the model's config (no weights loaded)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        help="'minilm', 'smollm2', a model directory, a config.json, a .gguf file or a hub id in the "
        "local cache (only the config is read)",
    )
    work = parser.add_argument_group("corpus")
    work.add_argument("--corpus", default=None, help="'demo', a .txt file (one sentence per line) or a .jsonl file")
    work.add_argument("--field", default="text", help="JSON field holding the sentence, for .jsonl corpora")
    work.add_argument("--max-sentences", type=int, default=None, help="use only the first N sentences of --corpus")
    work.add_argument("--sentences", type=int, default=None, help="plan for N sentences instead of a corpus file")
    work.add_argument(
        "--mean-tokens", type=float, default=None, help="tokens per sentence with --sentences (default: 32)"
    )
    work.add_argument("--max-length", type=int, default=128, help="tokens per sentence (longer ones are truncated)")
    work.add_argument("--layers", default="all", help="'all', 'last', '0,3,6', '2-5'; 0 is the embedding output")
    work.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="sentences per forward pass (default: 32 on a CPU; on GPUs as many as fit next to the "
        "weights, up to 1024, more with offload so that each weight transfer serves many tokens)",
    )
    probe = parser.add_argument_group("probe")
    probe.add_argument(
        "--vocab",
        default=None,
        metavar="{observed,full,top:K}",
        help="alphabet of T (default: observed with --corpus, full with --sentences)",
    )
    probe.add_argument(
        "--probe",
        default="linear",
        choices=("linear", "unembedding"),
        help="a linear probe W z + b, or U (A z + c) + b through the frozen output embedding U",
    )
    probe.add_argument(
        "--train-softmax",
        default="full",
        metavar="{full,sampled:K}",
        help="train on the full softmax, or on K sampled negatives plus the batch's bag ids",
    )
    probe.add_argument(
        "--precision",
        default="fp32",
        choices=("fp32", "tf32", "bf16"),
        help="the probe's matmul precision (fp32 master weights and Adam state in every case)",
    )
    probe.add_argument(
        "--cache-dtype", default="fp32", choices=("fp32", "bf16", "fp16"), help="dtype of the pooled embeddings on disk"
    )
    hardware = parser.add_argument_group("hardware (default: this machine, measured now)")
    hardware.add_argument(
        "--gpus",
        type=int,
        default=None,
        help="GPUs to plan for; 0 plans for this CPU (default: the GPUs here, else the CPU)",
    )
    hardware.add_argument("--gpu-memory", default=None, help="memory of one GPU, e.g. 141GB or 80GiB")
    hardware.add_argument("--host-memory", default=None, help="host RAM for offload, e.g. 2TB (default: free RAM here)")
    hardware.add_argument(
        "--matmul-tflops",
        type=float,
        default=None,
        help="achieved dense matmul TFLOP/s of one device in the extraction dtype (bf16 on GPUs), "
        "e.g. 593 for an H200 at 60%% of its 989; measured here with one large matmul if omitted",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the plan as JSON (the fields of fastmi.plan's result)"
    )


def run(args: argparse.Namespace) -> int:
    from ..corpus import Corpus
    from ..planner import plan

    if (args.corpus is None) == (args.sentences is None):
        raise ValueError("give either --corpus or --sentences N (with --mean-tokens)")
    corpus = Corpus.load(args.corpus, field=args.field, max_sentences=args.max_sentences) if args.corpus else None
    vocab = args.vocab or ("observed" if corpus is not None else "full")
    result = plan(
        args.model,
        corpus,
        sentences=args.sentences,
        mean_tokens=args.mean_tokens,
        max_length=args.max_length,
        layers=args.layers,
        vocab=vocab,
        cache_dtype=args.cache_dtype,
        gpus=args.gpus,
        gpu_memory=args.gpu_memory,
        host_memory=args.host_memory,
        matmul_tflops=args.matmul_tflops,
        train_softmax=args.train_softmax,
        probe=args.probe,
        precision=args.precision,
        batch_size=args.batch_size,
    )
    print(json.dumps(result.to_dict(), indent=1) if args.json else format_plan(result))
    return 0 if result.fits else 1


def format_plan(p) -> str:
    from ..memory import format_bytes as size

    def t(seconds: float) -> str:
        for unit, span in (("h", 3600), ("min", 60)):
            if seconds >= span:
                return f"{seconds / span:.3g} {unit}"
        return f"{seconds:.3g} s"

    if p.device == "cuda":
        where = f"{p.gpus} GPU(s) x {size(p.device_memory)}"
    else:
        where = f"CPU, {size(p.device_memory)} RAM free"
    offload = f"offload to {p.offload}" if p.offload else "no offload"
    unit = "GPUs" if p.device == "cuda" else "CPU"
    lines = [
        "fastmi plan: every figure below is an estimate (the config was read; no weights were loaded)",
        f"model        {p.model} ({p.architecture}, {p.num_layers} blocks, d={p.hidden_size}): "
        f"{p.parameters / 1e9:.4g} B parameters, {p.loaded_parameters / 1e9:.4g} B loaded for extraction",
        f"hardware     {where}, {p.matmul_tflops:.3g} TFLOP/s per device ({p.hardware})",
        f"weights      estimate: {size(p.weight_bytes)} ({'bf16' if p.device == 'cuda' else 'fp32'})",
        f"placement    estimate: {p.replicas} data-parallel replica(s) x {p.devices_per_replica} {unit} each, "
        f"{offload}; "
        f"extraction batch {p.extraction_batch_size} sentences",
        f"corpus       {p.sentences:,} sentences, {p.tokens:,} tokens, "
        f"layers {p.layers[0]}-{p.layers[-1]} ({len(p.layers)})",
        f"extraction   estimate: {p.extraction_flops:.3g} FLOP, {t(p.extraction_seconds)}",
        f"cache        estimate: {size(p.cache_bytes)} on disk ({p.cache_dtype})",
        f"probe        vocab {p.vocab} (M = {p.alphabet_size:,}), {p.probe}, {p.train_softmax} softmax, {p.precision}",
        f"  per layer  estimate: {p.probe_parameters_per_layer / 1e6:.4g} M trainable parameters, "
        f"{size(p.probe_bytes_per_layer)} in training"
        + (f" (+ {size(p.probe_shared_bytes)} shared U per group)" if p.probe_shared_bytes else ""),
        f"  groups     estimate: {p.layers_per_group} layer(s) per group within {size(p.probe_budget_bytes)} "
        f"(half a device), {p.layer_groups} group(s)" + (f" over {p.gpus} GPUs" if p.gpus > 1 else ""),
        f"  per epoch  estimate: {p.probe_flops_per_epoch:.3g} FLOP, {t(p.probe_seconds_per_epoch)} "
        f"(batch {p.probe_batch_size}; early stopping ends training after a few epochs), "
        f"plus {t(p.probe_setup_seconds)} once to set the groups up",
    ]
    for alt in p.alternatives:
        label = " + ".join(f"{k.replace('_', '-')} {v}" for k, v in alt.items() if k in ("probe", "train_softmax"))
        lines.append(
            f"  with {label}: estimate {t(alt['probe_seconds_per_epoch'])} per epoch, "
            f"{alt['layers_per_group']} layer(s) per group" + ("" if alt["fits"] else ", does not fit")
        )
    lines.append("verdict      " + ("fits" if p.fits else "does NOT fit: " + "; ".join(p.problems)))
    lines += [f"advice       {tip}" for tip in p.advice]
    return "\n".join(lines)

"""Estimate what extracting and probing a model will cost, and whether it fits, before running it.

Reads only the model's config (config.json, or a GGUF file's metadata) and the corpus, never the
weights.  Prints the parameter count, the weight bytes and their placement (data-parallel replicas,
devices per replica, offload), the extraction FLOPs and time, the cache size, the probe's memory
per layer and layer groups, its FLOPs and time per epoch, and its expected total time.  Every
figure is an estimate.  Where something does not fit it says so and names the change that makes it
fit.  Examples:

    fastmi plan --model minilm --corpus demo --max-sentences 1000
    fastmi plan --model path/to/Llama-3.1-70B/config.json --sentences 100000 --mean-tokens 32 \\
        --vocab full --gpus 8 --gpu h200 --json
"""

from __future__ import annotations

import argparse
import json

from fastmi.defaults import DEFAULT_MAX_LENGTH
from fastmi.planning.gpu_presets import ACHIEVED_FRACTION, GPU_NODE_DISK_RATE, GPU_NODE_HOST_MEMORY_PER_GPU, GPU_PRESETS
from fastmi.probe.checks import PROBE_FORMS

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
    work.add_argument(
        "--max-length", type=int, default=DEFAULT_MAX_LENGTH, help="tokens per sentence (longer ones are truncated)"
    )
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
        metavar="{observed,full,top:K,min:C,auto}",
        help="alphabet of T (default: observed with --corpus, full with --sentences); auto is priced as "
        "observed plus its trial fits",
    )
    probe.add_argument(
        "--probe",
        default="auto",
        choices=PROBE_FORMS,
        help="the probe form, as fastmi probe/sweep take it: auto (the embedding and unembedding probes, "
        "the better kept per layer), embedding, linear (W z + b from 0) or unembedding (U (A z + c) + b)",
    )
    probe.add_argument(
        "--train-softmax",
        default="full",
        metavar="{full,sampled:K}",
        help="train on the full softmax, or on K sampled negatives plus the batch's bag ids (K below the "
        "alphabet's size)",
    )
    probe.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "tf32", "bf16"),
        help="the probe's matmul precision (fp32 master weights and Adam state in every case); auto, as the "
        "probe's default: bf16 on GPUs, fp32 on a CPU",
    )
    probe.add_argument(
        "--cache-dtype", default="fp32", choices=("fp32", "bf16", "fp16"), help="dtype of the pooled embeddings on disk"
    )
    hardware = parser.add_argument_group(
        "hardware (default: this machine, measured now)",
        "With --gpu, or GPUs not present here, the plan is for a GPU node, from its published or given "
        "figures and a GPU node's defaults, never from measurements of this machine.",
    )
    hardware.add_argument(
        "--gpus",
        type=int,
        default=None,
        metavar="N",
        help="GPUs to plan for; 0 plans for this CPU (default: the GPUs here, else the CPU; 1 with --gpu)",
    )
    hardware.add_argument(
        "--gpu",
        default=None,
        choices=tuple(GPU_PRESETS),
        help=f"fill --gpu-memory and --matmul-tflops from the GPU's published figures (dense bf16 peak at "
        f"{ACHIEVED_FRACTION * 100:.0f}%%; docs/scaling.md cites the datasheets)",
    )
    hardware.add_argument(
        "--gpu-memory",
        default=None,
        metavar="BYTES",
        help="memory of one GPU, e.g. 141GB or 80GiB (default: --gpu's, or read from the GPUs here)",
    )
    hardware.add_argument(
        "--matmul-tflops",
        type=float,
        default=None,
        metavar="TFLOPS",
        help="achieved dense matmul TFLOP/s of one device in the extraction dtype (bf16 on GPUs), e.g. 593 "
        "for an H200 at 60%% of its 989; measured here with one large matmul if neither this nor --gpu is given",
    )
    hardware.add_argument(
        "--host-memory",
        default=None,
        metavar="BYTES",
        help=f"host RAM for offload, e.g. 2TB (default: free RAM here; for GPUs elsewhere "
        f"{GPU_NODE_HOST_MEMORY_PER_GPU / 1e9:g} GB per GPU, as a DGX's 2 TB for 8)",
    )
    hardware.add_argument(
        "--disk-rate",
        default=None,
        metavar="BYTES/S",
        help=f"bytes/s one extracting process writes its cache files at on the target (checksum, "
        f"serialisation, write), e.g. 2GB/s (default: measured here; for GPUs elsewhere "
        f"{GPU_NODE_DISK_RATE / 1e9:g} GB/s)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the plan as JSON (the fields of fastmi.plan's result)"
    )


def run(args: argparse.Namespace) -> int:
    from fastmi.data.corpus import Corpus
    from fastmi.planning.planner import plan

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
        gpu=args.gpu,
        disk_rate=args.disk_rate,
    )
    print(json.dumps(result.to_dict(), indent=1) if args.json else format_plan(result))
    return 0 if result.fits else 1


def format_plan(p) -> str:
    from fastmi.planning.advice import counted
    from fastmi.planning.planner import PROBE_EPOCHS_SOURCE
    from fastmi.probe.memory import format_bytes as size

    unit = "GPU" if p.device == "cuda" else "CPU"
    lines = [
        "fastmi plan: every figure below is an estimate (the config was read; no weights were loaded)",
        f"model        {p.model} ({p.architecture}, {p.num_layers} blocks, d={p.hidden_size}): "
        f"{p.parameters / 1e9:.4g} B parameters, {p.loaded_parameters / 1e9:.4g} B loaded for extraction",
        _hardware_line(p),
        f"host         {size(p.host_memory)} RAM ({p.host_memory_source}); cache files written at "
        f"{size(p.disk_rate)}/s per process ({p.disk_rate_source})",
        f"weights      estimate: {size(p.weight_bytes)} ({'bf16' if p.device == 'cuda' else 'fp32'})",
        f"placement    estimate: {counted(p.replicas, 'data-parallel replica')} x "
        f"{counted(p.devices_per_replica, unit)}{' each' if p.replicas > 1 else ''}, "
        f"{f'offload to {p.offload}' if p.offload else 'no offload'}; "
        f"extraction batch {p.extraction_batch_size} sentences",
        f"corpus       {p.sentences:,} sentences, {p.tokens:,} tokens, "
        f"layers {p.layers[0]}-{p.layers[-1]} ({len(p.layers)})",
        f"extraction   estimate: {p.extraction_flops:.3g} FLOP, {duration(p.extraction_seconds)}",
        f"cache        estimate: {size(p.cache_bytes)} on disk ({p.cache_dtype})",
        f"probe        vocab {p.vocab} (M = {p.alphabet_size:,}), {p.probe}, {p.train_softmax} softmax, {p.precision}",
        f"  per layer  estimate: {p.probe_parameters_per_layer / 1e6:.4g} M trainable parameters, "
        f"{size(p.probe_bytes_per_layer)} in training"
        + (f" (+ {size(p.probe_shared_bytes)} shared U per group)" if p.probe_shared_bytes else ""),
        f"  groups     estimate: {counted(p.layers_per_group, 'layer')} per group within "
        f"{size(p.probe_budget_bytes)} (half a device), {counted(p.layer_groups, 'group')}"
        + (f" over {p.gpus} GPUs" if p.gpus > 1 else ""),
        f"  per epoch  estimate: {p.probe_flops_per_epoch:.3g} FLOP, {duration(p.probe_seconds_per_epoch)} "
        f"(batch {p.probe_batch_size}), plus {duration(p.probe_setup_seconds)} once to set the groups up",
    ]
    if p.compute_bound_batch_size != p.probe_batch_size:
        lines.append(
            f"  batch      --probe-batch-size {p.compute_bound_batch_size}: "
            f"{duration(p.compute_bound_seconds_per_epoch)} per epoch, the smallest batch at which a step's "
            "matmuls outlast its optimizer pass on this GPU (but 0.02-0.07 bit looser on the demo caches at "
            "7,200 training sentences, and more epochs: docs/performance.md)"
        )
    lines += [
        f"  in total   estimate: {duration(p.probe_expected_seconds[0])} to {duration(p.probe_expected_seconds[1])} "
        f"for {p.probe_epochs[0]}-{p.probe_epochs[1]} epochs ({PROBE_EPOCHS_SOURCE}), set-up included",
    ]
    for alt in p.alternatives:
        label = " + ".join(f"{k.replace('_', '-')} {v}" for k, v in alt.items() if k in ("probe", "train_softmax"))
        lines.append(
            f"  with {label}: estimate {duration(alt['probe_seconds_per_epoch'])} per epoch, "
            f"{counted(alt['layers_per_group'], 'layer')} per group" + ("" if alt["fits"] else ", does not fit")
        )
    lines.append("verdict      " + ("fits" if p.fits else "does NOT fit: " + "; ".join(p.problems)))
    lines += [f"advice       {tip}" for tip in p.advice]
    return "\n".join(lines)


def duration(seconds: float) -> str:
    """ "4.85 min", "40.6 s", "1.2 h": three significant figures in the largest unit that fits."""
    for unit, span in (("h", 3600), ("min", 60)):
        if seconds >= span:
            return f"{seconds / span:.3g} {unit}"
    return f"{seconds:.3g} s"


def _hardware_line(p) -> str:
    from fastmi.planning.advice import counted
    from fastmi.probe.memory import format_bytes as size

    if p.device != "cuda":  # its memory is the host's, on the next line
        return f"hardware     CPU, {p.matmul_tflops:.3g} TFLOP/s ({p.hardware})"
    gpus = f"{p.gpus} x {p.gpu}" if p.gpu else counted(p.gpus, "GPU")
    return f"hardware     {gpus}, {size(p.device_memory)} each, {p.matmul_tflops:.3g} TFLOP/s per GPU ({p.hardware})"

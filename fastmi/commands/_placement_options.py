"""Options of the commands that load a model (extract, sweep): where its weights go and how the
cache stores the embeddings; one definition, one --help text.  See docs/distributed.md."""

from __future__ import annotations

import argparse


def add_placement_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("placement and storage")
    group.add_argument(
        "--cache-dtype",
        default="fp32",
        choices=("fp32", "bf16", "fp16"),
        help="how pooled embeddings are stored (part of the cache identity; bf16/fp16 halve the "
        "disk and page-cache cost, the probe widens them to fp32)",
    )
    group.add_argument(
        "--max-memory",
        default=None,
        metavar="SIZES",
        help="let accelerate place a model larger than one device: a per-GPU size ('70GiB') or "
        "'0=70GiB,1=70GiB,cpu=200GiB' (on CPU: 'cpu=8GiB'); what does not fit goes to CPU, then disk",
    )
    group.add_argument(
        "--offload-dir", default=None, help="folder for weights offloaded to disk by accelerate (with --max-memory)"
    )
    group.add_argument(
        "--devices-per-replica",
        type=int,
        default=1,
        help="GPUs per model replica under torchrun: rank r of a node uses GPUs "
        "[r*K, (r+1)*K), so launch (GPUs per node / K) processes per node",
    )


def load_options(args: argparse.Namespace, device: str) -> dict:
    """Keyword arguments for fastmi.load_model: this rank's device(s) and accelerate's budget."""
    from fastmi.models.placement import rank_devices

    device, gpus = rank_devices(device, args.devices_per_replica)
    return {"device": device, "gpus": gpus, "max_memory": args.max_memory, "offload_dir": args.offload_dir}

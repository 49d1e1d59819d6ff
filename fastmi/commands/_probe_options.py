"""Options shared by the commands that probe (probe, sweep, demo): one definition, one --help text."""

from __future__ import annotations

import argparse


def add_probe_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("probe")
    group.add_argument(
        "--vocab",
        default="observed",
        metavar="{observed,full,top:K}",
        help="alphabet of T: token ids seen in the corpus, the whole vocabulary minus special "
        "tokens, or the K-1 most frequent ids plus one 'other' symbol (a bound on I(f(T); z) "
        "<= I(T; z), far tighter on small corpora)",
    )
    group.add_argument("--test-fraction", type=float, default=0.2, help="share of sentences held out for the bounds")
    group.add_argument("--seed", type=int, default=0, help="seed of the split, the training order and the bootstrap")
    group.add_argument("--k", type=int, default=5, help="list size of the top-k (list-decoding Fano) bound")
    group.add_argument("--level", type=float, default=0.95, help="confidence level of the lower bounds")
    group.add_argument(
        "--entropy",
        default="plugin",
        choices=("plugin", "miller_madow"),
        help="estimator of H(T) over all sentences (plug-in is biased low: conservative)",
    )
    group.add_argument("--max-epochs", type=int, default=None, help="upper bound on training epochs per layer")
    group.add_argument(
        "--probe",
        default="linear",
        choices=("linear", "unembedding"),
        help="probe form: 'linear' (logits W z + b, W trained) or 'unembedding' (logits U (A z + c) + b "
        "through the model's frozen output embedding U, stored in the cache by fastmi extract; "
        "no V x d parameters per layer, about 2/3 of the work per step)",
    )
    group.add_argument(
        "--train-softmax",
        default="full",
        metavar="{full,sampled:K}",
        type=_train_softmax,
        help="softmax used while training: the whole alphabet, or K shared sampled negatives plus "
        "the batch's own ids per step (log-Q corrected; far cheaper for 100k+ vocabularies; proposal "
        "unigram by default, or sampled:K:loguniform, sampled:K:uniform). "
        "Validation and the held-out bounds are always exact over the whole alphabet",
    )
    group.add_argument(
        "--tie-unseen",
        action="store_true",
        help="train the ids that no training bag holds as one tied row: the same problem as the full "
        "softmax (exact), and several times cheaper when most of the alphabet never occurs in training; "
        "always on with sampled:K",
    )
    group.add_argument(
        "--curve",
        nargs="?",
        const="0.125,0.25,0.5,1",
        default=None,
        metavar="FRACTIONS",
        help="also fit each layer on nested subsets of the training rows (default fractions "
        "0.125,0.25,0.5,1), all scored on the same held-out rows; adds a data_limited column",
    )
    group.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    group.add_argument(
        "--probe-memory",
        default=None,
        metavar="SIZE",
        help="memory the probe may use for one group of layers trained together, e.g. '2GiB' "
        "(default: half the free memory); under torchrun each rank trains whole groups",
    )
    group.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def _train_softmax(text: str) -> str:
    from fastmi.probe.sampled_softmax import parse_train_softmax

    try:
        parse_train_softmax(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def probe_settings(args: argparse.Namespace):
    from fastmi.probe.training import TrainConfig
    from fastmi.sweep import ProbeSettings

    options = {"tie_unseen": True} if args.tie_unseen else {}
    if args.max_epochs is not None:
        options["max_epochs"] = args.max_epochs
    train = TrainConfig(**options)
    return ProbeSettings(
        vocab=args.vocab,
        test_fraction=args.test_fraction,
        seed=args.seed,
        k=args.k,
        level=args.level,
        entropy=args.entropy,
        train=train,
        max_memory=_size(args.probe_memory),
        probe=args.probe,
        train_softmax=args.train_softmax,
        curve=_fractions(args.curve),
        device=_rank_device(args.device, getattr(args, "devices_per_replica", 1)),
    )


def _rank_device(device: str | None, devices_per_replica: int = 1) -> str | None:
    """Under torchrun on GPUs, a rank probes on the first GPU of its replica unless told otherwise."""
    import torch

    from fastmi.runtime.distributed import context

    ctx = context()
    if ctx.distributed and torch.cuda.is_available() and device in (None, "cuda"):
        return f"cuda:{ctx.local_rank * max(devices_per_replica, 1)}"
    return device


def _size(text: str | None) -> int | None:
    from fastmi.probe.memory import parse_bytes

    return None if text is None else parse_bytes(text)


def _fractions(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    from fastmi.probe.curves import check_curve

    try:
        fractions = tuple(float(f) for f in text.split(",") if f.strip())
    except ValueError:
        raise ValueError(f"--curve takes comma-separated fractions such as 0.125,0.25,0.5,1, got {text!r}") from None
    return check_curve(fractions)  # checked here, before any extraction or training

"""Options shared by the commands that probe (probe, sweep, demo): one definition, one --help text."""
from __future__ import annotations

import argparse


def add_probe_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("probe")
    group.add_argument("--vocab", default="observed", metavar="{observed,full,top:K}",
                       help="alphabet of T: token ids seen in the corpus, the whole vocabulary minus special "
                       "tokens, or the K-1 most frequent ids plus one 'other' symbol (a bound on I(f(T); z) "
                       "<= I(T; z), far tighter on small corpora)")
    group.add_argument("--test-fraction", type=float, default=0.2, help="share of sentences held out for the bounds")
    group.add_argument("--seed", type=int, default=0, help="seed of the split, the training order and the bootstrap")
    group.add_argument("--k", type=int, default=5, help="list size of the top-k (list-decoding Fano) bound")
    group.add_argument("--level", type=float, default=0.95, help="confidence level of the lower bounds")
    group.add_argument("--entropy", default="plugin", choices=("plugin", "miller_madow"),
                       help="estimator of H(T) over all sentences (plug-in is biased low: conservative)")
    group.add_argument("--max-epochs", type=int, default=None, help="upper bound on training epochs per layer")
    group.add_argument("--curve", nargs="?", const="0.125,0.25,0.5,1", default=None, metavar="FRACTIONS",
                       help="also fit each layer on nested subsets of the training rows (default fractions "
                       "0.125,0.25,0.5,1), all scored on the same held-out rows; adds a data_limited column")
    group.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    group.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def probe_settings(args: argparse.Namespace):
    from ..sweep import ProbeSettings
    from ..training import TrainConfig

    train = TrainConfig() if args.max_epochs is None else TrainConfig(max_epochs=args.max_epochs)
    return ProbeSettings(vocab=args.vocab, test_fraction=args.test_fraction, seed=args.seed, k=args.k,
                         level=args.level, entropy=args.entropy, device=args.device, train=train,
                         curve=_fractions(args.curve))


def _fractions(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    from ..curves import check_curve

    try:
        fractions = tuple(float(f) for f in text.split(",") if f.strip())
    except ValueError:
        raise ValueError(f"--curve takes comma-separated fractions such as 0.125,0.25,0.5,1, got {text!r}") from None
    return check_curve(fractions)  # checked here, before any extraction or training

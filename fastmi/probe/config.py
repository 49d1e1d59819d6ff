"""Every setting of the probe, declared once: its default, its check and its help text.

:class:`ProbeConfig` is what :func:`fastmi.recoverability` takes (``config=``, or its field names as
keywords), what a sweep keys its finished results by (:meth:`ProbeConfig.key`), and what the options of
``fastmi probe``, ``sweep`` and ``demo`` are generated from (:mod:`fastmi.commands._probe_options`).
:class:`TrainConfig`, the optimiser's settings, is its field ``train`` and is declared the same way.

A field is declared with :func:`setting`, whose metadata the CLI and the checks read:

* ``help``: the text of its command-line option;
* ``check(name, value)``: raises ValueError for a value the probe would refuse, calling the setting
  ``name`` (the field's name from Python, its flag from the command line; :mod:`fastmi.probe.checks`);
* ``flag``: the option, when not ``--field-name`` (``--probe-batch-size``: a sweep's ``--batch-size`` is
  the extraction's); ``parse``: text -> value on the command line (default: the default's type);
* ``key``: whether a sweep's result key holds it: ``"always"``; ``"unless default"`` for settings
  added after results were stored (at their default they stay out, so those results are reused);
  ``"never"`` for where the probe runs rather than what it computes (device, memory);
  ``omitted_at``: with ``"unless default"``, the value that stays out when it is not the default
  (``probe``: results were stored when "linear" was the default, so "linear" stays out and the new
  default "auto" goes in);

Nothing heavy is imported here: the CLI builds its parsers from these declarations at start-up.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from fastmi.probe import checks
from fastmi.probe.checks import (
    DEFAULT_CURVE,
    ENTROPY_METHODS,
    PRECISIONS,
    PROBE_FORMS,
    SAMPLED_ADAM,
    Check,
    check_curve,
)

__all__ = ["ProbeConfig", "TrainConfig", "setting", "check_values", "check_together", "default_of"]


def setting(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    check: Check | None = None,
    flag: str | None = None,
    parse: Callable[[str], Any] | None = None,
    metavar: str | None = None,
    choices: Sequence[str] | None = None,
    key: str = "always",
    const: Any = None,
    default_factory: Any = dataclasses.MISSING,
    omitted_at: Any = dataclasses.MISSING,
) -> Any:
    """A dataclass field with the metadata described in the module docstring; ``choices`` checks
    itself; ``const``: the value of the option given without one (``--curve``)."""
    if check is None and choices is not None:
        check = checks.one_of(tuple(choices))
    metadata = dict(
        help=help, check=check, flag=flag, parse=parse, metavar=metavar, choices=choices, key=key, const=const
    )
    metadata["omitted_at"] = default if omitted_at is dataclasses.MISSING else omitted_at
    return field(default=default, default_factory=default_factory, metadata=metadata)


def default_of(cls: type, name: str) -> Any:
    """The declared default of field ``name`` of ``cls``."""
    f = {f.name: f for f in fields(cls)}[name]
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def check_values(cls: type, values: Mapping[str, Any], name_of: Callable[[dataclasses.Field], str]) -> None:
    """Run the check of each field of ``cls`` that ``values`` holds, naming it ``name_of(field)``."""
    for f in fields(cls):
        check = f.metadata.get("check")
        if check is not None and f.name in values:
            check(name_of(f), values[f.name])


# ---- the settings ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainConfig:
    """Optimiser settings of the probe; the defaults are what converged fastest on the demo caches."""

    max_epochs: int = setting(40, help="upper bound on passes over the training rows", check=checks.positive_int)
    patience: int = setting(
        3,
        help="stop once no layer's validation cross-entropy has improved for this many epochs",
        check=checks.positive_int,
    )
    batch_size: int = setting(
        256, help="sentences per Adam step of the probe", check=checks.positive_int, flag="--probe-batch-size"
    )
    lr: float = setting(
        0.05,
        help="the probe's Adam step size, divided by sqrt(d) so that logits move by O(lr) per step whatever d is",
        check=checks.positive,
        flag="--probe-lr",
    )
    weight_decay: float = setting(
        0.0, help="decoupled (AdamW) weight decay on W; early stopping already regularises", check=checks.non_negative
    )
    embedding_decay: float = setting(
        3.0,
        help="decoupled weight decay pulling the embedding probe's W toward its start (a Gaussian prior "
        "centred on the model's embedding rows); 0 leaves early stopping as the only pull",
        check=checks.non_negative,
        key="unless default",
    )
    plateau_factor: float = setting(
        1.0,
        help="after each epoch in which a layer's validation cross-entropy did not improve, multiply that "
        "layer's step size by this (a per-layer ReduceLROnPlateau with patience 0); 1 keeps the step constant",
        check=checks.share,
        key="unless default",
    )
    min_improvement: float = setting(
        1e-4, help="validation gains (nats) below this do not reset the patience counter", check=checks.non_negative
    )
    prior_smoothing: float = setting(
        0.05,
        help="share of uniform mass mixed into the training marginal that initialises the bias",
        check=checks.share,
    )
    precision: str = setting(
        "auto",
        choices=PRECISIONS,
        help="products of the training loss: fp32, tf32, bf16 (bf16 operands, fp32 accumulation and master "
        "weights) or auto (bf16 on a GPU, fp32 on a CPU); validation and held-out scoring are always fp32",
    )
    sampled_adam: str = setting(
        "dense",
        choices=SAMPLED_ADAM,
        help="Adam's moments under sampled softmax: dense (every row's moments decay and every row moves "
        "each step, as under the full softmax; ends closest to it) or lazy (only the sampled rows move: "
        "O(S d) per step instead of O(M d))",
    )
    tie_unseen: bool | None = setting(
        None,
        parse=bool,
        check=checks.optional_bool,
        help="train the ids that no training bag holds as one tied row: the same problem as the full "
        "softmax (exact), and several times cheaper when most of the alphabet never occurs in training "
        "(linear probe only); default: on with sampled:K, off with the full softmax",
    )

    def __post_init__(self) -> None:
        check_values(TrainConfig, dataclasses.asdict(self), lambda f: f.name)


@dataclass(frozen=True)
class ProbeConfig:
    """Everything that decides what :func:`fastmi.recoverability` computes, and where it runs.

    A value is checked when the config is made; an invalid config cannot exist.  ``curve`` is kept
    as :func:`check_curve` returns it (sorted, ending with 1); ``train=None`` means the defaults.
    """

    vocab: str = setting(
        "observed",
        check=checks.vocab,
        metavar="{observed,full,top:K,min:C,auto}",
        help="alphabet of T, fixed without the held-out sentences: the token ids of the training "
        "sentences plus one 'other' symbol (its bias calibrated on validation), the whole vocabulary minus "
        "special tokens, the K-1 ids most frequent in training+validation plus 'other', the ids seen at least "
        "C times in training+validation plus 'other', or auto: the coarsest of observed, min:2, min:4, ... "
        "reached while the validation bound of a few layers improves (each a bound on I(f(T); z) <= I(T; z); "
        "coarser maps are far tighter on small corpora)",
    )
    test_fraction: float = setting(0.2, check=checks.fraction, help="share of sentences held out for the bounds")
    validation_fraction: float = setting(
        0.1,
        check=checks.fraction,
        key="unless default",
        help="share of the other sentences kept for early stopping (the probe does not train on them)",
    )
    seed: int = setting(
        0, check=checks.non_negative_int, help="seed of the split, the training order and the bootstrap"
    )
    k: int = setting(5, check=checks.positive_int, help="list size of the top-k (list-decoding Fano) bound")
    level: float = setting(0.95, check=checks.fraction, help="confidence level of the lower bounds")
    entropy: str = setting(
        "plugin",
        choices=ENTROPY_METHODS,
        help="estimator of H(f(T)) on the held-out sentences, recomputed in each bootstrap resample (plug-in "
        "is biased low: conservative)",
    )
    n_bootstrap: int = setting(
        2000,
        check=checks.resamples,
        key="unless default",
        help="bootstrap resamples behind each confidence bound",
    )
    train: TrainConfig = setting(default_factory=TrainConfig, help="the optimiser's settings (TrainConfig)")
    probe_seeds: int = setting(
        1,
        check=checks.positive_int,
        key="unless default",
        help="probes trained per layer, differing in training order (seeds seed..seed+N-1); the table gives "
        "the bounds of their seed-averaged scores with a *_seed_sd spread, and every interval includes the "
        "between-seed variance",
    )
    probe: str = setting(
        "auto",
        choices=PROBE_FORMS,
        key="unless default",
        omitted_at="linear",
        help="probe form: 'linear' (logits W z + b, W trained from 0), 'embedding' (the same, W started "
        "from the model's embedding rows at a scale chosen per layer on validation, 0 included, and pulled "
        "toward them), 'unembedding' (logits U (A z + c) + b through the model's frozen output embedding "
        "U; no V x d parameters per layer) or 'auto' (embedding and unembedding both trained, the one with "
        "the lower validation cross-entropy kept per layer, where the model's rows are at hand and the "
        "softmax is full; else linear)",
    )
    train_softmax: str = setting(
        "full",
        check=checks.train_softmax,
        key="unless default",
        metavar="{full,sampled:K}",
        help="softmax used while training: the whole alphabet, or K shared sampled negatives plus the "
        "batch's own ids per step (log-Q corrected; far cheaper for 100k+ vocabularies; proposal unigram "
        "by default, or sampled:K:loguniform, sampled:K:uniform). Validation and the held-out bounds are "
        "always exact over the whole alphabet",
    )
    curve: tuple[float, ...] | None = setting(
        None,
        check=checks.curve,
        key="unless default",
        parse=checks.parse_fractions,
        const=DEFAULT_CURVE,
        metavar="FRACTIONS",
        help="also fit each layer on nested subsets of the training rows (without a value: "
        "0.125,0.25,0.5,1), all scored on the same held-out rows; adds a data_limited column",
    )
    device: str | None = setting(
        None, check=checks.device, key="never", help="torch device (default: cuda if available, else cpu)"
    )
    max_memory: int | None = setting(
        None,
        check=checks.memory,
        key="never",
        flag="--probe-memory",
        parse=checks.parse_bytes_text,
        metavar="SIZE",
        help="memory the probe may use for one group of layers trained together, e.g. '2GiB' (default: "
        "half the free memory); under torchrun each rank trains whole groups",
    )

    def __post_init__(self) -> None:
        if self.train is None:
            object.__setattr__(self, "train", TrainConfig())
        if not isinstance(self.train, TrainConfig):
            raise TypeError(f"train must be a TrainConfig, got {type(self.train).__name__}")
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        check_values(ProbeConfig, values, lambda f: f.name)
        object.__setattr__(self, "curve", check_curve(self.curve))
        check_together(self.probe, self.train.tie_unseen, "tie_unseen", self.train_softmax)

    @classmethod
    def resolve(cls, config: ProbeConfig | None, overrides: Mapping[str, Any], caller: str) -> ProbeConfig:
        """``config`` (default: the defaults) with ``overrides``, field names of ProbeConfig; anything
        else is a TypeError naming it, as Python names an unexpected keyword argument."""
        if config is not None and not isinstance(config, cls):
            raise TypeError(
                f"{caller}() takes a ProbeConfig as its second argument, got {type(config).__name__} "
                "(pass targets=, vocab_size= and the other arguments by keyword)"
            )
        names = [f.name for f in fields(cls)]
        unknown = [name for name in overrides if name not in names]
        if unknown:
            train_names = {f.name for f in fields(TrainConfig)}
            hint = "".join(
                f"; {name} is a TrainConfig setting: train=TrainConfig({name}=...)"
                for name in unknown
                if name in train_names
            )
            raise TypeError(
                f"{caller}() got unexpected keyword argument(s) {', '.join(map(repr, unknown))}: "
                f"the probe settings are {', '.join(names)}{hint}"
            )
        base = config if config is not None else cls()
        return dataclasses.replace(base, **overrides) if overrides else base

    def key(self) -> dict[str, Any]:
        """The settings that change the numbers, as a sweep keys its finished results by them."""
        return _key_of(self)

    def make_split(self, num_rows: int, corpus_fingerprint: str | None = None):
        """The train / validation / held-out split these settings make of ``num_rows`` sentences."""
        from fastmi.data.split import Split

        return Split.make(num_rows, self.test_fraction, self.seed, self.validation_fraction, corpus_fingerprint)


def _key_of(config: Any) -> dict[str, Any]:
    key: dict[str, Any] = {}
    for f in fields(config):
        value = getattr(config, f.name)
        policy = f.metadata["key"]
        if policy == "never" or (policy == "unless default" and value == f.metadata["omitted_at"]):
            continue
        key[f.name] = _key_of(value) if dataclasses.is_dataclass(value) else value
    return key


def check_together(probe: str, tie_unseen: bool | None, tie_unseen_name: str, train_softmax: str = "full") -> None:
    """The settings that only fail together."""
    if probe == "embedding" and (tie_unseen or train_softmax != "full"):
        raise ValueError("probe 'embedding' trains with the full softmax only (no sampled:K, no tie_unseen)")
    if tie_unseen and probe not in ("linear", "auto"):  # "auto" trains the linear probe with it
        raise ValueError(
            f"{tie_unseen_name} applies to the linear probe only (unembedding logits of unseen ids differ by U)"
        )

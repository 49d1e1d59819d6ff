"""Options of the commands that probe (probe, sweep, demo), generated from the fields of
:class:`fastmi.probe.config.ProbeConfig` and :class:`fastmi.probe.config.TrainConfig`: one option per
setting, with the setting's own default, help text and check, so the three commands, the Python API
and a sweep's stored results cannot drift apart.

A setting's option is ``--field-name`` unless its declaration names another (``--probe-memory``,
``--probe-batch-size``, ``--probe-lr``); its argparse destination is the option's name.  Values are
parsed by argparse; they are checked when :func:`probe_config` makes the config, with errors that
name the option.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from fastmi.probe.config import ProbeConfig, TrainConfig, check_together, check_values, default_of


def flag(f: dataclasses.Field) -> str:
    """The command-line option of a setting."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def dest(f: dataclasses.Field) -> str:
    return flag(f)[2:].replace("-", "_")


def settings_fields() -> Iterable[tuple[type, dataclasses.Field]]:
    """Every setting: ProbeConfig's own, then TrainConfig's (``train`` itself has no option)."""
    for f in dataclasses.fields(ProbeConfig):
        if f.name != "train":
            yield ProbeConfig, f
    for f in dataclasses.fields(TrainConfig):
        yield TrainConfig, f


def add_probe_arguments(parser: argparse.ArgumentParser, defaults: Mapping[str, Any] | None = None) -> None:
    """Every probe setting as an option, and --no-progress.  ``defaults``: field names whose default
    differs in this command (the demo's alphabet, top:512)."""
    groups = {
        ProbeConfig: parser.add_argument_group("probe"),
        TrainConfig: parser.add_argument_group("probe training", "How each layer's probe is optimised."),
    }
    for cls, f in settings_fields():
        add_setting_option(groups[cls], cls, f.name, (defaults or {}).get(f.name, dataclasses.MISSING))
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def add_setting_option(
    group: Any, cls: type, name: str, default: Any = dataclasses.MISSING, help: str | None = None
) -> None:
    """The option of one setting (field ``name`` of ``cls``) in ``group``, with this command's
    ``default`` and ``help`` if given."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    meta = f.metadata
    default = default_of(cls, name) if default is dataclasses.MISSING else default
    options: dict[str, Any] = dict(dest=dest(f), default=default, help=help or meta["help"])
    parse = meta.get("parse") or (type(default) if isinstance(default, (int, float)) else None)
    if parse is bool:
        options["action"] = argparse.BooleanOptionalAction
    elif parse is not None:
        options["type"] = parse if parse in (int, float) else _argparse_type(parse)
    if meta.get("const") is not None:
        options.update(nargs="?", const=meta["const"])
    for key in ("metavar", "choices"):
        if meta.get(key) is not None:
            options[key] = meta[key]
    group.add_argument(flag(f), **options)


def check_options(args: argparse.Namespace, cls: type, names: Iterable[str]) -> None:
    """Check the options of settings ``names`` (fields of ``cls``) a command added one by one, with
    errors that name the option."""
    wanted = [f for f in dataclasses.fields(cls) if f.name in set(names)]
    check_values(cls, {f.name: getattr(args, dest(f)) for f in wanted}, flag)


def _argparse_type(parse):
    """``parse`` as an argparse type: its ValueError becomes argparse's usage error."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def probe_config(args: argparse.Namespace) -> ProbeConfig:
    """The ProbeConfig the options in ``args`` state; a value the probe would refuse is a ValueError
    naming its option (one line, before any model loads or any file is written).  Under torchrun on
    GPUs each rank probes on the first GPU of its replica unless --device says otherwise."""
    from fastmi.runtime.replicas import probe_device

    values = {cls: {} for cls in (ProbeConfig, TrainConfig)}
    for cls, f in settings_fields():
        values[cls][f.name] = getattr(args, dest(f))
    probe_values, train_values = values[ProbeConfig], values[TrainConfig]
    probe_values["device"] = probe_device(probe_values["device"], getattr(args, "devices_per_replica", 1))
    check_values(TrainConfig, train_values, flag)
    check_values(ProbeConfig, probe_values, flag)
    check_together(probe_values["probe"], train_values["tie_unseen"], "--tie-unseen", probe_values["train_softmax"])
    return ProbeConfig(train=TrainConfig(**train_values), **probe_values)

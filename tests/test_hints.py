"""The hint printed when most layers' bounds are vacuous: it names a top:K the corpus can bound."""

from __future__ import annotations

import io

from fastmi.hints import suggested_top_k, vacuous_hint
from fastmi.result import RecoverabilityResult
from fastmi.sweep import print_summary

ALL = "fano_bits,fano_lcb,list_fano_bits,list_fano_lcb,variational_bits,variational_lcb"


def result(clamped: list[str], vocab: str = "observed", M: int = 2345, n_train: int = 216) -> RecoverabilityResult:
    rows = [
        {
            "model": "m",
            "layer": i,
            "rel_depth": i / 4,
            "vocab": vocab,
            "M": M,
            "n_train": n_train,
            "H_T": 9.0,
            "variational_lcb": 0.0 if c else 0.4,
            "clamped": c,
        }
        for i, c in enumerate(clamped)
    ]
    return RecoverabilityResult(rows)


def test_most_layers_vacuous_names_top_k():
    hint = vacuous_hint(result([ALL, ALL, ALL, "fano_bits,fano_lcb", ALL]))
    assert hint.startswith("hint: no lower bound is above zero at 4 of 5 layers of m")
    assert "M=2345" in hint and "216 training sentences" in hint and "--vocab top:64" in hint


def test_informative_layers_or_a_small_alphabet_give_no_top_k():
    assert vacuous_hint(result([ALL, "fano_lcb", "fano_lcb", ""])) is None  # half vacuous: not "most"
    small = vacuous_hint(result([ALL, ALL], vocab="top:16", M=16))
    assert "top:" not in small.split("vocab=top:16")[1] and "larger corpus" in small


def test_suggestion_grows_with_the_corpus_and_is_capped():
    sizes = [suggested_top_k(n) for n in (10, 216, 720, 5000, 10**6)]
    assert sizes == sorted(sizes) and sizes[0] == 16 and sizes[-1] == 512


def test_print_summary_prints_the_hint_after_the_table():
    stream = io.StringIO()
    print_summary(result([ALL, ALL, ALL]), {}, stream=stream)
    text = stream.getvalue()
    assert text.index("vacuous") < text.index("hint: ") and "--vocab top:64" in text
    stream = io.StringIO()
    print_summary(result(["", "", ""]), {}, stream=stream)
    assert "hint" not in stream.getvalue()

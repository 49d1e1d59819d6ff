"""The hint printed when most layers' bounds are vacuous: it names a top:K the corpus can bound."""

from __future__ import annotations

import io

from fastmi.results.advice import suggested_top_k, vacuous_hint
from fastmi.results.result import RecoverabilityResult
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


# ---- every hint names a command line that works --------------------------------------------------

# The commands that print a probe's hints, with what each of them requires besides.
PRINTED_BY = {
    "probe": ["--cache", "runs/cache", "--out", "runs/probe"],
    "sweep": ["--model", "minilm", "--out", "runs/sweep"],
    "demo": [],
}


def printed_hints(capsys) -> list[str]:
    """Every hint the code prints after a probe: the epoch cap reached, and most layers vacuous."""
    from fastmi.probe.convergence import warn_seed_spread, warn_unconverged

    capsys.readouterr()
    warn_unconverged("m", [{"layer": 1, "converged": False}, {"layer": 2, "converged": True}], 40)
    unconverged = capsys.readouterr().err.strip()
    warn_seed_spread("m", [{"layer": 1, "variational_seed_sd": 0.06}], 3)
    spread = capsys.readouterr().err.strip()
    return [unconverged, vacuous_hint(result([ALL, ALL, ALL])), spread]


def test_seeds_far_apart_are_named_with_a_longer_patience(capsys):
    from fastmi.probe.convergence import SEED_SPREAD_BITS, warn_seed_spread

    rows = [
        {"layer": 0, "variational_seed_sd": 0.004},
        {"layer": 12, "variational_seed_sd": 0.064},
        {"layer": 13, "variational_seed_sd": SEED_SPREAD_BITS + 0.001},
        {"layer": 14, "variational_seed_sd": None},  # one seed: no spread
    ]
    assert warn_seed_spread("smollm2", rows, 3) == [12, 13]
    line = capsys.readouterr().err
    assert "layer(s) 12-13 (2 of 4)" in line and "0.064 bit" in line and "--patience 6" in line
    assert warn_seed_spread("smollm2", rows[:1] + rows[3:], 3) == [] and capsys.readouterr().err == ""


def hint_options(hint: str, parser) -> list[tuple[str, str | None]]:
    """The options a hint names, each with its value (None for a flag that takes none)."""
    actions = {flag: action for action in parser._actions for flag in action.option_strings}
    words = hint.split()
    options = []
    for i, word in enumerate(words):
        if word.startswith("--"):
            flag = word.rstrip(".,;:)")
            takes_value = flag in actions and actions[flag].nargs != 0
            options.append((flag, words[i + 1].rstrip(".,;:)") if takes_value else None))
    return options


def test_every_hint_names_options_its_commands_accept(capsys):
    from fastmi.cli import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    hints = printed_hints(capsys)
    assert "--max-epochs 80" in hints[0] and "--vocab top:" in hints[1]  # the hints this test is about
    assert "--patience 6" in hints[2]
    for command, required in PRINTED_BY.items():
        for hint in hints:
            options = hint_options(hint, commands[command])
            assert options, hint
            arguments = [word for option in options for word in option if word is not None]
            parsed = parser.parse_args([command, *required, *arguments])  # argparse exits on an unknown option
            for flag, value in options:
                if value is not None:
                    assert str(getattr(parsed, flag[2:].replace("-", "_"))) == value, (command, flag)


def test_demo_passes_its_probe_options_to_the_sweep(monkeypatch, tmp_path):
    import fastmi.sweep
    from fastmi.cli import main

    seen = {}

    def record(models, corpus, out, settings, **kwargs):
        seen.update(settings=settings, **kwargs)
        return result(["", "", ""])

    monkeypatch.setattr(fastmi.sweep, "sweep", record)
    assert main(["demo", "--out", str(tmp_path / "demo"), "--max-epochs", "80", "--no-progress"]) == 0
    assert seen["settings"].train.max_epochs == 80 and seen["settings"].vocab == "top:512"
    assert seen["progress"] is False and seen["overwrite"] is False

"""What a re-run of the README's findings changed: old run against new, per model and layer, and per claim.

    python bench/findings_change.py --old docs/findings/observed_10k --new runs/findings/observed \\
        [--out change.json] [--markdown change.md]

Each folder is a bench/findings_run.py output (results.json, and claims.json where claims were
tested).  Per model and layer in both runs: the variational bound and its lcb (bits), H(T), the
fraction of H(T), and new - old; per model the range of the change.  Per claim and test: old and new
verdicts, differences and intervals, and whether the verdict changed.  Layers or claims in one run
only are listed as such.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fastmi.results.result import RecoverabilityResult

COLUMNS = ("variational_bits", "variational_lcb", "variational_frac", "H_T")


def layer_changes(old: RecoverabilityResult, new: RecoverabilityResult) -> dict:
    """{model: {"layers": [...], "change_bits": [min, max], "only_old"/"only_new": [layers]}}."""

    def rows(result):
        return {(str(r["model"]), int(r["layer"])): r for r in result.table}

    before, after = rows(old), rows(new)
    models: dict[str, dict] = {}
    for key in sorted(set(before) | set(after)):
        model, layer = key
        entry = models.setdefault(model, {"layers": [], "only_old": [], "only_new": []})
        if key not in after:
            entry["only_old"].append(layer)
            continue
        if key not in before:
            entry["only_new"].append(layer)
            continue
        o, n = before[key], after[key]
        line = {"layer": layer, "probe_old": o.get("probe"), "probe_new": n.get("probe")}
        for column in COLUMNS:
            line[f"{column}_old"], line[f"{column}_new"] = float(o[column]), float(n[column])
            line[f"{column}_change"] = float(n[column]) - float(o[column])
        entry["layers"].append(line)
    for entry in models.values():
        changes = [line["variational_bits_change"] for line in entry["layers"]]
        entry["change_bits"] = [min(changes), max(changes)] if changes else None
    return models


def claim_changes(old: list[dict], new: list[dict]) -> list[dict]:
    """Per claim (by name) and test (by label): old and new verdict, difference and interval."""
    before = {c["name"]: c for c in old}
    out = []
    for claim in new:
        was = before.pop(claim["name"], None)
        tests_old = {t["label"]: t for t in (was or {}).get("tests", [])}
        tests = []
        for test in claim.get("tests", []):
            t_old = tests_old.get(test["label"])
            tests.append(
                {
                    "label": test["label"],
                    "old": None if t_old is None else _test(t_old),
                    "new": _test(test),
                    "changed": t_old is None or t_old["verdict"] != test["verdict"],
                }
            )
        out.append(
            {
                "name": claim["name"],
                "verdict_old": None if was is None else was["verdict"],
                "verdict_new": claim["verdict"],
                "changed": was is None or was["verdict"] != claim["verdict"],
                "tests": tests,
            }
        )
    out += [
        {"name": name, "verdict_old": c["verdict"], "verdict_new": None, "changed": True} for name, c in before.items()
    ]
    return out


def _test(test: dict) -> dict:
    return {k: test[k] for k in ("difference", "lower", "upper", "level", "verdict") if k in test}


def markdown(change: dict) -> str:
    lines = []
    for model, entry in change["layers"].items():
        lines += [
            f"**{model}**: variational bound, new - old, {_range(entry['change_bits'])} bits",
            "",
            "| layer | probe (old → new) | H(T) old → new | bound old → new (bits) | change | lcb old → new |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for x in entry["layers"]:
            lines.append(
                f"| {x['layer']} | {x['probe_old']} → {x['probe_new']} | {x['H_T_old']:.3f} → {x['H_T_new']:.3f} | "
                f"{x['variational_bits_old']:.3f} → {x['variational_bits_new']:.3f} | "
                f"{x['variational_bits_change']:+.3f} | "
                f"{x['variational_lcb_old']:.3f} → {x['variational_lcb_new']:.3f} |"
            )
        lines.append("")
    for claim in change["claims"]:
        mark = " (changed)" if claim["changed"] else ""
        lines.append(f"- *{claim['name']}*: {claim['verdict_old']} → **{claim['verdict_new']}**{mark}")
        for test in claim.get("tests", []):
            if test["changed"]:
                old = test["old"] or {}
                lines.append(
                    f"  - {test['label']}: {old.get('verdict')} {_interval(old)} → "
                    f"{test['new']['verdict']} {_interval(test['new'])}"
                )
    return "\n".join(lines) + "\n"


def _range(pair) -> str:
    return "n/a" if not pair else f"{pair[0]:+.3f} to {pair[1]:+.3f}"


def _interval(test: dict) -> str:
    if not test or "difference" not in test:
        return ""
    return f"{test['difference']:+.3f} [{test['lower']:+.3f}, {test['upper']:+.3f}]"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", type=Path, required=True, help="the earlier bench/findings_run.py folder")
    parser.add_argument("--new", type=Path, required=True, help="the re-run's folder")
    parser.add_argument("--out", type=Path, help="write the change as JSON")
    parser.add_argument("--markdown", type=Path, help="write the change as markdown")
    args = parser.parse_args(argv)
    old = RecoverabilityResult.from_json(args.old / "results.json")
    new = RecoverabilityResult.from_json(args.new / "results.json")
    claims = [
        json.loads((d / "claims.json").read_text()) if (d / "claims.json").is_file() else []
        for d in (args.old, args.new)
    ]
    change = {
        "old": str(args.old),
        "new": str(args.new),
        "layers": layer_changes(old, new),
        "claims": claim_changes(*claims),
    }
    if args.out:
        args.out.write_text(json.dumps(change, indent=2) + "\n")
    text = markdown(change)
    if args.markdown:
        args.markdown.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

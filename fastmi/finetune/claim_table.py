"""The third claim's table and verdict from its runs' per-sentence evaluations (docs/finetune.md).

Each run (one lambda, one seed) has an evaluation: per outcome and layer, the held-out items it was
scored on (``rows``) and one value per item (``values``, and for a per-token loss the items'
``weights``).  :func:`claim_table` contrasts every lambda > 0 with the control (lambda = 0), paired
on seed and item, with the seed x sentence interval of :mod:`fastmi.stats.seeded_bootstrap`:

* the verdict's family (E1 at the tuned layer; D1 and D2 at the tuned and the last layer, those
  present) x the lambdas > 0, each interval at the Bonferroni level 1 - alpha / (family size);
* reported beside it, outside the family: E1 at the last layer and the own loss O at 1 - alpha,
  and E2 at every layer at 1 - alpha / (its layers), over the seeds whose runs hold E2 in every arm
  (the plan may run E2, the most costly outcome, on some seeds only; its rows name them);

and reads the verdict off the family (:func:`fastmi.finetune.verdict.claim_verdict`).

An evaluation is a dict (bench/finetune_claim.py writes one JSON per run)::

    {"lambda": 1.0, "seed": 0, "model": "minilm", "steps": 2000, "train_sentences": 14988,
     "tuned_layer": 3, "last_layer": 6,
     "outcomes": {"E1": {"3": {"rows": [...], "values": [...]}, "6": {...}},
                  "D1": {...}, "D2": {...}, "E2": {"0": ..., ..., "6": ...},
                  "O": {"all": {"rows": [...], "values": [...], "weights": [...]}}}}
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fastmi.finetune.verdict import claim_verdict
from fastmi.stats.seeded_bootstrap import bonferroni_level, two_level_interval

__all__ = ["claim_table", "format_claim_table", "FAMILY_OUTCOMES"]

FAMILY_OUTCOMES = (("E1", "tuned"), ("D1", "tuned"), ("D1", "last"), ("D2", "tuned"), ("D2", "last"))
REPORTED_OUTCOMES = (("E1", "last"), ("O", "all"))
OBJECTIVE = "E1@tuned"
UNITS = {"E1": "bits", "E2": "bits", "D1": "accuracy", "D2": "accuracy", "O": "nats/token"}


def _layer_key(evaluation: dict, where: str) -> str:
    """The key of ``where`` in the run's outcome: "tuned" and "last" are the run's layers, anything
    else ("all", or an E2 layer) is the key itself."""
    if where == "tuned":
        return str(int(evaluation["tuned_layer"]))
    if where == "last":
        return str(int(evaluation["last_layer"]))
    return where


def _by_arm(evaluations: Sequence[dict]) -> dict[float, dict[int, dict]]:
    arms: dict[float, dict[int, dict]] = {}
    for evaluation in evaluations:
        lam, seed = float(evaluation["lambda"]), int(evaluation["seed"])
        if seed in arms.setdefault(lam, {}):
            raise ValueError(f"two evaluations of lambda {lam:g}, seed {seed}")
        arms[lam][seed] = evaluation
    if 0.0 not in arms:
        raise ValueError("no control: the contrasts need the runs of lambda 0")
    if len(arms) < 2:
        raise ValueError("no lambda > 0: nothing to contrast with the control")
    return arms


def _seed_matrix(runs: list[dict], outcome: str, where: str) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """[S, N] values of ``outcome`` at ``where`` over ``runs`` (in seed order), their weights, their rows."""
    values, rows, weights = [], None, None
    for run in runs:
        entry = run["outcomes"][outcome][_layer_key(run, where)]
        these = np.asarray(entry["rows"], dtype=np.int64)
        if rows is None:
            rows = these
            weights = None if entry.get("weights") is None else np.asarray(entry["weights"], dtype=np.float64)
        elif not np.array_equal(rows, these):
            raise ValueError(
                f"{outcome} at {where}: lambda {run['lambda']:g} seed {run['seed']} was scored on other items"
            )
        values.append(np.asarray(entry["values"], dtype=np.float64))
    return np.stack(values), weights, rows


def _contrast(treated: list[dict], control: list[dict], outcome, where, level, n_bootstrap, seed) -> dict:
    a, weights, rows_a = _seed_matrix(treated, outcome, where)
    b, weights_b, rows_b = _seed_matrix(control, outcome, where)
    if not np.array_equal(rows_a, rows_b):
        raise ValueError(f"{outcome} at {where}: the arm and the control were scored on other items")
    if weights is not None and (weights_b is None or not np.allclose(weights, weights_b)):
        raise ValueError(f"{outcome} at {where}: the arm and the control weigh the items differently")
    interval = two_level_interval(a, b, level=level, n_bootstrap=n_bootstrap, seed=seed, weights=weights)
    return {"control": float(b.mean()) if weights is None else _weighted(b, weights), **interval.to_dict()}


def _weighted(values: np.ndarray, weights: np.ndarray) -> float:
    return float((values @ weights / weights.sum()).mean())


def _present(runs: list[dict], outcome: str) -> bool:
    return all(outcome in run["outcomes"] for run in runs)


def claim_table(evaluations: Sequence[dict], alpha: float = 0.05, n_bootstrap: int = 10_000, seed: int = 0) -> dict:
    """The table (a list of rows, one per lambda > 0 and outcome) and the verdict; see the module."""
    arms = _by_arm(evaluations)
    seeds = sorted(arms[0.0])
    for lam, runs in arms.items():
        if sorted(runs) != seeds:
            raise ValueError(
                f"lambda {lam:g} has seeds {sorted(runs)}, the control {seeds}: the contrasts pair on seed"
            )
    runs_of = {lam: [arms[lam][s] for s in seeds] for lam in arms}
    everything = [run for runs in runs_of.values() for run in runs]
    lambdas = sorted(lam for lam in arms if lam > 0)
    family = [(o, w) for o, w in FAMILY_OUTCOMES if _present(everything, o)]
    if not any(o != "E1" for o, _ in family) or ("E1", "tuned") not in family:
        raise ValueError(
            f"the verdict needs E1 and a downstream outcome; the evaluations hold {sorted(everything[0]['outcomes'])}"
        )
    family_level = bonferroni_level(alpha, len(family) * len(lambdas))
    reported = [(o, w) for o, w in REPORTED_OUTCOMES if _present(everything, o)]
    e2_seeds = [i for i in range(len(seeds)) if all("E2" in runs_of[lam][i]["outcomes"] for lam in arms)]
    e2_layers = sorted(runs_of[0.0][e2_seeds[0]]["outcomes"]["E2"], key=int) if e2_seeds else []

    rows, contrasts = [], {}
    for lam in lambdas:
        treated, control = runs_of[lam], runs_of[0.0]
        plan = [(o, w, family_level, True) for o, w in family] + [(o, w, 1 - alpha, False) for o, w in reported]
        plan += [("E2", layer, bonferroni_level(alpha, len(e2_layers)), False) for layer in e2_layers]
        for outcome, where, level, in_family in plan:
            which = e2_seeds if outcome == "E2" else range(len(seeds))
            arm, base = [treated[i] for i in which], [control[i] for i in which]
            entry = _contrast(arm, base, outcome, where, level, n_bootstrap, seed)
            layer = _layer_key(treated[0], where)
            rows.append(
                {
                    "lambda": lam,
                    "outcome": outcome,
                    "where": where,
                    "layer": layer,
                    "unit": UNITS[outcome],
                    "in_family": in_family,
                    "training_seeds": [seeds[i] for i in which],
                    **entry,
                }
            )
            if in_family:
                contrasts.setdefault(lam, {})[f"{outcome}@{where}"] = entry
    verdict = claim_verdict(contrasts, objective=OBJECTIVE)
    return {
        "alpha": alpha,
        "family": [f"{o}@{w}" for o, w in family],
        "family_size": len(family) * len(lambdas),
        "family_level": family_level,
        "n_bootstrap": n_bootstrap,
        "rows": rows,
        "verdict": {"wording": verdict.wording, "reason": verdict.reason, "scale": _scale(everything, lambdas, seeds)},
    }


def _scale(runs: list[dict], lambdas: list[float], seeds: list[int]) -> str:
    """What was tested, in the verdict's words: the model, lambdas, seeds, tuning sentences, steps."""

    def one(key: str) -> str:
        values = sorted({str(run.get(key)) for run in runs})
        return values[0] if len(values) == 1 else "/".join(values)

    return (
        f"{one('model')}, lambda {', '.join(f'{lam:g}' for lam in lambdas)} against 0, "
        f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''}, "
        f"{one('train_sentences')} tuning sentences, {one('steps')} steps"
    )


def format_claim_table(table: dict) -> str:
    """Markdown: one line per lambda and outcome, the verdict's family first, then the verdict."""
    lines = [
        "| lambda | outcome | layer | seeds | control | change (arm - control) | interval | level "
        "| in the verdict's family |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in table["rows"]:
        lines.append(
            f"| {row['lambda']:g} | {row['outcome']} ({row['unit']}) | {row['layer']} | "
            f"{','.join(map(str, row['training_seeds']))} | {row['control']:.4f} | "
            f"{row['point']:+.4f} | [{row['low']:+.4f}, {row['high']:+.4f}] | {row['level']:.4f} | "
            f"{'yes' if row['in_family'] else 'no'} |"
        )
    verdict = table["verdict"]
    lines += ["", f"**Verdict: {verdict['wording']}** ({verdict['scale']}): {verdict['reason']}."]
    return "\n".join(lines)

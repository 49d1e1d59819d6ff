"""A plan of the third claim's runs: every arm (lambda) x seed of every model as one `fastmi finetune`.

A plan is JSON (or built from arguments, :func:`make_plan`)::

    {"out": "runs/claim", "models": ["minilm"], "lambdas": [0, 0.1, 0.3, 1, 3], "seeds": [0, 1, 2],
     "steps": 200, "split": {"seed": 0, "tune_fraction": 0.4, "probe_fraction": 0.3},
     "finetune": {"corpus": "demo", "max-sentences": 2000, "layers": "3", "full": true, "lr": 5e-5}}

Each run writes OUT/<model>/lambda-<lambda>-seed-<seed>.  A run is *done* when its OUT/finetune.json is
there (written last, atomically), *interrupted* when it was started (OUT/finetune_config.json) and not
finished, else *todo*.  :func:`run_plan` runs the runs not done in the plan's order; an interrupted one
is the same command again, which resumes from its last complete checkpoint (fastmi.finetune.run).
Several processes share a plan by taking disjoint runs (``worker=(k, n)``: the k-th of every n runs
in the plan's order), so that one machine's cores, or several machines over one folder, run it at once.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["make_plan", "load_plan", "plan_runs", "run_status", "run_plan"]

DEFAULT_LAMBDAS = (0.0, 0.1, 0.3, 1.0, 3.0)
DEFAULT_SEEDS = (0, 1, 2)


def make_plan(
    out: str,
    models: Sequence[str],
    lambdas: Sequence[float] = DEFAULT_LAMBDAS,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    steps: int = 200,
    split: dict | None = None,
    finetune: dict | None = None,
) -> dict:
    """A plan (the JSON's contents); ``finetune``: further `fastmi finetune` options by name (without
    the dashes; ``True`` for a flag such as ``full``)."""
    plan = {
        "out": str(out),
        "models": list(models),
        "lambdas": [float(x) for x in lambdas],
        "seeds": [int(x) for x in seeds],
        "steps": int(steps),
        "split": {"seed": 0, "tune_fraction": 0.4, "probe_fraction": 0.3, **(split or {})},
        "finetune": dict(finetune or {}),
    }
    _check(plan)
    return plan


def load_plan(path: str | Path) -> dict:
    plan = json.loads(Path(path).read_text())
    return make_plan(
        **{k: plan[k] for k in plan if k in ("out", "models", "lambdas", "seeds", "steps", "split", "finetune")}
    )


def _check(plan: dict) -> None:
    from fastmi.finetune.split import check_fractions

    if not plan["models"] or not plan["lambdas"] or not plan["seeds"]:
        raise ValueError("a plan needs at least one model, one lambda and one seed")
    if any(not lam >= 0 for lam in plan["lambdas"]):
        raise ValueError(f"lambdas must be >= 0, got {plan['lambdas']}")
    if plan["steps"] < 1:
        raise ValueError(f"steps must be >= 1, got {plan['steps']}")
    check_fractions(plan["split"]["tune_fraction"], plan["split"]["probe_fraction"])
    reserved = {"model", "out", "lambda", "seed", "steps", "tune-fraction", "probe-fraction", "split-seed"}
    if reserved & {k.replace("_", "-") for k in plan["finetune"]}:
        raise ValueError(f"the plan sets {sorted(reserved)} itself; leave them out of 'finetune'")


def plan_runs(plan: dict) -> list[dict]:
    """Each run of the plan: ``{"model", "lambda", "seed", "out", "args"}``, args those of `fastmi finetune`."""
    from fastmi.sweep import model_slug

    runs = []
    split = plan["split"]
    for model in plan["models"]:
        for seed in plan["seeds"]:
            for lam in plan["lambdas"]:
                out = Path(plan["out"]) / model_slug(model) / f"lambda-{lam:g}-seed-{seed}"
                args = ["--model", str(model), "--out", str(out), "--lambda", repr(float(lam)), "--seed", str(seed)]
                args += ["--steps", str(plan["steps"]), "--split-seed", str(split["seed"])]
                args += ["--tune-fraction", repr(float(split["tune_fraction"]))]
                args += ["--probe-fraction", repr(float(split["probe_fraction"]))]
                for key, value in plan["finetune"].items():
                    flag = "--" + key.replace("_", "-")
                    if value is True:
                        args.append(flag)
                    elif value is not False and value is not None:
                        args += [flag, str(value)]
                runs.append({"model": model, "lambda": float(lam), "seed": int(seed), "out": str(out), "args": args})
    return runs


def run_status(out: str | Path) -> str:
    """'done' (OUT/finetune.json complete), 'interrupted' (started, not finished) or 'todo'."""
    out = Path(out)
    finished = out / "finetune.json"
    if finished.is_file():
        try:
            if "config" in json.loads(finished.read_text()):
                return "done"
        except (OSError, ValueError):
            pass
    return "interrupted" if (out / "finetune_config.json").is_file() else "todo"


def _subprocess_runner(args: list[str]) -> int:
    return subprocess.call([sys.executable, "-m", "fastmi", "finetune", *args])


def run_plan(
    plan: dict,
    max_runs: int | None = None,
    runner: Callable[[list[str]], int] = _subprocess_runner,
    say: Callable[[str], Any] = print,
    worker: tuple[int, int] = (0, 1),
) -> list[dict]:
    """Run the plan's runs that are not done, in order (at most ``max_runs``); stop at a failed one.
    ``worker=(k, n)``: only the runs at positions k, k + n, k + 2n, ... of the plan (0 <= k < n).
    Returns the runs started, each with its exit code."""
    k, n = worker
    if not 0 <= k < n:
        raise ValueError(f"worker {k}/{n}: needs 0 <= k < n")
    started = []
    for run in plan_runs(plan)[k::n]:
        if max_runs is not None and len(started) >= max_runs:
            break
        status = run_status(run["out"])
        if status == "done":
            continue
        say(f"{'resuming' if status == 'interrupted' else 'running'} {run['out']}")
        code = runner(run["args"])
        started.append({**run, "code": code})
        if code != 0:
            say(f"{run['out']} failed (exit code {code}); stopping")
            break
    return started

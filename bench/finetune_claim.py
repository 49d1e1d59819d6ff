"""The paper's third claim on this CPU (docs/finetune.md): does fine-tuning with lambda *
recoverability improve a model on a task it was never supervised on?

Compares a base model, a control run (lambda = 0) and a treatment run (lambda > 0) of
``fastmi finetune`` (same steps, data and seed) on the held-out sentences of the demo split:

(a) per-layer bounds: ``fastmi.sweep`` over the three models (fresh probes, top:512 alphabet);
(b) BBC News topic (5 labels): logistic regression on frozen mean-pooled embeddings, train rows ->
    held-out accuracy, at the tuned layer and the last layer, with bootstrap and paired intervals;
(c) the model's own held-out loss (causal LM, or masked LM on fixed seeded masks).

When the runs were made with ``fastmi finetune --tune-fraction`` (the three-way split of
fastmi/finetune/split.py, recorded in their finetune.json), (a)-(c) use the probe and held-out parts
alone: the sweep's and the topic probes are fitted on the probe part and scored on the held-out part,
and no tuning sentence is seen by an evaluation probe.  Otherwise the sweep's own split is used.

Plan mode lists (and with --run, runs) every arm x seed of the experiment as a resumable
``fastmi finetune`` run (fastmi/finetune/plan.py): done ones are skipped, interrupted ones resumed:

    python bench/finetune_claim.py --plan PLAN.json [--run [--max-runs N] [--worker K/N]]
    python bench/finetune_claim.py --models minilm --lambdas 0,0.1,0.3,1,3 --seeds 0,1,2 --steps 200 \
        --plan-out RUNS/claim --finetune-options '{"layers": "3", "full": true, "lr": 5e-5}' [--run]

With --evaluate, every finished run of the plan is scored on every outcome of the pre-stated plan
(E1, E2, D1, D2, O; fastmi/finetune/claim_evaluation.py), one JSON of per-sentence values per run
under --work; with --aggregate, those JSONs become the claim's table (per lambda: each outcome's change
against the control with two-level seed x sentence intervals, the verdict's family Bonferroni-adjusted)
and the verdict (fastmi/finetune/claim_table.py), written to --report as claim_table.json / .md:

    python bench/finetune_claim.py --plan PLAN.json --evaluate --work RUNS/claim-eval
    python bench/finetune_claim.py --plan PLAN.json --aggregate --work RUNS/claim-eval --report docs/finetune

In the three-model mode below, (a) is E2 (the sweep's setting) and E1, the term's own quantity at the
tuned and the last layer (fastmi/finetune/objective_bound.py), is reported beside it.

Every stage writes JSON under --work and is reused when run again; each run appends its figures
(bounds, topic accuracy, LM loss, training seconds) as one row to bench/results/finetune_claim.jsonl
(bench/history.py).  Usage:

    python bench/finetune_claim.py --family minilm --base minilm --control RUNS/minilm-control \\
        --treatment RUNS/minilm-treat --tuned-layer 3 --work RUNS/eval-minilm --report docs/finetune
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    plan = p.add_argument_group("plan mode")
    plan.add_argument("--plan", help="a plan JSON (fastmi/finetune/plan.py)")
    plan.add_argument("--models", help="comma-separated models: a plan from arguments")
    plan.add_argument("--lambdas", default="0,0.1,0.3,1,3")
    plan.add_argument("--seeds", default="0,1,2")
    plan.add_argument("--steps", type=int, default=200)
    plan.add_argument("--plan-out", default="runs/claim", help="root of the runs' output folders")
    plan.add_argument("--finetune-options", default="{}", help="JSON: further fastmi finetune options")
    plan.add_argument("--run", action="store_true", help="run the runs not done yet (else: list them)")
    plan.add_argument("--max-runs", type=int, default=None, help="with --run: at most this many")
    plan.add_argument(
        "--worker",
        type=worker_share,
        default=(0, 1),
        metavar="K/N",
        help="with --run: only every N-th run of the plan from the K-th (0-based), so N processes share it",
    )
    plan.add_argument("--evaluate", action="store_true", help="score the finished runs, one JSON each under --work")
    plan.add_argument("--aggregate", action="store_true", help="the table and verdict from --work into --report")
    plan.add_argument("--d2-max-sentences", type=int, default=None, help="with --evaluate: cap D2's snippets")
    plan.add_argument(
        "--e2-seeds",
        type=seed_set,
        default=None,
        help="with --evaluate: comma-separated training seeds whose runs get E2, the costliest outcome "
        "(default: every run's); the table contrasts E2 over the seeds that have it in every arm",
    )
    plan.add_argument("--resamples", type=int, default=10_000, help="with --aggregate: bootstrap resamples")
    p.add_argument("--family", help="a name for the report (minilm, smollm2)")
    p.add_argument("--base")
    p.add_argument("--control", help="fastmi finetune output with --lambda 0")
    p.add_argument("--treatment", help="fastmi finetune output with --lambda > 0")
    p.add_argument("--tuned-layer", type=int)
    p.add_argument("--layers", default="all", help="layers of the sweep")
    p.add_argument("--work", help="sweep output and stage results")
    p.add_argument("--report", help="directory for <family>.json and <family>.png")
    p.add_argument("--max-sentences", type=int, default=1000)
    p.add_argument("--max-length", type=int, default=48)
    args = p.parse_args(argv)
    if args.plan or args.models:
        return plan_main(args)
    missing = [
        name
        for name in ("family", "base", "control", "treatment", "tuned_layer", "work", "report")
        if getattr(args, name) is None
    ]
    if missing:
        p.error("evaluation needs --" + ", --".join(m.replace("_", "-") for m in missing) + " (or --plan / --models)")
    evaluate(args)
    return 0


def worker_share(text: str) -> tuple[int, int]:
    """``K/N`` as (K, N), 0 <= K < N."""
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected K/N, e.g. 0/2") from None
    if not 0 <= k < n:
        raise argparse.ArgumentTypeError(f"{text!r}: needs 0 <= K < N")
    return k, n


def seed_set(text: str) -> set[int]:
    """``0,2`` as {0, 2}."""
    try:
        return {int(x) for x in text.split(",")}
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated seeds, e.g. 0 or 0,1") from None


def plan_main(args) -> int:
    """List the plan's runs with their state; with --run, run those not done."""
    from fastmi.finetune.plan import load_plan, make_plan, plan_runs, run_plan, run_status

    if args.plan:
        plan = load_plan(args.plan)
    else:
        plan = make_plan(
            args.plan_out,
            args.models.split(","),
            [float(x) for x in args.lambdas.split(",")],
            [int(x) for x in args.seeds.split(",")],
            args.steps,
            finetune=json.loads(args.finetune_options),
        )
    runs = plan_runs(plan)
    for run in runs:
        print(f"{run_status(run['out']):12s} {run['out']}")
    left = sum(run_status(run["out"]) != "done" for run in runs)
    print(f"{len(runs) - left} of {len(runs)} runs done, {left} left")
    code = 0
    if args.run:
        started = run_plan(plan, max_runs=args.max_runs, worker=args.worker)
        code = max((run["code"] for run in started), default=0)
    if code == 0 and (args.evaluate or args.aggregate) and not args.work:
        raise SystemExit("--evaluate and --aggregate need --work (where the runs' evaluations are kept)")
    if code == 0 and args.evaluate:
        evaluate_plan(plan, runs, Path(args.work), args.d2_max_sentences, args.e2_seeds)
    if code == 0 and args.aggregate:
        if not args.report:
            raise SystemExit("--aggregate needs --report (where the table and the verdict are written)")
        aggregate_plan(plan, runs, Path(args.work), Path(args.report), args.resamples)
    return code


def evaluation_path(plan: dict, run: dict, work: Path) -> Path:
    """Where a run's evaluation is kept: the run's place under the plan's root, moved under ``work``."""
    return work / Path(run["out"]).relative_to(plan["out"]) / "evaluation.json"


def evaluate_plan(
    plan: dict, runs: list[dict], work: Path, d2_max_sentences: int | None = None, e2_seeds: set[int] | None = None
) -> None:
    """Score every finished run not scored yet; a run's evaluation is written last, whole, so an
    interrupted evaluation starts that run again (its caches and probes are reused).  ``e2_seeds``:
    the training seeds whose runs get E2 (None: every run)."""
    from fastmi.finetune.claim_evaluation import evaluate_run
    from fastmi.finetune.plan import run_status
    from fastmi.runtime.files import atomic_write_text

    for run in runs:
        path = evaluation_path(plan, run, work)
        if path.is_file() or run_status(run["out"]) != "done":
            continue
        print(f"evaluating {run['out']}")
        e2 = e2_seeds is None or run["seed"] in e2_seeds
        evaluation = evaluate_run(run["out"], path.parent, run["lambda"], run["seed"], d2_max_sentences, e2=e2)
        atomic_write_text(path, json.dumps(evaluation))


def aggregate_plan(plan: dict, runs: list[dict], work: Path, report: Path, resamples: int = 10_000) -> dict:
    """The claim's table and verdict from the evaluations under ``work`` (one model at a time)."""
    from fastmi.finetune.claim_table import claim_table, format_claim_table

    report.mkdir(parents=True, exist_ok=True)
    tables = {}
    for model in dict.fromkeys(run["model"] for run in runs):
        mine = [run for run in runs if run["model"] == model]
        paths = [evaluation_path(plan, run, work) for run in mine]
        missing = [str(path) for path in paths if not path.is_file()]
        if missing:
            raise SystemExit(f"{len(missing)} of {len(paths)} runs of {model} are not evaluated yet: {missing[0]} ...")
        table = claim_table([json.loads(path.read_text()) for path in paths], n_bootstrap=resamples)
        name = Path(mine[0]["out"]).parent.name
        (report / f"claim_table_{name}.json").write_text(json.dumps(table, indent=2))
        (report / f"claim_table_{name}.md").write_text(format_claim_table(table) + "\n")
        print(format_claim_table(table))
        tables[model] = table
    return tables


def evaluation_data(treatment: str, max_sentences: int):
    """``(corpus, split, rows)``: with a three-way split recorded by the runs, the probe and held-out
    parts and a Split whose held-out rows are the held-out part; else the demo corpus, no split (the
    sweep makes its own) and every row."""
    from fastmi.data.corpus import Corpus
    from fastmi.finetune.split import claim_split, evaluation_split

    corpus = Corpus.load("demo", max_sentences=max_sentences)
    record = json.loads((Path(treatment) / "finetune.json").read_text()).get("claim_split")
    if not record:
        return corpus, None, np.arange(len(corpus))
    if record["corpus"] != corpus.fingerprint:
        raise ValueError("the runs were tuned on another corpus (or another --max-sentences) than this evaluation's")
    parts = claim_split(record["num_rows"], record["seed"], record["tune_fraction"], record["probe_fraction"])
    return evaluation_split(corpus.sentences, parts)


def evaluate(args) -> None:
    from fastmi.data.split import Split
    from fastmi.probe.config import ProbeConfig
    from fastmi.sweep import sweep

    work, report = Path(args.work), Path(args.report)
    report.mkdir(parents=True, exist_ok=True)
    arms = {"base": args.base, "control": args.control, "treatment": args.treatment}
    corpus, three_way, rows = evaluation_data(args.treatment, args.max_sentences)
    settings = ProbeConfig(vocab="top:512")
    if three_way is not None:  # the sweep reads OUT/split.json: the held-out part, probes on the probe part
        three_way.save(work / "split.json")
        settings = ProbeConfig(vocab="top:512", seed=three_way.seed, test_fraction=three_way.test_fraction)
    result = sweep(
        list(arms.values()),
        corpus,
        work,
        settings=settings,
        max_length=args.max_length,
        layers=args.layers,
        progress=False,
    )
    split = Split.load(work / "split.json")
    kind = json.loads((Path(args.treatment) / "finetune.json").read_text())["kind"]

    bounds = {}
    names = list(dict.fromkeys(str(r["model"]) for r in result.table))  # the sweep keeps the models' order
    for arm, name in zip(arms, names):
        table_rows = [r for r in result.table if str(r["model"]) == name]
        bounds[arm] = {
            int(r["layer"]): {
                k: r[k]
                for k in ("variational_bits", "variational_lcb", "list_fano_bits", "list_fano_lcb", "ce_bits", "H_T")
            }
            for r in table_rows
        }
    bounds["paired"] = paired_bounds(result, dict(zip(arms, names)))
    last_layer = max(bounds["base"])
    topics = stage(
        work / "topics.json",
        lambda: topic_stage(arms, work, split, args, [args.tuned_layer, last_layer], rows, three_way is not None),
    )
    lm = stage(work / "lm_loss.json", lambda: lm_stage(arms, corpus, split, kind, args))
    objective = stage(
        work / "objective_bound.json",
        lambda: objective_stage(arms, corpus, split, args, [args.tuned_layer, last_layer], work),
    )
    summary = {
        "family": args.family,
        "kind": kind,
        "tuned_layer": args.tuned_layer,
        "last_layer": last_layer,
        "runs": {arm: _run_info(spec) for arm, spec in arms.items()},
        "bounds": bounds,  # E2: the sweep's setting
        "objective_bound": objective,  # E1: the term's own quantity
        "topics": topics,
        "lm_loss": lm,
        "n_train": int(split.train.size),
        "n_test": int(split.test.size),
        "three_way_split": three_way is not None,
    }
    (report / f"{args.family}.json").write_text(json.dumps(summary, indent=2))
    plot(summary, report / f"{args.family}.png")
    print(json.dumps({k: summary[k] for k in ("objective_bound", "topics", "lm_loss")}, indent=2))
    record_history(summary)


def record_history(summary: dict) -> None:
    """The report's figures as a row of the bench's history (the runs' configs stay in the report)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import history

    figures = {key: value for key, value in summary.items() if key != "runs"}
    figures["train_runtime_s"] = {arm: run.get("train_runtime_s") for arm, run in summary["runs"].items()}
    history.record("finetune_claim", figures, source="bench/finetune_claim.py")


def stage(path: Path, make):
    if path.is_file():
        return json.loads(path.read_text())
    value = make()
    path.write_text(json.dumps(value, indent=2))
    return value


def _run_info(spec: str) -> dict:
    done = Path(spec) / "finetune.json"
    if not done.is_file():
        return {"model": spec}
    info = json.loads(done.read_text())
    return {"config": info["config"], "train_runtime_s": info.get("train_runtime_s"), "last_log": info.get("last_log")}


def paired_bounds(result, names: dict[str, str]) -> dict:
    """(a) with intervals: per layer, treatment - control and treatment - base of the variational
    bound, paired over the held-out sentences that every model of the sweep shares (fastmi.compare)."""
    from fastmi.stats.comparison import compare

    out = {}
    for a, b in (("treatment", "control"), ("treatment", "base"), ("control", "base")):
        comparison = compare(result, names[a], names[b], bounds_to_compare=("variational",))
        out[f"{a}-{b}"] = {
            str(row["a_layer"]): [row["difference"], row["lower"], row["upper"]]
            for row in comparison.rows
            if row["bound"] == "variational"
        }
    return out


def paired(a: np.ndarray, b: np.ndarray, seed: int = 0) -> list[float]:
    from fastmi.finetune.evaluation import bootstrap_interval

    return list(bootstrap_interval(lambda rows: float(a[rows].mean() - b[rows].mean()), a.size, seed=seed))


def topic_stage(arms, work: Path, split, args, layers, rows, three_way: bool) -> dict:
    """(b); with the three-way split the topic probe is fitted on the whole probe part (the sweep's
    train and validation rows), else on the sweep's train rows as before."""
    from fastmi.activations.cache import ActivationCache
    from fastmi.finetune.evaluation import bootstrap_interval, demo_topics, topic_probe_correct
    from fastmi.sweep import model_slug

    _, labels, names = demo_topics(args.max_sentences)
    labels = labels[rows]  # the evaluation corpus's sentences (all, or the probe and held-out parts)
    fit_rows = np.union1d(split.train, split.validation) if three_way else split.train
    out = {"labels": names, "layers": {}}
    for layer in layers:
        correct = {}
        for arm, spec in arms.items():
            cache = ActivationCache.open(work / "cache" / model_slug(spec))
            emb = cache.embeddings(layer)
            emb = emb.numpy() if hasattr(emb, "numpy") else np.asarray(emb)
            correct[arm] = topic_probe_correct(emb, labels, fit_rows, split.test).astype(np.float64)
        entry = {
            arm: list(bootstrap_interval(lambda rows, c=c: float(c[rows].mean()), c.size)) for arm, c in correct.items()
        }
        entry["treatment-control"] = paired(correct["treatment"], correct["control"])
        entry["treatment-base"] = paired(correct["treatment"], correct["base"])
        entry["control-base"] = paired(correct["control"], correct["base"])
        out["layers"][str(layer)] = entry
    out["majority_class"] = float(np.bincount(labels[split.test]).max() / split.test.size)
    return out


def objective_stage(arms, corpus, split, args, layers, work: Path) -> dict:
    """E1: per layer, each arm's held-out bound of the term's own quantity (fresh full-vocabulary probe
    on per-token layer-normed, mean-pooled states; fastmi/finetune/objective_bound.py) and the arms'
    differences, paired over the held-out sentences."""
    import torch

    from fastmi.finetune.objective_bound import objective_bound, term_pooled_states
    from fastmi.finetune.run import load_trainable, training_source

    per = {}
    for arm, spec in arms.items():
        model, tokenizer, _, _ = load_trainable(training_source(spec), seed=0)
        features = term_pooled_states(model, tokenizer, corpus.tokenize(tokenizer, args.max_length), layers)
        del model
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
        per[arm] = objective_bound(features, split, checkpoint_dir=work / "e1_probes" / arm, model=arm)
    out = {"unit": "bits", "layers": {}}
    for layer in layers:
        held = {arm: per[arm][layer] for arm in arms}
        if any(not np.array_equal(held[arm]["rows"], held["base"]["rows"]) for arm in arms):
            raise ValueError("E1: the arms' tokenizers give other held-out sentences a bag; they cannot be paired")
        entry = {arm: held[arm]["bound_bits"] for arm in arms}
        entry["H_T"] = held["base"]["H_T"]
        for a, b in (("treatment", "control"), ("treatment", "base"), ("control", "base")):
            entry[f"{a}-{b}"] = paired(held[a]["values"], held[b]["values"])
        out["layers"][str(layer)] = entry
    return out


def lm_stage(arms, corpus, split, kind, args) -> dict:
    import torch

    from fastmi.finetune.evaluation import bootstrap_interval, lm_token_losses
    from fastmi.finetune.run import load_trainable, training_source

    sentences = [corpus.sentences[i] for i in split.test]
    per = {}
    for arm, spec in arms.items():
        model, tokenizer, _, missing = load_trainable(training_source(spec), seed=0)
        nll, count = lm_token_losses(model, tokenizer, sentences, kind, max_length=args.max_length)
        per[arm] = (nll, count, missing)
        del model
        torch.cuda.empty_cache() if torch.cuda.is_available() else None

    def ratio(arm):
        nll, count, _ = per[arm]
        return lambda rows: float(nll[rows].sum() / count[rows].sum())

    out = {"objective": "causal LM" if kind == "decoder" else "masked LM (15% seeded masks)", "unit": "nats/token"}
    n = len(sentences)
    for arm in arms:
        out[arm] = list(bootstrap_interval(ratio(arm), n))
        out[f"{arm}_random_head_weights"] = len(per[arm][2])
    for a, b in (("treatment", "control"), ("treatment", "base"), ("control", "base")):
        out[f"{a}-{b}"] = list(bootstrap_interval(lambda rows, a=a, b=b: ratio(a)(rows) - ratio(b)(rows), n))
    return out


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms, colors = ("base", "control", "treatment"), {"base": "tab:gray", "control": "tab:blue", "treatment": "tab:red"}
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    ax = axes[0]
    for arm in arms:
        by_layer = {int(k): v for k, v in summary["bounds"][arm].items()}  # int keys, or str after JSON
        layers = sorted(by_layer)
        ax.plot(
            layers, [by_layer[layer]["variational_bits"] for layer in layers], marker="o", color=colors[arm], label=arm
        )
    ax.axvline(summary["tuned_layer"], color="k", ls=":", lw=1)
    ax.set(xlabel="layer", ylabel="variational bound, bits (held-out)", title="(a) I(T; z) lower bound")
    ax.legend()
    ax = axes[1]
    layers = list(summary["topics"]["layers"])
    for i, arm in enumerate(arms):
        vals = [summary["topics"]["layers"][layer][arm] for layer in layers]
        x = np.arange(len(layers)) + (i - 1) * 0.25
        ax.bar(
            x,
            [v[0] for v in vals],
            0.25,
            color=colors[arm],
            label=arm,
            yerr=np.array([[v[0] - v[1] for v in vals], [v[2] - v[0] for v in vals]]),
            capsize=3,
        )
    ax.axhline(summary["topics"]["majority_class"], color="k", ls=":", lw=1, label="majority class")
    ax.set_xticks(range(len(layers)), [f"layer {layer}" for layer in layers])
    ax.set(ylabel="held-out accuracy (95% bootstrap)", title="(b) BBC topic, logistic probe")
    ax.legend(fontsize=8)
    ax = axes[2]
    lm = summary["lm_loss"]
    ax.bar(
        range(3),
        [lm[a][0] for a in arms],
        color=[colors[a] for a in arms],
        yerr=np.array([[lm[a][0] - lm[a][1] for a in arms], [lm[a][2] - lm[a][0] for a in arms]]),
        capsize=3,
    )
    ax.set_xticks(range(3), arms)
    ax.set(ylabel=f"held-out loss, {lm['unit']} (95% bootstrap)", title=f"(c) own objective: {lm['objective']}")
    fig.suptitle(f"{summary['family']}: recoverability fine-tuning (treatment) vs lambda = 0 (control)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())

"""The paper's third claim on this CPU (docs/finetune.md): does fine-tuning with lambda *
recoverability improve a model on a task it was never supervised on?

Compares a base model, a control run (lambda = 0) and a treatment run (lambda > 0) of
``fastmi finetune`` (same steps, data and seed) on the held-out sentences of the demo split:

(a) per-layer bounds: ``fastmi.sweep`` over the three models (fresh probes, top:512 alphabet);
(b) BBC News topic (5 labels): logistic regression on frozen mean-pooled embeddings, train rows ->
    held-out accuracy, at the tuned layer and the last layer, with bootstrap and paired intervals;
(c) the model's own held-out loss (causal LM, or masked LM on fixed seeded masks).

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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", required=True, help="a name for the report (minilm, smollm2)")
    p.add_argument("--base", required=True)
    p.add_argument("--control", required=True, help="fastmi finetune output with --lambda 0")
    p.add_argument("--treatment", required=True, help="fastmi finetune output with --lambda > 0")
    p.add_argument("--tuned-layer", type=int, required=True)
    p.add_argument("--layers", default="all", help="layers of the sweep")
    p.add_argument("--work", required=True, help="sweep output and stage results")
    p.add_argument("--report", required=True, help="directory for <family>.json and <family>.png")
    p.add_argument("--max-sentences", type=int, default=1000)
    p.add_argument("--max-length", type=int, default=48)
    args = p.parse_args()

    from fastmi.data.corpus import Corpus
    from fastmi.data.split import Split
    from fastmi.probe.config import ProbeConfig
    from fastmi.sweep import sweep

    work, report = Path(args.work), Path(args.report)
    report.mkdir(parents=True, exist_ok=True)
    arms = {"base": args.base, "control": args.control, "treatment": args.treatment}
    corpus = Corpus.load("demo", max_sentences=args.max_sentences)
    result = sweep(
        list(arms.values()),
        corpus,
        work,
        settings=ProbeConfig(vocab="top:512"),
        max_length=args.max_length,
        layers=args.layers,
        progress=False,
    )
    split = Split.load(work / "split.json")
    kind = json.loads((Path(args.treatment) / "finetune.json").read_text())["kind"]

    bounds = {}
    names = list(dict.fromkeys(str(r["model"]) for r in result.table))  # the sweep keeps the models' order
    for arm, name in zip(arms, names):
        rows = [r for r in result.table if str(r["model"]) == name]
        bounds[arm] = {
            int(r["layer"]): {
                k: r[k]
                for k in ("variational_bits", "variational_lcb", "list_fano_bits", "list_fano_lcb", "ce_bits", "H_T")
            }
            for r in rows
        }
    bounds["paired"] = paired_bounds(result, dict(zip(arms, names)))
    last_layer = max(bounds["base"])
    topics = stage(work / "topics.json", lambda: topic_stage(arms, work, split, args, [args.tuned_layer, last_layer]))
    lm = stage(work / "lm_loss.json", lambda: lm_stage(arms, corpus, split, kind, args))
    summary = {
        "family": args.family,
        "kind": kind,
        "tuned_layer": args.tuned_layer,
        "last_layer": last_layer,
        "runs": {arm: _run_info(spec) for arm, spec in arms.items()},
        "bounds": bounds,
        "topics": topics,
        "lm_loss": lm,
        "n_train": int(split.train.size),
        "n_test": int(split.test.size),
    }
    (report / f"{args.family}.json").write_text(json.dumps(summary, indent=2))
    plot(summary, report / f"{args.family}.png")
    print(json.dumps({k: summary[k] for k in ("topics", "lm_loss")}, indent=2))
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


def topic_stage(arms, work: Path, split, args, layers) -> dict:
    from fastmi.activations.cache import ActivationCache
    from fastmi.finetune.evaluation import bootstrap_interval, demo_topics, topic_probe_correct
    from fastmi.sweep import model_slug

    _, labels, names = demo_topics(args.max_sentences)
    out = {"labels": names, "layers": {}}
    for layer in layers:
        correct = {}
        for arm, spec in arms.items():
            cache = ActivationCache.open(work / "cache" / model_slug(spec))
            emb = cache.embeddings(layer)
            emb = emb.numpy() if hasattr(emb, "numpy") else np.asarray(emb)
            correct[arm] = topic_probe_correct(emb, labels, split.train, split.test).astype(np.float64)
        entry = {
            arm: list(bootstrap_interval(lambda rows, c=c: float(c[rows].mean()), c.size)) for arm, c in correct.items()
        }
        entry["treatment-control"] = paired(correct["treatment"], correct["control"])
        entry["treatment-base"] = paired(correct["treatment"], correct["base"])
        entry["control-base"] = paired(correct["control"], correct["base"])
        out["layers"][str(layer)] = entry
    out["majority_class"] = float(np.bincount(labels[split.test]).max() / split.test.size)
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
    main()

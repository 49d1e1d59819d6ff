"""One-shot GPU benchmark of fastmi's kernels, for one H200 (or any CUDA GPU), in under 8 minutes.

    python bench/gpu.py                 # the issue's shapes: bf16, B=8192, d=4096, V=128256
    python bench/gpu.py --quick         # small shapes: a smoke test of this script (~1 minute)

In order: (1) checks every kernel against its torch reference on fresh random inputs; (2) measures
the machine's ceilings in the same run (a bf16 matmul at the probe's shape and at 8192^3, a
device-to-device copy); (3) times each kernel with ``triton.testing.do_bench`` (median) against the
baselines that are installed: naive torch, torch.compile of it, Liger-Kernel's fused linear
cross-entropy with each row repeated once per target token, and Cut Cross-Entropy's per-row
LSE used as ``C*LSE - sum_k c_k logit_k`` (gradient filtering off and on; fastmi is timed with its
own filter off and on too).  Missing baselines are
recorded as missing.  Writes bench/results/gpu-<date>.json and prints a short table last.

Wheels to carry to a machine without package access (see bench/README.md):
``liger-kernel`` and ``cut-cross-entropy`` (each installed with ``--no-deps``: their
dependencies, torch and triton, are already there).  fastmi itself runs from the source tree.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"
DEADLINE_S = 7 * 60  # stop timing optional baselines past this, to stay under 8 minutes


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=8192, help="B, rows (sentences) per probe batch")
    p.add_argument("--dim", type=int, default=4096, help="d, hidden size")
    p.add_argument("--vocab", type=int, default=128256, help="V, vocabulary size")
    p.add_argument("--bag-size", type=int, default=16, help="distinct ids per bag (each count 1)")
    p.add_argument("--topk", type=int, default=16, help="k of bag_topk")
    p.add_argument("--pool-shape", type=int, nargs=3, default=(64, 2048, 4096), metavar=("B", "T", "D"),
                   help="masked_pool's hidden shape")
    p.add_argument("--quick", action="store_true", help="small shapes, a smoke test of the script")
    p.add_argument("--filter-eps", type=float, default=2.0**-12,
                   help="fastmi's gradient-filter threshold for its 'filter on' timing (default 2^-12: "
                        "cut-cross-entropy's 'auto' level for bf16, eps(bf16)/32)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile baselines")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default bench/results/gpu-<date>.json)")
    p.add_argument("--cpu-dry-run", action="store_true",
                   help="tiny shapes on the CPU, plain timers: checks this script's plumbing, measures nothing")
    args = p.parse_args(argv)
    if args.quick:
        args.rows, args.dim, args.vocab, args.pool_shape = 1024, 1024, 32000, (16, 512, 1024)
    if args.cpu_dry_run:
        args.rows, args.dim, args.vocab, args.bag_size, args.pool_shape = 64, 32, 1000, 4, (4, 16, 32)
        args.no_compile = True
    return args


def versions() -> dict:
    out = {"python": platform.python_version()}
    for dist in ("torch", "triton", "fastmi", "liger-kernel", "cut-cross-entropy"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


class Bench:
    """Holds the torch / triton imports, the clock and everything recorded."""

    def __init__(self, args):
        import torch
        import triton.testing

        self.torch, self.args = torch, args
        self.start = time.time()
        if args.cpu_dry_run:
            self.device, self.do_bench, device = "cpu", _plain_timer, {"name": "cpu (dry run)"}
        else:
            props = torch.cuda.get_device_properties(0)
            self.device, self.do_bench = "cuda", triton.testing.do_bench
            device = {"name": props.name, "capability": f"{props.major}.{props.minor}",
                      "sms": props.multi_processor_count, "memory_gib": round(props.total_memory / 2**30, 1),
                      "cuda": torch.version.cuda}
        self.record = {
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "device": device,
            "versions": versions(),
            "args": {k: (list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v)
                     for k, v in vars(args).items()},
            "checks": [], "ceilings": {}, "timings": [], "notes": [],
        }

    def late(self) -> bool:
        return time.time() - self.start > DEADLINE_S

    def note(self, text: str) -> None:
        print("note:", text)
        self.record["notes"].append(text)

    def time(self, op: str, impl: str, fn, *, flops=None, bytes_moved=None, rep=200) -> dict | None:
        """Median ms of ``fn`` and the peak memory of one call above what was allocated before."""
        torch = self.torch
        row = {"op": op, "impl": impl}
        for p in getattr(fn, "params", ()):  # free last impl's gradients before measuring memory
            p.grad = None
        try:
            if self.device == "cuda":
                torch.cuda.synchronize()
                before = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
            fn()
            if self.device == "cuda":
                torch.cuda.synchronize()
                row["peak_extra_gib"] = (torch.cuda.max_memory_allocated() - before) / 2**30
            row["ms"] = self.do_bench(fn, warmup=25, rep=rep, return_mode="median")
        except Exception as error:  # a baseline that fails is recorded, not fatal
            row["error"] = f"{type(error).__name__}: {str(error)[:300]}"
            print(f"{op} / {impl}: {row['error']}")
            self.record["timings"].append(row)
            return None
        if flops:
            row["tflops"] = flops / row["ms"] / 1e9
        if bytes_moved:
            row["gb_per_s"] = bytes_moved / row["ms"] / 1e6
        print(f"{op:<18} {impl:<34} {row['ms']:9.3f} ms")
        self.record["timings"].append(row)
        return row

    def check(self, name: str, error: float, tolerance: float) -> None:
        ok = bool(error <= tolerance)
        self.record["checks"].append({"name": name, "max_error": float(error), "tolerance": tolerance, "ok": ok})
        print(f"check {name:<44} max error {error:.2e} (tol {tolerance:.0e}) {'ok' if ok else 'FAILED'}")


def _plain_timer(fn, warmup=0, rep=0, return_mode="median"):
    times = []
    for _ in range(3):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[1]


# ---- problems ------------------------------------------------------------------------------


def make_bags(rows, vocab, bag_size, device):
    """Exactly ``bag_size`` distinct sorted ids per row (one per stripe of V), counts 1."""
    import torch
    from fastmi import BagTargets

    stripe = vocab // bag_size
    ids = torch.randint(0, stripe, (rows, bag_size)) + torch.arange(bag_size) * stripe
    offsets = torch.arange(rows + 1) * bag_size
    return BagTargets(offsets, ids.flatten(), torch.ones(rows * bag_size, dtype=torch.long)).to(device)


def make_probe(rows, dim, vocab, dtype, device):
    import torch

    z = (torch.randn(rows, dim, device=device) / dim**0.25).to(dtype).requires_grad_()
    weight = (torch.randn(vocab, dim, device=device) / dim**0.25).to(dtype).requires_grad_()
    bias = (0.1 * torch.randn(vocab, device=device)).to(dtype).requires_grad_()
    return z, weight, bias


def naive_bag_loss(z, weight, rows, ids, counts, tokens):
    """Logits materialised; the reference's loss in plain tensors (so torch.compile can trace it)."""
    import torch

    logits = (z @ weight.t()).float()
    lse = torch.logsumexp(logits, dim=-1)
    target = torch.zeros_like(lse).index_add_(0, rows, counts * logits[rows, ids])
    return ((tokens * lse - target) / tokens.clamp(min=1)).mean()


def forward_backward(loss_fn, *params):
    def step():
        for p in params:
            p.grad = None
        loss_fn().backward()
    step.params = params
    return step


# ---- the three parts ------------------------------------------------------------------------


def run_checks(bench: Bench) -> None:
    import torch
    import fastmi.kernels as K
    from fastmi.kernels import reference as R

    dev = bench.device
    for dtype, tol in ((torch.float32, 2e-4), (torch.bfloat16, 1e-2)):
        z, w, b = make_probe(1000, 320, 5003, dtype, dev)
        bags = make_bags(1000, 5003, 7, dev)
        grads = []
        for fn in (K.bag_cross_entropy, R.bag_cross_entropy_reference):
            z.grad = w.grad = b.grad = None
            loss = fn(z, w, b, bags)
            loss.backward()
            grads.append([loss.detach().float()] + [t.grad.float() for t in (z, w, b)])
        for name, mine, ref in zip(("loss", "grad z", "grad W", "grad b"), *grads):
            scale = ref.abs().max().clamp(min=1e-6)
            bench.check(f"bag_cross_entropy {name} {str(dtype)[6:]} (rel)", ((mine - ref).abs().max() / scale).item(), tol)
    with torch.no_grad():
        z, w, b = (t.detach() for t in make_probe(1000, 320, 5003, torch.bfloat16, dev))
        zs, ws, bs = torch.stack([z, -z]), torch.stack([w, w.flip(0)]), torch.stack([b, b])
        ids, lse = K.bag_topk(zs, ws, bs, 8)
        ref_ids, ref_lse = R.bag_topk_reference(zs, ws, bs, 8)
        logits = R.logits_reference(zs, ws, bs)
        bench.check("bag_topk lse bf16", (lse - ref_lse).abs().max().item(), 2e-3)
        bench.check("bag_topk top-k logits bf16", (logits.gather(-1, ids) - logits.gather(-1, ref_ids)).abs().max().item(), 1e-3)
        bench.record["checks"].append({"name": "bag_topk ids equal to the reference (fraction)",
                                       "value": (ids == ref_ids).float().mean().item()})
        hidden = torch.randn(16, 300, 1000, device=dev, dtype=torch.bfloat16)
        mask = torch.rand(16, 300, device=dev) < 0.6
        mask[0] = False
        for mode in ("mean", "max", "first", "last"):
            err = (K.masked_pool(hidden, mask, mode) - R.masked_pool_reference(hidden, mask, mode)).abs().max().item()
            bench.check(f"masked_pool {mode} bf16", err, 1e-3)


def measure_ceilings(bench: Bench) -> None:
    import torch

    a = bench.args
    c = bench.record["ceilings"]
    for name, (m, k, n) in {"matmul_probe_shape": (a.rows, a.dim, a.vocab), "matmul_8192": (8192, 8192, 8192)}.items():
        if bench.device == "cpu":
            m, k, n = 64, 64, 64
        x = torch.randn(m, k, device=bench.device, dtype=torch.bfloat16)
        y = torch.randn(n, k, device=bench.device, dtype=torch.bfloat16)
        ms = bench.do_bench(lambda: x @ y.t(), warmup=25, rep=200, return_mode="median")
        c[name + "_tflops"] = 2 * m * k * n / ms / 1e9
        del x, y
    src = torch.empty(2**30 if bench.device == "cuda" else 2**20, device=bench.device, dtype=torch.uint8)
    dst = torch.empty_like(src)
    ms = bench.do_bench(lambda: dst.copy_(src), warmup=25, rep=200, return_mode="median")
    c["copy_gb_per_s"] = 2 * src.numel() / ms / 1e6  # read + write
    del src, dst
    print("ceilings:", {k: round(v, 1) for k, v in c.items()})


def maybe_compile(bench: Bench, fn):
    if bench.args.no_compile or bench.late():
        return None
    return bench.torch.compile(fn)


def bench_bag_cross_entropy(bench: Bench) -> None:
    import inspect

    import torch
    import fastmi.kernels as K

    a = bench.args
    # Timed without bias: the PyPI release of cut-cross-entropy (25.1) takes none, and a bias
    # changes no FLOP count.  The checks above cover the bias.
    z, w, _ = make_probe(a.rows, a.dim, a.vocab, torch.bfloat16, bench.device)
    bags = make_bags(a.rows, a.vocab, a.bag_size, bench.device)
    rows, ids, counts, tokens = bags.row_index, bags.ids, bags.counts.float(), bags.lengths.float()
    flops = 6 * a.rows * a.dim * a.vocab
    op = "bag_ce fwd+bwd"
    bench.time(op, "fastmi", forward_backward(lambda: K.bag_cross_entropy(z, w, None, bags), z, w), flops=flops)
    naive = lambda: naive_bag_loss(z, w, rows, ids, counts, tokens)  # noqa: E731
    bench.time(op, "naive torch", forward_backward(naive, z, w), flops=flops)
    compiled = maybe_compile(bench, naive_bag_loss)
    if compiled is not None:
        step = forward_backward(lambda: compiled(z, w, rows, ids, counts, tokens), z, w)
        bench.time(op, "torch.compile(naive)", step, flops=flops)

    # Rows repeated once per target token: with every count 1 and every bag the same size, the mean
    # token-level CE equals fastmi's loss (mean over rows of the row-normalised loss).
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    except ImportError:
        bench.note("liger-kernel not installed: its baseline is missing")
    else:
        liger = LigerFusedLinearCrossEntropyLoss()
        liger_loss = lambda: liger(w, z.repeat_interleave(a.bag_size, 0), ids)  # noqa: E731
        bench.time(op, f"liger, rows x{a.bag_size}", forward_backward(liger_loss, z, w), flops=flops, rep=100)

    try:
        from cut_cross_entropy import linear_cross_entropy
    except ImportError:
        bench.note("cut-cross-entropy not installed: its baseline is missing")
    else:
        first = bags.offsets[:-1]
        takes_filter = "filter_eps" in inspect.signature(linear_cross_entropy).parameters

        def cce_bag_loss(**options):
            # CE against one target per row is LSE - logit_t0: add logit_t0 back for the LSE, then
            # form C*LSE - sum_k c_k logit_k with an indexed dot over the bag's rows of W
            ce = linear_cross_entropy(z, w, ids[first], reduction="none", **options)
            target_logits = (z[rows].float() * w[ids].float()).sum(-1)
            lse = ce.float() + target_logits[first]
            target = torch.zeros_like(lse).index_add_(0, rows, counts * target_logits)
            return ((tokens * lse - target) / tokens).mean()

        variants = [("filter off", {"filter_eps": None}), ("filter on", {"filter_eps": "auto"})] if takes_filter else [("", {})]
        for label, options in variants:
            step = forward_backward(lambda: cce_bag_loss(**options), z, w)
            bench.time(op, f"cce lse form {label}".strip(), step, flops=flops)
    if "filter_eps" in inspect.signature(K.bag_cross_entropy).parameters:
        # Same threshold as CCE's "filter on" by default.  How much is skipped depends on how peaked
        # the inputs' softmax is: random probes are nearly flat, a trained probe is not.
        filtered = lambda: K.bag_cross_entropy(z, w, None, bags, filter_eps=a.filter_eps)  # noqa: E731
        bench.time(op, f"fastmi filter on (eps={a.filter_eps:g})", forward_backward(filtered, z, w), flops=flops)
    else:
        bench.note("fastmi's bag_cross_entropy exposes no gradient filtering: timed with it off only")


def bench_bag_topk(bench: Bench) -> None:
    import torch
    import fastmi.kernels as K

    a = bench.args
    with torch.no_grad():
        z, w, b = (t.detach() for t in make_probe(a.rows, a.dim, a.vocab, torch.bfloat16, bench.device))
        flops = 2 * a.rows * a.dim * a.vocab
        op = f"bag_topk k={a.topk}"
        bench.time(op, "fastmi", lambda: K.bag_topk(z, w, b, a.topk), flops=flops)

        def naive(z, w, b):
            logits = (z @ w.t() + b).float()
            return logits.topk(a.topk, dim=-1).indices, logits.logsumexp(-1)

        bench.time(op, "naive torch", lambda: naive(z, w, b), flops=flops)
        compiled = maybe_compile(bench, naive)
        if compiled is not None:
            bench.time(op, "torch.compile(naive)", lambda: compiled(z, w, b), flops=flops)


def bench_masked_pool(bench: Bench) -> None:
    import torch
    import fastmi.kernels as K

    rows, length, dim = bench.args.pool_shape
    hidden = torch.randn(rows, length, dim, device=bench.device, dtype=torch.bfloat16)
    mask = torch.ones(rows, length, device=bench.device, dtype=torch.bool)  # all valid: every byte is read
    moved = hidden.numel() * hidden.element_size() + mask.numel() + rows * dim * 4
    for mode in ("mean", "max", "last"):
        bench.time(f"masked_pool {mode}", "fastmi", lambda: K.masked_pool(hidden, mask, mode), bytes_moved=moved)

    def naive(h, m):
        return (h.float() * m[..., None]).sum(1) / m.sum(1, keepdim=True)

    bench.time("masked_pool mean", "naive torch", lambda: naive(hidden, mask), bytes_moved=moved)
    compiled = maybe_compile(bench, naive)
    if compiled is not None:
        bench.time("masked_pool mean", "torch.compile(naive)", lambda: compiled(hidden, mask), bytes_moved=moved)


def summarise(bench: Bench) -> list[str]:
    """Speedups against the naive row of each op, fractions of the ceilings; a printable table."""
    c = bench.record["ceilings"]
    naive = {r["op"]: r["ms"] for r in bench.record["timings"] if r["impl"] == "naive torch" and "ms" in r}
    lines = [f"{'op':<18} {'impl':<30} {'ms':>9} {'x naive':>8} {'TFLOP/s':>8} {'GB/s':>7} {'% ceil':>7} {'peak+GiB':>9}"]
    for r in bench.record["timings"]:
        if "ms" not in r:
            lines.append(f"{r['op']:<18} {r['impl']:<30} {'error':>9}")
            continue
        if r["op"] in naive:
            r["speedup_vs_naive"] = naive[r["op"]] / r["ms"]
        if "tflops" in r and c.get("matmul_probe_shape_tflops"):
            r["fraction_of_matmul"] = r["tflops"] / c["matmul_probe_shape_tflops"]
        if "gb_per_s" in r and c.get("copy_gb_per_s"):
            r["fraction_of_copy"] = r["gb_per_s"] / c["copy_gb_per_s"]
        ceil = r.get("fraction_of_matmul", r.get("fraction_of_copy"))
        lines.append(
            f"{r['op']:<18} {r['impl'][:30]:<30} {r['ms']:>9.3f} {r.get('speedup_vs_naive', float('nan')):>8.2f} "
            f"{r.get('tflops', float('nan')):>8.1f} {r.get('gb_per_s', float('nan')):>7.0f} "
            f"{100 * ceil if ceil is not None else float('nan'):>6.1f}% {r.get('peak_extra_gib', float('nan')):>9.2f}"
        )
    failed = [x["name"] for x in bench.record["checks"] if x.get("ok") is False]
    lines.append(f"checks: {len(failed)} failed" + (f" ({', '.join(failed)})" if failed else ", all passed"))
    return lines


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available() and not args.cpu_dry_run:
        print("bench/gpu.py needs a CUDA GPU and torch.cuda.is_available() is False here.\n"
              "The CPU benchmarks run with: python -m pytest bench/ --benchmark-only", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    bench = Bench(args)
    stages = (run_checks, measure_ceilings, bench_bag_cross_entropy, bench_bag_topk, bench_masked_pool)
    for stage in stages:
        try:
            stage(bench)
        except Exception as error:  # keep what was measured; record the failure
            bench.note(f"{stage.__name__} failed: {type(error).__name__}: {str(error)[:500]}")
        if bench.device == "cuda":
            torch.cuda.empty_cache()
    bench.record["wall_s"] = round(time.time() - bench.start, 1)
    table = summarise(bench)
    out = args.out or RESULTS_DIR / f"gpu-{datetime.date.today().isoformat()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(bench.record, indent=2) + "\n")
    print(f"\nwrote {out} ({bench.record['wall_s']} s)\n")
    print("\n".join(table))
    return 0 if all(x.get("ok", True) for x in bench.record["checks"]) else 1


if __name__ == "__main__":
    sys.exit(main())

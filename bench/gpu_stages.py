"""The stages of bench/gpu.py: problems, baselines and what each one times (see that file's docstring)."""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import torch

import fastmi.kernels as K
from fastmi import BagTargets
from fastmi.kernels import reference as R

DTYPES = {"bf16": torch.bfloat16, "tf32": torch.float32, "fp32": torch.float32}


def shapes(run) -> SimpleNamespace:
    """Every size a stage uses; tiny ones under --cpu-dry-run."""
    if run.args.cpu_dry_run:
        return SimpleNamespace(
            vocab=1000,
            bag=4,
            dims=(32,),
            batches=((16, 2), (64, 1)),
            canonical=(64, 32),
            check=(40, 24, 301),
            pool=(4, 16, 32),
            topk=(64, 32),
            matmul=(64, 64, 64),
            probe_step=(256, 32),
        )
    return SimpleNamespace(
        vocab=run.args.vocab,
        bag=run.args.bag_size,
        dims=(4096, 8192),
        batches=((256, 8), (8192, 1), (256, 1)),
        canonical=(8192, 4096),
        check=(1000, 320, 5003),
        pool=(64, 2048, 4096),
        topk=(8192, 4096),
        matmul=(8192, 4096, run.args.vocab),
        probe_step=(2048, 8192),
    )


def make_bags(rows, vocab, bag_size, device) -> BagTargets:
    """Exactly ``bag_size`` distinct sorted ids per row (one per stripe of V), counts 1."""
    stripe = vocab // bag_size
    ids = torch.randint(0, stripe, (rows, bag_size)) + torch.arange(bag_size) * stripe
    offsets = torch.arange(rows + 1) * bag_size
    return BagTargets(offsets, ids.flatten(), torch.ones(rows * bag_size, dtype=torch.long)).to(device)


def make_probe(layers, rows, dim, vocab, dtype, device, grad=True):
    lead = () if layers is None else (layers,)
    z = (torch.randn(*lead, rows, dim, device=device) / dim**0.25).to(dtype)
    weight = (torch.randn(*lead, vocab, dim, device=device) / dim**0.25).to(dtype)
    bias = (0.1 * torch.randn(*lead, vocab, device=device)).to(dtype)
    return [t.requires_grad_(grad) for t in (z, weight, bias)]


def naive_bag_loss(z, weight, rows, ids, counts, tokens):
    """Logits materialised; the reference's loss in plain tensors (so torch.compile can trace it)."""
    logits = (z @ weight.transpose(-1, -2)).float()
    lse = torch.logsumexp(logits, dim=-1)
    target = torch.zeros_like(lse).index_add_(-1, rows, counts * logits[..., rows, ids])
    return ((tokens * lse - target) / tokens.clamp(min=1)).mean(-1).sum()


def forward_backward(loss_fn, *params):
    def step():
        for p in params:
            p.grad = None
        loss_fn().sum().backward()

    return step


@torch.no_grad()
def _release(*tensors):
    for t in tensors:
        t.grad = None


# ---- 1. checks --------------------------------------------------------------------------------
def checks(run) -> None:
    dev, (rows, dim, vocab) = run.device, shapes(run).check
    bags = make_bags(rows, vocab, 7, dev)
    cases = [
        ("fp32", torch.float32, torch.float32, None, 2e-4),
        ("bf16", torch.bfloat16, torch.bfloat16, None, 1e-2),
        ("z fp32 + W bf16", torch.float32, torch.bfloat16, None, 1e-2),
        ("layers=3 bf16", torch.bfloat16, torch.bfloat16, 3, 1e-2),
    ]
    for label, z_dtype, w_dtype, layers, tol in cases:
        z, _, _ = make_probe(layers, rows, dim, vocab, z_dtype, dev)
        _, w, b = make_probe(layers, rows, dim, vocab, w_dtype, dev)
        for reduction in ("mean", "none"):
            results = []
            for fn in (K.bag_cross_entropy, R.bag_cross_entropy_reference):
                z.grad = w.grad = b.grad = None
                if fn is R.bag_cross_entropy_reference:  # the reference at the same compute dtype
                    loss = fn(z.to(w_dtype), w, b, bags, reduction)
                else:
                    loss = fn(z, w, b, bags, reduction)
                loss.sum().backward()
                results.append([loss.detach().float()] + [t.grad.float() for t in (z, w, b)])
            for name, mine, ref in zip(("loss", "grad z", "grad W", "grad b"), *results):
                scale = ref.abs().max().clamp(min=1e-6)
                run.check(f"bag_ce {label} {reduction} {name} (rel)", ((mine - ref).abs().max() / scale).item(), tol)
    with torch.no_grad():
        z, w, b = make_probe(2, rows, dim, vocab, torch.bfloat16, dev, grad=False)
        for k in (1, 5, 64):
            ids, lse = K.bag_topk(z, w, b, k)
            ref_ids, ref_lse = R.bag_topk_reference(z, w, b, k)
            logits = R.logits_reference(z, w, b)
            run.check(f"bag_topk k={k} lse bf16", (lse - ref_lse).abs().max().item(), 2e-3)
            gap = (logits.gather(-1, ids) - logits.gather(-1, ref_ids)).abs().max().item()
            run.check(f"bag_topk k={k} top-k logits bf16", gap, 1e-3)
        hidden = torch.randn(16, 300, 1000, device=dev, dtype=torch.bfloat16)
        mask = torch.rand(16, 300, device=dev) < 0.6
        mask[0] = False
        for mode in ("mean", "max", "first", "last"):
            err = (K.masked_pool(hidden, mask, mode) - R.masked_pool_reference(hidden, mask, mode)).abs().max().item()
            run.check(f"masked_pool {mode} bf16", err, 1e-3)


# ---- 2. ceilings ------------------------------------------------------------------------------
def ceilings(run) -> None:
    m, k, n = shapes(run).matmul
    c = run.record["ceilings"]
    for name, dtype, precision in (
        ("bf16", torch.bfloat16, "highest"),
        ("tf32", torch.float32, "high"),
        ("fp32", torch.float32, "highest"),
    ):
        rows = m if name == "bf16" else m // 4  # fp32 is slow: a quarter of the rows gives the same rate
        x = torch.randn(rows, k, device=run.device, dtype=dtype)
        y = torch.randn(n, k, device=run.device, dtype=dtype)
        previous = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision(precision)
        try:
            ms = run.timed_ms(lambda: x @ y.t(), 3)  # warm
            ms = run.timed_ms(lambda: x @ y.t(), 10)
        finally:
            torch.set_float32_matmul_precision(previous)
        c[f"matmul_{name}_tflops"] = 2 * rows * k * n / ms / 1e9
        del x, y
    src = torch.empty(2**30 if run.device == "cuda" else 2**20, device=run.device, dtype=torch.uint8)
    dst = torch.empty_like(src)
    run.timed_ms(lambda: dst.copy_(src), 3)
    c["copy_gb_per_s"] = 2 * src.numel() / run.timed_ms(lambda: dst.copy_(src), 20) / 1e6  # read + write
    print("ceilings:", {key: round(v, 1) for key, v in c.items()}, flush=True)


# ---- 3. the shapes sweeps run -----------------------------------------------------------------
def sweep_shapes(run) -> None:
    s = shapes(run)
    for precision in ("bf16", "tf32", "fp32"):  # most useful first: the budget may end the stage
        for dim in s.dims:
            for rows, layers in s.batches:
                _one_sweep_shape(run, precision, dim, rows, layers, s.vocab, s.bag)


def _one_sweep_shape(run, precision, dim, rows, layers, vocab, bag_size) -> None:
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if precision == "tf32" else "highest")
    try:
        z, w, b = make_probe(layers, rows, dim, vocab, DTYPES[precision], run.device)
        bags = make_bags(rows, vocab, bag_size, run.device)
        op = f"bag_ce {precision} d={dim} B={rows} L={layers}"
        flops = 2 * rows * dim * vocab * layers  # one logits product
        common = dict(
            ceiling=f"matmul_{precision}_tflops", precision=precision, dim=dim, rows=rows, layers=layers, vocab=vocab
        )
        run.measure(
            op,
            "fastmi fwd+bwd (mean)",
            forward_backward(lambda: K.bag_cross_entropy(z, w, b, bags), z, w, b),
            useful_flops=3 * flops,
            executed_flops=3 * flops,
            **common,
        )
        with torch.no_grad():
            run.measure(
                op,
                "fastmi forward (no grad)",
                lambda: K.bag_cross_entropy(z, w, b, bags),
                useful_flops=flops,
                executed_flops=flops,
                **common,
            )
        step = forward_backward(lambda: K.bag_cross_entropy(z, w, b, bags, reduction="none"), z, w, b)
        run.measure(
            op, "fastmi fwd+bwd (none: recompute)", step, useful_flops=3 * flops, executed_flops=4 * flops, **common
        )
        if rows * vocab * layers * 4 * 3 < 24 * 2**30 or run.device == "cpu":  # the naive path's logits must fit
            rows_i, ids, counts, tokens = bags.row_index, bags.ids, bags.counts.float(), bags.lengths.float()
            naive = forward_backward(lambda: naive_bag_loss(z, w, rows_i, ids, counts, tokens), z, w)
            run.measure(op, "naive torch", naive, useful_flops=3 * flops, executed_flops=3 * flops, **common)
        _release(z, w, b)
    finally:
        torch.set_float32_matmul_precision(previous)


# ---- 4. baselines at the kernel issue's shape -------------------------------------------------
def baselines(run) -> None:
    s = shapes(run)
    rows, dim = s.canonical
    vocab, bag = s.vocab, s.bag
    # Bias-free: the PyPI release of cut-cross-entropy takes none, and a bias changes no FLOP count.
    z, w, _ = make_probe(None, rows, dim, vocab, torch.bfloat16, run.device)
    bags = make_bags(rows, vocab, bag, run.device)
    rows_i, ids, counts, tokens = bags.row_index, bags.ids, bags.counts.float(), bags.lengths.float()
    op = f"bag_ce bf16 d={dim} B={rows} L=1 (baselines)"
    flops = 6 * rows * dim * vocab
    common = dict(useful_flops=flops, ceiling="matmul_bf16_tflops")
    run.measure(
        op,
        "fastmi",
        forward_backward(lambda: K.bag_cross_entropy(z, w, None, bags), z, w),
        executed_flops=flops,
        **common,
    )
    filtered = lambda: K.bag_cross_entropy(z, w, None, bags, filter_eps=run.args.filter_eps)  # noqa: E731
    run.measure(op, f"fastmi filter on (eps={run.args.filter_eps:g})", forward_backward(filtered, z, w), **common)
    naive = lambda: naive_bag_loss(z, w, rows_i, ids, counts, tokens)  # noqa: E731
    run.measure(op, "naive torch", forward_backward(naive, z, w), executed_flops=flops, **common)
    if not run.args.no_compile and not run.args.cpu_dry_run:
        compiled = torch.compile(naive_bag_loss)
        step = forward_backward(lambda: compiled(z, w, rows_i, ids, counts, tokens), z, w)
        run.measure(op, "torch.compile(naive)", step, executed_flops=flops, **common)
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    except ImportError:
        run.note("liger-kernel not installed: its baseline is missing")
    else:
        # With every count 1 and every bag the same size, the mean token-level CE over rows repeated
        # once per target token equals fastmi's loss; Liger executes bag_size times the FLOPs.
        liger = LigerFusedLinearCrossEntropyLoss()
        liger_loss = lambda: liger(w, z.repeat_interleave(bag, 0), ids)  # noqa: E731
        run.measure(op, f"liger, rows x{bag}", forward_backward(liger_loss, z, w), executed_flops=bag * flops, **common)
    try:
        from cut_cross_entropy import linear_cross_entropy
    except ImportError:
        run.note("cut-cross-entropy not installed: its baseline is missing")
    else:
        first = bags.offsets[:-1]
        takes_filter = "filter_eps" in inspect.signature(linear_cross_entropy).parameters

        def cce_bag_loss(**options):
            # CE against one target per row is LSE - logit_t0: add logit_t0 back for the LSE, then
            # C*LSE - sum_k c_k logit_k with an indexed dot over the bag's rows of W
            ce = linear_cross_entropy(z, w, ids[first], reduction="none", **options)
            target_logits = (z[rows_i].float() * w[ids].float()).sum(-1)
            lse = ce.float() + target_logits[first]
            target = torch.zeros_like(lse).index_add_(0, rows_i, counts * target_logits)
            return ((tokens * lse - target) / tokens).mean()

        variants = (
            [("filter off", {"filter_eps": None}), ("filter on", {"filter_eps": "auto"})]
            if takes_filter
            else [("", {})]
        )
        for label, options in variants:
            step = forward_backward(lambda: cce_bag_loss(**options), z, w)
            run.measure(op, f"cce lse form {label}".strip(), step, executed_flops=flops, **common)
    _release(z, w)


# ---- 5, 6. top-k and pooling ------------------------------------------------------------------
def bag_topk(run) -> None:
    rows, dim = shapes(run).topk
    vocab = shapes(run).vocab
    with torch.no_grad():
        z, w, b = make_probe(None, rows, dim, vocab, torch.bfloat16, run.device, grad=False)
        flops = 2 * rows * dim * vocab
        for k in (1, 5, 64):
            run.measure(
                f"bag_topk k={k}",
                "fastmi",
                lambda: K.bag_topk(z, w, b, k),
                useful_flops=flops,
                executed_flops=flops,
                ceiling="matmul_bf16_tflops",
            )

        def naive(z, w, b):
            logits = (z @ w.t() + b).float()
            return logits.topk(5, dim=-1).indices, logits.logsumexp(-1)

        run.measure(
            "bag_topk k=5",
            "naive torch",
            lambda: naive(z, w, b),
            useful_flops=flops,
            executed_flops=flops,
            ceiling="matmul_bf16_tflops",
        )


def masked_pool(run) -> None:
    rows, length, dim = shapes(run).pool
    hidden = torch.randn(rows, length, dim, device=run.device, dtype=torch.bfloat16)
    mask = torch.ones(rows, length, device=run.device, dtype=torch.bool)  # all valid: every byte is read
    moved = hidden.numel() * hidden.element_size() + mask.numel() + rows * dim * 4
    for mode in ("mean", "max", "last"):
        run.measure(f"masked_pool {mode}", "fastmi", lambda: K.masked_pool(hidden, mask, mode), bytes_moved=moved)
    naive = lambda: (hidden.float() * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)  # noqa: E731
    run.measure("masked_pool mean", "naive torch", naive, bytes_moved=moved)


def probe_step(run) -> None:
    """One training step of the probe as fastmi runs it (fastmi.probe.training.train_step: the bag CE
    forward and backward in bf16, then the fused AdamW pass, plus the embedding probe's pull toward
    its start), at the batches the planner chooses between, beside the planner's own estimate of the
    step's matmul and optimizer seconds at this GPU's preset: does the step turn compute-bound where
    the planner says (fastmi.planning.probe_cost.compute_bound_batch)?"""
    from fastmi.planning.hardware import detect_hardware
    from fastmi.planning.probe_cost import optimizer_passes
    from fastmi.probe.adamw import AdamW
    from fastmi.probe.training import train_step

    rows, dim = shapes(run).probe_step
    vocab = shapes(run).vocab
    name = torch.cuda.get_device_name() if run.device == "cuda" else ""
    preset = "h100" if "H100" in name else "h200"
    hw = detect_hardware(1, gpu=preset)
    z = torch.randn(1, rows, dim, device=run.device)
    weight = (torch.randn(1, vocab, dim, device=run.device) / dim**0.5).requires_grad_(True)
    bias = torch.zeros(1, vocab, device=run.device, requires_grad=True)
    targets = make_bags(rows, vocab, shapes(run).bag, run.device)
    for form, anchors in (("linear", None), ("embedding", [weight.detach().clone(), None])):
        optimizer = AdamW([weight, bias], lr=1e-4, weight_decay=[3.0 if anchors else 0.0, 0.0], anchors=anchors)
        for batch in (256, 1024, 2048):
            if batch > rows:
                continue
            index = torch.arange(batch, device=run.device)
            planned_matmul = 6.0 * batch * dim * vocab / hw.probe_flops("bf16")
            planned_optimizer = optimizer_passes(form, "cuda") * vocab * (dim + 1) / hw.elementwise_rate
            run.measure(
                f"probe step {form} B={batch} d={dim}",
                "fastmi",
                lambda: train_step(z, index, targets, weight, bias, optimizer, "bf16"),
                useful_flops=6 * batch * dim * vocab,
                ceiling="matmul_bf16_tflops",
                planned_ms={"preset": preset, "matmul": planned_matmul * 1e3, "optimizer": planned_optimizer * 1e3},
            )
        del optimizer
    _release(weight, bias)


STAGES = {
    "checks": checks,
    "ceilings": ceilings,
    "sweep_shapes": sweep_shapes,
    "baselines": baselines,
    "bag_topk": bag_topk,
    "masked_pool": masked_pool,
    "probe_step": probe_step,
}


def summarise(run) -> None:
    """The kernel issue's targets, from the timings that exist; a table on stdout."""
    timings = [r for r in run.record["timings"] if "ms" in r]
    by = {(r["op"], r["impl"]): r for r in timings}
    base = [r for r in timings if r["op"].endswith("(baselines)")]
    mine = next((r for r in base if r["impl"] == "fastmi"), None)
    t = run.record["targets"]
    if mine is not None:
        t["useful_fraction_of_bf16_matmul (>= 0.60)"] = mine.get("useful_fraction_of_matmul")
        for impl, key, goal in (
            ("liger", "speedup_vs_liger (>= 5)", None),
            ("cce lse form", "time_vs_cce_lse (<= 1.2)", None),
        ):
            other = next((r for r in base if r["impl"].startswith(impl) and "filter on" not in r["impl"]), None)
            if other is not None:
                t[key] = other["ms"] / mine["ms"] if impl == "liger" else mine["ms"] / other["ms"]
    pools = [r.get("fraction_of_copy") for r in timings if r["op"].startswith("masked_pool") and r["impl"] == "fastmi"]
    if pools and all(p is not None for p in pools):
        t["pool_min_fraction_of_copy (>= 0.75)"] = min(pools)
    print(f"\n{'op':<44} {'impl':<34} {'ms':>10} {'useful':>7} {'exec':>7} {'peak GiB':>9}")
    for (op, impl), r in by.items():
        print(
            f"{op[:44]:<44} {impl[:34]:<34} {r['ms']:>10.3f} {r.get('useful_fraction_of_matmul', float('nan')):>7.2f} "
            f"{r.get('executed_fraction_of_matmul', float('nan')):>7.2f} {r.get('peak_extra_gib', float('nan')):>9.2f}"
        )
    failed = [c["name"] for c in run.record["checks"] if not c["ok"]]
    stages = {name: s["status"] for name, s in run.record["stages"].items()}
    print(f"stages: {stages}\nchecks: {len(failed)} failed {failed if failed else ''}\ntargets: {t}")

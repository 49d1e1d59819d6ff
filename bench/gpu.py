"""One-shot GPU benchmark of fastmi's kernels for one device call (written for an H200, any CUDA GPU).

From a clean checkout on the device, nothing to install for fastmi itself (this script imports it
from the source tree; torch, triton, numba and safetensors must be there).  The baselines are
optional; carry their wheels and install them with the one command (see bench/README.md):

    python -m pip install --no-index --no-deps --find-links bench/wheels liger-kernel cut-cross-entropy
    python bench/gpu.py --out gpu.json --time-budget 420

Stages, in order, each in its own try/finally (a failed stage is recorded, the next one runs), the
JSON rewritten after every stage and every timing (a killed run keeps what it measured):

1. ``checks``: every kernel against its torch reference on fresh random inputs, mixed dtypes and
   layer-batched calls included;
2. ``ceilings``: the machine's matmul rate (bf16, TF32 and fp32 at the probe's shapes) and copy
   bandwidth, measured in the same run;
3. ``sweep_shapes``: bag_cross_entropy at the shapes sweeps run (bf16, TF32, fp32; d = 4096 and
   8192; B = 256 with L = 8 and 1 layers, B = 8192 with 1), forward + backward (scalar loss),
   forward only, and reduction="none", against naive torch where it fits;
4. ``baselines``: at B = 8192, d = 4096, V = 128256, bf16: Liger-Kernel with rows repeated per
   target token, Cut Cross-Entropy's LSE form, torch.compile of the naive loss, gradient filtering;
5. ``bag_topk`` and 6. ``masked_pool``;
7. ``probe_step``: one training step of the probe (bf16 bag CE forward and backward, fused AdamW;
   the linear and the embedding probe) at B = 256, 1024 and 2048, d = 8192, beside the planner's
   matmul and optimizer milliseconds for that step at the GPU's preset.

Each timing records the median ms, the peak memory of one call *after* a warm-up call (so
compilation and caches are not counted), and both FLOP counts: useful (6*B*d*V*L for forward +
backward) and executed (what the path runs: 6 for the fused scalar loss, 8 when the backward
recomputes the logits, 2 for a forward), each as a fraction of the matmul rate of its dtype.
``--time-budget`` bounds the whole run: a timing that would start past it is skipped and recorded
as skipped.  ``--cpu-dry-run`` runs every stage at tiny shapes on the CPU (CI runs it).

``--out`` is the run's working record, rewritten as it goes; a finished run (not a dry run) appends
it as one row to bench/results/gpu.jsonl (bench/history.py: commit, date, machine, load, figures).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="the run's working JSON, rewritten after every stage (default: fastmi-gpu-<date>.json in the "
        "temporary folder); the finished run's row goes to bench/results/gpu.jsonl",
    )
    p.add_argument(
        "--time-budget",
        type=float,
        default=420.0,
        help="seconds for the whole run (default 420: fits an 8-minute slot with start-up)",
    )
    p.add_argument(
        "--stages",
        nargs="+",
        default=None,
        help="run only these stages: checks ceilings sweep_shapes baselines bag_topk masked_pool",
    )
    p.add_argument("--vocab", type=int, default=128256, help="V of every bag_cross_entropy shape")
    p.add_argument("--bag-size", type=int, default=16, help="distinct ids per bag (each count 1)")
    p.add_argument(
        "--filter-eps",
        type=float,
        default=2.0**-12,
        help="fastmi's gradient-filter threshold in its 'filter on' timing (CCE's bf16 'auto' level)",
    )
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile baselines")
    p.add_argument(
        "--cpu-dry-run",
        action="store_true",
        help="every stage at tiny shapes on the CPU, plain timers: checks the plumbing, measures nothing",
    )
    return p.parse_args(argv)


def import_fastmi_kernels():
    """fastmi.kernels from this checkout, installed or not."""
    sys.path.insert(0, str(ROOT))
    import fastmi
    import fastmi.kernels  # noqa: F401

    return fastmi


def versions() -> dict:
    out = {"python": platform.python_version()}
    for dist in ("torch", "triton", "fastmi", "liger-kernel", "cut-cross-entropy"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


class Run:
    """The record, the clock and the timer; writes the JSON after every change that matters."""

    def __init__(self, args):
        import torch

        self.torch, self.args, self.start = torch, args, time.time()
        self.device = "cpu" if args.cpu_dry_run else "cuda"
        if self.device == "cuda":
            props = torch.cuda.get_device_properties(0)
            device = {
                "name": props.name,
                "capability": f"{props.major}.{props.minor}",
                "sms": props.multi_processor_count,
                "memory_gib": round(props.total_memory / 2**30, 1),
                "cuda": torch.version.cuda,
            }
        else:
            device = {"name": "cpu (dry run: plumbing only, no figure means anything)"}
        self.out = args.out or Path(tempfile.gettempdir()) / f"fastmi-gpu-{datetime.date.today().isoformat()}.json"
        self.record = {
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "device": device,
            "versions": versions(),
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "stages": {},
            "checks": [],
            "ceilings": {},
            "timings": [],
            "notes": [],
            "targets": {},
        }
        self.write()

    # ---- bookkeeping -----------------------------------------------------------------------------
    def elapsed(self) -> float:
        return time.time() - self.start

    def left(self) -> float:
        return self.args.time_budget - self.elapsed()

    def write(self) -> None:
        self.record["wall_s"] = round(self.elapsed(), 1)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_name(self.out.name + ".tmp")
        tmp.write_text(json.dumps(self.record, indent=2, default=str) + "\n")
        os.replace(tmp, self.out)

    def note(self, text: str) -> None:
        print("note:", text, flush=True)
        self.record["notes"].append(text)

    @contextlib.contextmanager
    def stage(self, name: str):
        entry = {"status": "running", "started_s": round(self.elapsed(), 1)}
        self.record["stages"][name] = entry
        print(f"== {name} ({self.left():.0f} s left)", flush=True)
        try:
            yield
            entry["status"] = "ok"
        except Exception as error:  # recorded; the next stage still runs
            entry.update(
                status="failed",
                error=f"{type(error).__name__}: {str(error)[:500]}",
                traceback=traceback.format_exc(limit=6)[-3000:],
            )
            print(f"stage {name} failed: {entry['error']}", flush=True)
        finally:
            entry["seconds"] = round(self.elapsed() - entry["started_s"], 1)
            try:
                if self.device == "cuda":
                    self.torch.cuda.synchronize()
                    self.torch.cuda.empty_cache()
            except Exception as error:  # a sticky CUDA error: say so, keep going
                entry["cleanup_error"] = f"{type(error).__name__}: {str(error)[:300]}"
            self.write()

    def check(self, name: str, error: float, tolerance: float) -> None:
        ok = bool(error <= tolerance)
        self.record["checks"].append({"name": name, "max_error": float(error), "tolerance": tolerance, "ok": ok})
        print(f"check {name:<52} {error:.2e} (tol {tolerance:.0e}) {'ok' if ok else 'FAILED'}", flush=True)

    # ---- timing ----------------------------------------------------------------------------------
    def sync(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def timed_ms(self, fn, reps: int) -> float:
        times = []
        for _ in range(reps):
            self.sync()
            begin = time.perf_counter()
            fn()
            self.sync()
            times.append((time.perf_counter() - begin) * 1e3)
        return sorted(times)[len(times) // 2]

    def measure(
        self,
        op: str,
        impl: str,
        fn,
        *,
        useful_flops=None,
        executed_flops=None,
        bytes_moved=None,
        ceiling: str | None = None,
        **extra,
    ) -> dict | None:
        """Median ms of ``fn``; peak memory of one call after a warm-up call; FLOP fractions."""
        torch = self.torch
        row = {"op": op, "impl": impl, **extra}
        self.record["timings"].append(row)
        if self.left() < 5:
            row["skipped"] = "time budget spent"
            self.write()
            return None
        try:
            warm_start = time.perf_counter()
            fn()  # warm-up: compiles, autotunes, allocator caches
            self.sync()
            warm_ms = (time.perf_counter() - warm_start) * 1e3
            if self.device == "cuda":
                before = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
            single = self.timed_ms(fn, 1)
            if self.device == "cuda":
                row["peak_extra_gib"] = (torch.cuda.max_memory_allocated() - before) / 2**30
            # about 2% of what is left, at least 3 repetitions, at most 50 (one in a dry run)
            reps = 1 if self.args.cpu_dry_run else int(max(3, min(50, 0.02 * self.left() * 1e3 / max(single, 1e-3))))
            row.update(ms=self.timed_ms(fn, reps), reps=reps, warmup_ms=round(warm_ms, 2))
        except Exception as error:  # a baseline that fails is recorded, not fatal
            row["error"] = f"{type(error).__name__}: {str(error)[:300]}"
            print(f"{op} / {impl}: {row['error']}", flush=True)
            self.write()
            return None
        rate = self.record["ceilings"].get(ceiling) if ceiling else None
        for name, flops in (("useful", useful_flops), ("executed", executed_flops)):
            if flops:
                row[f"{name}_tflops"] = flops / row["ms"] / 1e9
                if rate:
                    row[f"{name}_fraction_of_matmul"] = row[f"{name}_tflops"] / rate
        if bytes_moved:
            row["gb_per_s"] = bytes_moved / row["ms"] / 1e6
            if self.record["ceilings"].get("copy_gb_per_s"):
                row["fraction_of_copy"] = row["gb_per_s"] / self.record["ceilings"]["copy_gb_per_s"]
        print(
            f"{op:<34} {impl:<30} {row['ms']:10.3f} ms  {row.get('useful_fraction_of_matmul', float('nan')):.2f}",
            flush=True,
        )
        self.write()
        return row


def record_history(record: dict) -> None:
    """The finished run as a row of bench/results/gpu.jsonl (its date and commit are the row's own)."""
    import history

    figures = {key: value for key, value in record.items() if key != "date"}
    figures["args"] = {key: value for key, value in record["args"].items() if key != "out"}
    row = history.record("gpu", figures, source="bench/gpu.py")
    print(f"appended the run to gpu.jsonl (commit {row['commit']}; bench/history.py says where)")


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if not args.cpu_dry_run and not torch.cuda.is_available():
        print(
            "bench/gpu.py needs a CUDA GPU and torch.cuda.is_available() is False here.\n"
            "Without one: python bench/gpu.py --cpu-dry-run (plumbing), or the CPU suites in bench/.",
            file=sys.stderr,
        )
        return 2
    import_fastmi_kernels()
    import gpu_stages

    torch.manual_seed(0)
    run = Run(args)
    for name, stage in gpu_stages.STAGES.items():
        if args.stages and name not in args.stages:
            continue
        with run.stage(name):
            stage(run)
    gpu_stages.summarise(run)
    run.write()
    print(f"\nwrote {run.out} ({run.record['wall_s']} s)")
    if not args.cpu_dry_run:  # a dry run measures nothing: no row
        record_history(run.record)
    return 0 if all(c["ok"] for c in run.record["checks"]) else 1


if __name__ == "__main__":
    sys.exit(main())

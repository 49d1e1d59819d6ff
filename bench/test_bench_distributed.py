"""CPU benchmark: 2 processes of 1 thread each (torchrun, gloo) against 1 process of 1 thread.

    python -m pytest bench/test_bench_distributed.py --benchmark-only -s

Both sides are launched the same way, ``torchrun --standalone --nproc_per_node N -m fastmi ...``
with ``OMP_NUM_THREADS=1``, so each pays the same start-up (imports, model load, process group);
wall-clock time of the whole command is measured.

* extraction: ``minilm`` (6 blocks, d = 384) over the first 2,000 demo sentences, max_length 128,
  batch 32, shards of 125 sentences (16 shards, 8 per rank).  The two caches must be
  bit-identical.  Target: at least 1.6x on 2 cores.
* probing those caches: ``fastmi probe`` at the demo's alphabet (top:512), 3 epochs at most, with a
  memory budget that puts one layer in each group (7 groups: 4 and 3 per rank).  The tables must
  agree within 1e-6 bits.

One untimed 1-process run over 16 sentences first pays what only a first run pays (numba's compile
cache, the model's weight hash).  In each round the 1-process baseline runs first (pytest-benchmark's
``setup``), then the 2-process run; the speed-up (baseline / 2 processes) and the load average go to
``extra_info`` and are printed.  Other work on the machine slows both, but not necessarily alike:
report the load with the figure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

SENTENCES, SHARD_ROWS, MAX_LENGTH, BATCH = 2000, 125, 128, 32
PROBE = [
    "--vocab",
    "top:512",
    "--max-epochs",
    "3",
    "--probe-memory",
    "1KB",
    "--no-progress",
]  # less than a layer: 1 layer per group
ROUNDS = 1


def torchrun(nproc: int, args: list[str], home: Path) -> float:
    """Seconds of ``torchrun --nproc_per_node nproc -m fastmi args`` at one thread per process."""
    env = dict(
        os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", FASTMI_HOME=str(home), TOKENIZERS_PARALLELISM="false"
    )
    start = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(nproc),
            "-m",
            "fastmi",
            *args,
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-4000:]
    return seconds


def extract_args(out: Path) -> list[str]:
    return [
        "extract",
        "--model",
        "minilm",
        "--corpus",
        "demo",
        "--max-sentences",
        str(SENTENCES),
        "--out",
        str(out),
        "--shard-rows",
        str(SHARD_ROWS),
        "--max-length",
        str(MAX_LENGTH),
        "--batch-size",
        str(BATCH),
        "--overwrite",
        "--no-progress",
    ]


def cache_bytes(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*.safetensors"))}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench-distributed")
    # Untimed: what only a first run pays (numba compiling the bag counter into its cache, the
    # weight-hash index of the model in the fresh home), so that the 1-process side, timed first,
    # does not pay it for both.
    warm = extract_args(root / "warm")
    warm[warm.index("--max-sentences") + 1] = "16"
    torchrun(1, warm, root / "home")
    return root


def record(benchmark, name: str, one: list[float]) -> float:
    two = benchmark.stats.stats.min
    speedup = min(one) / two
    load = os.getloadavg()
    benchmark.extra_info.update(
        {
            f"{name}_one_process_s": one,
            f"{name}_two_processes_s": two,
            f"{name}_speedup": speedup,
            "loadavg_1_5_15": load,
            "cpus": os.cpu_count(),
        }
    )
    print(
        f"\n{name}: 1 process {min(one):.1f}s, 2 processes {two:.1f}s, speed-up {speedup:.2f}x "
        f"(load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on {os.cpu_count()} CPUs)"
    )
    return speedup


def test_extraction_two_processes_over_one(benchmark, root):
    one: list[float] = []
    benchmark.group = f"extract minilm {SENTENCES} demo sentences, 1 thread per process"
    benchmark.pedantic(
        lambda: torchrun(2, extract_args(root / "two"), root / "home"),
        setup=lambda: one.append(torchrun(1, extract_args(root / "one"), root / "home")),
        rounds=ROUNDS,
        iterations=1,
    )
    # targets, the output embedding U, and 7 layers x 16 shards
    assert cache_bytes(root / "two") == cache_bytes(root / "one") and len(cache_bytes(root / "one")) == 2 + 7 * 16
    benchmark.extra_info["target"] = 1.6
    record(benchmark, "extract", one)


def test_probe_two_processes_over_one(benchmark, root):
    if not (root / "one" / "manifest.json").exists():  # run alone: make the cache, untimed
        torchrun(2, extract_args(root / "one"), root / "home")
    cache = root / "one"

    def probe(nproc: int, out: Path) -> float:
        for group_file in (cache / "probes").rglob("group_*.json"):  # no resuming: train every group
            group_file.unlink()
        return torchrun(nproc, ["probe", "--cache", str(cache), "--out", str(out), *PROBE], root / "home")

    one: list[float] = []
    benchmark.group = "probe the minilm cache (7 groups of 1 layer), 1 thread per process"
    benchmark.pedantic(
        lambda: probe(2, root / "probe-two"),
        setup=lambda: one.append(probe(1, root / "probe-one")),
        rounds=ROUNDS,
        iterations=1,
    )
    rows = [json.loads((root / f"probe-{n}" / "results.json").read_text())["rows"] for n in ("one", "two")]
    assert len(rows[0]) == 7
    for a, b in zip(*rows):
        for column, value in a.items():
            if isinstance(value, float):
                assert b[column] == pytest.approx(value, abs=1e-6), (a["layer"], column)
            else:
                assert b[column] == value, (a["layer"], column)
    record(benchmark, "probe", one)

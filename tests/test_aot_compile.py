"""Every Triton kernel compiles ahead of time for an H100/H200 (sm_90a) on this CPU-only machine.

Convention: each module ``fastmi/kernels/*_triton.py`` exposes ``aot_specs()``, a list of
``(name, jit_function, signature, constexprs)``: ``signature`` maps each runtime parameter to a
Triton type ("*bf16", "*fp32", "i32", ...), ``constexprs`` gives every ``tl.constexpr`` parameter
at a realistic GPU block size; the keys ``num_warps`` / ``num_stages`` in it, if present, are
compile options rather than kernel parameters, and ``_not_divisible`` (optional) names the
integer parameters a real launch does not see as multiples of 16.

Every other pointer and integer parameter is compiled with the 16-divisibility hint that Triton
specialises at a real launch (16-byte aligned allocations; d, B, V, strides multiples of 16):
that is the variant that runs (cp.async, wgmma), with its own registers and shared memory.  Each
module's specs cover every tile its launcher can pick, in fp32 and bf16, and the mixed case (bf16
operands with an fp32 bias).  The test fails on a compile error or on any register spill.

The compile runs in a subprocess: tests/conftest.py sets TRITON_INTERPRET=1, under which
``@triton.jit`` yields interpreted functions that cannot be compiled.  Registers and spills come
from ``ptxas -v`` (shipped in the triton wheel) on the generated PTX, since the compiled kernel's
``n_regs`` / ``n_spills`` are only filled in when it is loaded on a GPU; shared memory comes from
the compile metadata.
"""

from __future__ import annotations

import json
import os
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

KERNELS_DIR = Path(__file__).resolve().parents[1] / "fastmi" / "kernels"

COMPILE_ALL = textwrap.dedent(
    r"""
    import importlib, json, os, pkgutil, re, subprocess, sys, tempfile, time, traceback
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas
    import fastmi.kernels

    ARCH = 90
    target = GPUTarget("cuda", ARCH, 32)
    ptxas = get_ptxas(ARCH).path
    results = []
    for info in pkgutil.iter_modules(fastmi.kernels.__path__):
        if not info.name.endswith("_triton") or not info.name.startswith(os.environ.get("AOT_ONLY", "")):
            continue
        module = importlib.import_module(f"fastmi.kernels.{info.name}")
        if not hasattr(module, "aot_specs"):
            results.append(dict(module=info.name, name="-", error="module has no aot_specs()"))
            continue
        for name, fn, signature, constexprs in module.aot_specs():
            constexprs = dict(constexprs)
            options = {k: constexprs.pop(k) for k in ("num_warps", "num_stages") if k in constexprs}
            not_divisible = set(constexprs.pop("_not_divisible", ()))
            full = dict(signature, **{k: "constexpr" for k in constexprs})
            # The specialisation of a real launch: torch's allocations are 16-byte aligned and the
            # sizes and strides of real shapes (d = 4096, B = 256, V = 128256) are multiples of 16.
            hinted = [n for n, t in signature.items()
                      if n not in not_divisible and (t.startswith("*") or t in ("i32", "i64"))]
            attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in hinted}
            row = dict(module=info.name, name=name, hinted=len(hinted), **options)
            began = time.time()
            try:
                kernel = triton.compile(triton.compiler.ASTSource(fn, full, constexprs=constexprs, attrs=attrs),
                                        target=target, options=options)
            except Exception:
                row["error"] = traceback.format_exc(limit=3)
                results.append(row)
                continue
            row.update(shared_bytes=kernel.metadata.shared, num_warps=kernel.metadata.num_warps)
            with tempfile.NamedTemporaryFile("w", suffix=".ptx") as ptx:
                ptx.write(kernel.asm["ptx"])
                ptx.flush()
                log = subprocess.run([ptxas, "-v", f"--gpu-name=sm_{ARCH}a", ptx.name, "-o", "/dev/null"],
                                     capture_output=True, text=True).stderr
            regs = re.search(r"Used (\d+) registers", log)
            spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
            row.update(seconds=round(time.time() - began, 1), registers=int(regs.group(1)) if regs else None,
                       spill_store_bytes=int(spill.group(1)) if spill else None,
                       spill_load_bytes=int(spill.group(2)) if spill else None)
            results.append(row)
    print("AOT-RESULTS " + json.dumps(results))
    """
)


def _triton_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules([str(KERNELS_DIR)]) if m.name.endswith("_triton"))


def test_every_triton_kernel_compiles_for_sm90():
    pytest.importorskip("triton.backends.nvidia.compiler", reason="needs triton's NVIDIA backend (Linux wheel)")
    modules = _triton_modules()
    assert modules, "no fastmi/kernels/*_triton.py module found"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    done = subprocess.run([sys.executable, "-c", COMPILE_ALL], capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, f"compile script failed:\n{done.stderr[-4000:]}"
    line = next(x for x in done.stdout.splitlines() if x.startswith("AOT-RESULTS "))
    results = json.loads(line[len("AOT-RESULTS ") :])

    print(f"\n{'kernel':<44}{'warps':>6}{'hints':>6}{'regs':>6}{'spill st/ld B':>15}{'smem B':>9}")
    for r in results:
        if "error" in r:
            print(f"{r['name']:<44} ERROR")
            continue
        spill = f"{r['spill_store_bytes']}/{r['spill_load_bytes']}"
        print(
            f"{r['name']:<44}{r['num_warps']:>6}{r['hinted']:>6}{str(r['registers']):>6}{spill:>15}"
            f"{r['shared_bytes']:>9}"
        )

    errors = [f"{r['module']}.{r['name']}: {r['error']}" for r in results if "error" in r]
    assert not errors, "\n\n".join(errors)
    compiled_modules = {r["module"] for r in results}
    assert compiled_modules == set(modules), f"modules without a compiled spec: {set(modules) - compiled_modules}"
    for r in results:
        assert r["registers"] is not None, f"ptxas -v gave no register count for {r['name']}"
        # sm_90 allows 255 registers per thread and 227 KiB of shared memory per block
        assert r["registers"] <= 255 and r["shared_bytes"] <= 227 * 1024, r
    spilled = [
        f"{r['name']}: {r['spill_store_bytes']}/{r['spill_load_bytes']} B"
        for r in results
        if r["spill_store_bytes"] or r["spill_load_bytes"]
    ]
    assert not spilled, "register spills (stores/loads):\n" + "\n".join(spilled)

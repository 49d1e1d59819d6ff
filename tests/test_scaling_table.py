"""The README's "Scaling up" tables are what bench/scaling_table.py prints from today's fastmi.plan, and
that output depends on nothing measured on the machine that runs it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

import fastmi.planning.gpu_presets
import fastmi.planning.rates

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def generator():
    spec = importlib.util.spec_from_file_location("scaling_table", REPO / "bench" / "scaling_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generated(generator) -> str:
    with pytest.MonkeyPatch.context() as patch:  # a plan that measured this machine would fail here
        for name in dir(fastmi.planning.rates):
            if name.startswith("measure_"):
                patch.setattr(fastmi.planning.rates, name, _refuse)
        return generator.tables()


def _refuse(*args, **kwargs):
    raise AssertionError("the scaling table measured the machine that generates it")


def test_readme_scaling_table_is_the_generators_output(generator, generated):
    readme = (REPO / "README.md").read_text()
    assert readme.count(generator.BEGIN) == 1 and readme.count(generator.END) == 1
    section = readme[readme.index("## Scaling up") :]
    block = section[section.index(generator.BEGIN) + len(generator.BEGIN) : section.index(generator.END)]
    assert block.strip() == generated.strip(), (
        "README's scaling table is stale: run `python bench/scaling_table.py --write README.md`"
    )


def test_the_table_holds_the_plans_figures(generator, generated):
    """A few cells against fastmi.plan directly, so the table says what the planner says."""
    from transformers import LlamaConfig

    import fastmi
    from fastmi.commands.plan import duration
    from fastmi.models.shape import shape_from_config

    shape = shape_from_config(LlamaConfig(**generator.MODELS["Llama-3.1-70B"]), "Llama-3.1-70B")
    eight = fastmi.plan(shape, sentences=100_000, mean_tokens=32, vocab="full", gpus=8, gpu="h200")
    assert f"| extraction ({eight.extraction_flops:.3g} FLOP) |" in generated
    assert f"| {duration(eight.extraction_seconds)} |" in generated
    low, high = eight.probe_expected_seconds
    assert f"{duration(low)} to {duration(high)} |" in generated
    assert "| 4 replicas × 2 GPUs each |" in generated
    assert "1 GPU, 18.9 GB of weights offloaded to CPU RAM" in generated


def test_write_replaces_only_the_block_between_the_markers(generator, tmp_path):
    page = tmp_path / "README.md"
    page.write_text(f"before\n{generator.BEGIN}\nold table\n{generator.END}\nafter\n")
    assert generator.replace_block(page.read_text(), "new table") == (
        f"before\n{generator.BEGIN}\nnew table\n{generator.END}\nafter\n"
    )


@pytest.mark.parametrize("name", sorted(fastmi.planning.gpu_presets.GPU_PRESETS))
def test_docs_cite_each_presets_figures(name):
    """docs/scaling.md's table of published figures says what the presets hold."""
    preset = fastmi.planning.gpu_presets.GPU_PRESETS[name]
    docs = (REPO / "docs" / "scaling.md").read_text()
    row = next((line for line in docs.splitlines() if line.startswith(f"| `{name}` |")), None)
    assert row is not None, f"docs/scaling.md has no row for the {name} preset"
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[1] == preset.name
    assert cells[2:7] == [
        f"{preset.memory / 1e9:g} GB",
        f"{preset.bf16_tflops:g}",
        f"{preset.tf32_tflops:g}",
        f"{preset.fp32_tflops:g}",
        f"{preset.bandwidth / 1e12:g} TB/s",
    ]
    assert cells[7].startswith("[") and "nvidia.com" in cells[7]  # the vendor's datasheet, linked

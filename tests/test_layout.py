"""The package's shape, held: folders that name the pipeline's stages, modules and functions small
enough to read, and every rank decision in the runtime layer."""

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "fastmi"
STAGES = {"data", "models", "activations", "probe", "stats", "results", "planning", "finetune", "runtime"}
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 120
# The only modules that may talk to torch.distributed or branch on a rank.
RANK_LAYER = {"runtime"}
RANKISH = re.compile(r"rank|is_main|world_size|world\b")
# A process's place in the job (fastmi.runtime.distributed.Context, torch's world_size): reading it
# at all is a rank decision, even outside an if (e.g. ``f"cuda:{ctx.local_rank}"``).
PLACE_IN_JOB = {"rank", "local_rank", "world", "local_world", "world_size", "is_main"}


def modules(outside=("kernels",)):
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.relative_to(PACKAGE).parts[0] not in outside:
            yield path


def test_the_folders_name_the_pipeline_stages():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert STAGES <= folders, STAGES - folders
    loose = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert loose == ["__init__.py", "__main__.py", "cli.py", "defaults.py", "sweep.py"], loose


def test_no_module_is_too_long_to_read():
    long = {
        p.relative_to(PACKAGE).as_posix(): n
        for p in modules()
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_no_function_is_too_long_to_read():
    long = {}
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(PACKAGE).as_posix()}:{node.name}"] = length
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def rank_decisions(tree: ast.AST) -> list[int]:
    """Lines that call torch.distributed, read a rank or the world size, or branch on one."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and ast.unparse(node).startswith("torch.distributed"):
            lines.append(node.lineno)
        elif isinstance(node, ast.Attribute) and node.attr in PLACE_IN_JOB:
            lines.append(node.lineno)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [getattr(node, "module", None) or ""] + [a.name for a in node.names]
            if any(n.startswith("torch.distributed") for n in names):
                lines.append(node.lineno)
        elif isinstance(node, (ast.If, ast.IfExp, ast.While)) and RANKISH.search(ast.unparse(node.test)):
            lines.append(node.lineno)
    return sorted(set(lines))


def test_the_rank_rule_sees_reads_of_a_rank_and_branches_on_one():
    flagged = {
        "import torch.distributed as dist": [1],
        "if ctx.is_main:\n    pass": [1],
        "device = f'cuda:{ctx.local_rank * k}'": [1],
        "share = items[ctx.rank :: ctx.world]": [1],
        "x = 1 if world > 1 else 0": [1],
        "distributed.on_main(write, path)\nbar = distributed.main_only(progress)": [],
    }
    for source, lines in flagged.items():
        assert rank_decisions(ast.parse(source)) == lines, source


def test_ranks_are_decided_in_the_runtime_layer_only():
    offenders = {}
    for path in modules(outside=("kernels", *RANK_LAYER)):
        if lines := rank_decisions(ast.parse(path.read_text())):
            offenders[path.relative_to(PACKAGE).as_posix()] = lines
    assert not offenders, f"torch.distributed calls or rank branches outside fastmi/runtime: {offenders}"

"""Nothing at the repository root shadows an installed package.

``python -m pytest``, ``python -m fastmi`` and ``torchrun -m fastmi`` put the directory they are run
from first on ``sys.path``.  transformers 5 imports Hugging Face's ``kernels`` package, so a
top-level ``kernels/`` folder (where fastmi's kernel sources once lived) broke every model import
when run from the root.  These tests run those commands from the root, as the README does, and
check which ``kernels`` they import.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# A pytest plugin, loaded with -p, that writes where `import kernels` resolves inside the run.
ORIGIN_PROBE = textwrap.dedent(
    """
    import os

    def pytest_configure(config):
        import kernels

        with open(os.environ["KERNELS_ORIGIN_FILE"], "w") as f:
            f.write(str(getattr(kernels, "__file__", None) or list(kernels.__path__)))
    """
)


def installed_kernels_origin(cwd: Path) -> str | None:
    """Where `import kernels` resolves from a folder with nothing in it (None: not installed)."""
    code = "import importlib.util as u; s = u.find_spec('kernels'); print(s.origin if s else '')"
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, check=True)
    return out.stdout.strip() or None


@pytest.fixture
def kernels_env(tmp_path):
    """An environment in which `kernels` is importable: the installed package, else a stand-in."""
    env = dict(os.environ)
    paths = [str(tmp_path / "plugins")]
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "kernels_origin_probe.py").write_text(ORIGIN_PROBE)
    expected = installed_kernels_origin(tmp_path)
    if expected is None:  # transformers 4 does not need it; a stand-in makes shadowing visible all the same
        stand_in = tmp_path / "site" / "kernels"
        stand_in.mkdir(parents=True)
        (stand_in / "__init__.py").write_text("STAND_IN = True\n")
        paths.append(str(tmp_path / "site"))
        expected = str(stand_in / "__init__.py")
    env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["KERNELS_ORIGIN_FILE"] = str(tmp_path / "origin.txt")
    return env, Path(expected).resolve(), tmp_path / "origin.txt"


def assert_not_from_root(origin: str, expected: Path):
    resolved = Path(origin).resolve()
    assert ROOT not in resolved.parents, f"`import kernels` from the repository root gives {resolved}"
    assert resolved == expected


def test_pytest_collects_from_the_root_with_the_installed_kernels(kernels_env):
    env, expected, origin_file = kernels_env
    collect = ["--collect-only", "-q", "-p", "kernels_origin_probe", "-p", "no:cacheprovider"]
    run = subprocess.run(
        [sys.executable, "-m", "pytest", *collect],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "error" not in run.stdout.splitlines()[-1].lower(), run.stdout[-3000:]
    assert_not_from_root(origin_file.read_text(), expected)


def test_python_dash_c_from_the_root_imports_the_installed_kernels(kernels_env):
    # `python -c` and `python -m` both put the working directory first on sys.path.
    env, expected, _ = kernels_env
    code = "import kernels; print(getattr(kernels, '__file__', None) or list(kernels.__path__))"
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert_not_from_root(run.stdout.strip(), expected)


def test_python_dash_m_fastmi_runs_from_the_root(kernels_env):
    env, _, _ = kernels_env
    run = subprocess.run(
        [sys.executable, "-m", "fastmi", "--version"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert "fastmi" in run.stdout


def test_torchrun_dash_m_fastmi_runs_from_the_root(kernels_env):
    env, _, _ = kernels_env
    run = subprocess.run(
        # `torchrun` is this module's console script; calling it through the interpreter needs no PATH.
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "-m", "fastmi", "--version"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "fastmi" in run.stdout


def test_nothing_at_the_root_is_a_package_but_fastmi():
    packages = sorted(p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    assert packages == ["fastmi"]

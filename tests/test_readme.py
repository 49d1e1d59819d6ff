"""The README as a new user reads it: install first, commands near the top, every doc reachable.

Each test holds one thing a new user once tripped over (copying the command block pulled a CUDA
torch; a docs page nobody linked; three different demo times).
"""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DEMO_TIME = "about 1.5 minutes"


def first_code_block(text: str) -> list[str]:
    match = re.search(r"```bash\n(.*?)```", text, re.S)
    assert match, "the README has no bash block"
    return [line for line in match.group(1).splitlines() if line and not line.startswith("#")]


def test_the_first_command_installs_torch_before_anything_that_depends_on_it():
    commands = first_code_block(README)
    installs = [c for c in commands if "pip install" in c]
    assert installs[0].startswith("pip install torch=="), installs
    assert any(c.endswith("fastmi demo") for c in commands)
    assert any(c.endswith("python -m pytest") for c in commands)


def test_the_command_line_comes_before_the_long_sections():
    headings = [line for line in README.splitlines() if line.startswith("## ")]
    assert headings.index("## Command line") <= 1, headings
    line_of_cli = README.splitlines().index("## Command line")
    assert line_of_cli < 40
    assert len(README.splitlines()) < 300, "the long sections belong in docs/"


def test_every_docs_page_is_linked_from_the_readme():
    pages = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))
    missing = [p for p in pages if f"]({p}" not in README]
    assert not missing, f"docs pages no README link reaches: {missing}"


def test_no_internal_issue_numbers_in_user_docs():
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        hits = re.findall(r"\bissues? #?\d+\b", path.read_text(), re.I)
        assert not hits, f"{path.name} names internal issues: {hits}"


def test_the_demo_output_folder_is_ignored_by_git():
    assert "/fastmi-demo/" in (ROOT / ".gitignore").read_text().split()


def test_the_demo_time_is_the_same_everywhere_it_is_stated():
    assert DEMO_TIME in README
    assert DEMO_TIME in (ROOT / "docs" / "performance.md").read_text()
    help_text = subprocess.run(
        [sys.executable, "-m", "fastmi", "demo", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert DEMO_TIME in " ".join(help_text.split())
    assert "few minutes" not in help_text

"""Prints a pip constraints file that pins every declared dependency at its declared lower bound.

CI installs the package under these constraints in a second environment, so that the lower bounds
in pyproject.toml are versions the test suite has passed on, not guesses.
"""

import re
import sys
from pathlib import Path

import tomllib

# torch is pre-installed by CI (the CPU build on disk); its lower bound is that build.
PREINSTALLED = {"torch"}
EXTRAS = ("test", "demo")


def lower_bounds(pyproject: Path) -> dict[str, str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in EXTRAS:
        requirements += project["optional-dependencies"][extra]
    bounds = {}
    for requirement in requirements:
        match = re.match(r"^([A-Za-z0-9_.-]+)\s*>=\s*([^,;\s]+)", requirement)
        if match and match.group(1).lower() not in PREINSTALLED:
            bounds[match.group(1).lower()] = match.group(2)
    return bounds


if __name__ == "__main__":
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1]
    for name, version in sorted(lower_bounds(root / "pyproject.toml").items()):
        print(f"{name}=={version}")

"""Maps the top-level kernels/ folder to the import name ``fastmi.kernels``.

``kernels`` as a top-level name belongs to another library that transformers probes for, so
the folder is never installed under it.  Everything else lives in pyproject.toml.
"""

from setuptools import setup

setup(
    packages=["fastmi", "fastmi.commands", "fastmi.kernels"],
    package_dir={"fastmi": "fastmi", "fastmi.commands": "fastmi/commands", "fastmi.kernels": "kernels"},
    package_data={"fastmi": ["py.typed"]},
)

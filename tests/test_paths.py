"""One rule for every cache location (FASTMI_HOME, else XDG_CACHE_HOME/fastmi, else ~/.cache/fastmi),
and tests that never write into the user's home."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fastmi.activations.cache import IDENTITY_KEYS, default_cache_dir
from fastmi.models.loading import default_model_cache_dir
from fastmi.runtime.paths import fastmi_home

IDENTITY = {key: "x" for key in IDENTITY_KEYS}


@pytest.mark.parametrize(
    "fastmi, xdg, expected",
    [
        ("{tmp}/fm", "{tmp}/xdg", "{tmp}/fm"),  # FASTMI_HOME wins
        (None, "{tmp}/xdg", "{tmp}/xdg/fastmi"),  # then XDG_CACHE_HOME/fastmi
        (None, None, "{home}/.cache/fastmi"),  # then ~/.cache/fastmi
        (None, "relative/xdg", "{home}/.cache/fastmi"),  # a relative XDG_CACHE_HOME is invalid (XDG spec)
    ],
)
def test_activations_and_models_follow_one_rule(fastmi, xdg, expected, tmp_path, monkeypatch):
    home = tmp_path / "user"
    monkeypatch.setenv("HOME", str(home))
    for name, value in (("FASTMI_HOME", fastmi), ("XDG_CACHE_HOME", xdg)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value.format(tmp=tmp_path))
    root = Path(expected.format(tmp=tmp_path, home=home))
    assert fastmi_home() == root
    assert default_model_cache_dir() == root / "models"
    assert default_cache_dir(IDENTITY, "minilm").parent == root / "activations"
    assert default_cache_dir(IDENTITY, "minilm").name.startswith("minilm-")


def test_the_test_session_writes_nowhere_near_the_users_home():
    from conftest import REAL_HOME

    for name in ("FASTMI_HOME", "HOME", "XDG_CACHE_HOME", "HF_HOME"):  # TRITON_CACHE_DIR: the user may set it
        value = Path(os.environ[name]).resolve()
        assert REAL_HOME.resolve() not in (value, *value.parents) or "FASTMI_TEST_HOME" in os.environ, name
    assert REAL_HOME.resolve() not in fastmi_home().resolve().parents

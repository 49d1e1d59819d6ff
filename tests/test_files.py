"""fastmi.runtime.files: whole-or-absent files and content hashes, and the writers that use them
(results, plots, claims, the weight-hash index), and the cache's file locks."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest

import fastmi.runtime.files as files
from fastmi.runtime.files import TMP_PREFIX, atomic_write_bytes, atomic_write_text, content_hash


def leftovers(directory) -> list:
    return sorted(p.name for p in directory.rglob(f"{TMP_PREFIX}*"))


def test_atomic_write_replaces_whole_files_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "deep" / "er" / "file.txt"
    atomic_write_text(path, "one")
    atomic_write_bytes(path, b"two")
    assert path.read_bytes() == b"two" and leftovers(tmp_path) == []


def test_a_failed_write_keeps_the_old_file_drops_the_temporary_and_names_the_file(tmp_path, monkeypatch):
    path = tmp_path / "file.bin"
    atomic_write_bytes(path, b"old")

    class Full:
        def __init__(self, name, mode):
            self.file = open(name, mode)

        def write(self, data):
            self.file.write(data[:1])
            raise OSError(28, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

    monkeypatch.setattr(files, "open", Full, raising=False)
    with pytest.raises(OSError) as err:
        atomic_write_bytes(path, b"new contents")
    assert err.value.filename == str(path)
    assert path.read_bytes() == b"old" and leftovers(tmp_path) == []


def test_threads_writing_one_file_never_share_a_temporary(tmp_path):
    path, errors = tmp_path / "index.json", []

    def write(i):
        try:
            for _ in range(30):
                atomic_write_text(path, json.dumps({"writer": i, "pad": "x" * 10_000}))
        except BaseException as err:  # collected: an exception in a thread would pass unnoticed
            errors.append(err)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and json.loads(path.read_text())["writer"] in range(4)
    assert leftovers(tmp_path) == []


def test_content_hash_is_canonical():
    assert content_hash({"a": 1, "b": [1, 2]}) == content_hash({"b": [1, 2], "a": 1})
    assert content_hash({"a": 1}) != content_hash({"a": 2})
    assert len(content_hash([])) == 64
    assert content_hash({"p": {1, 2}}, default=sorted) == content_hash({"p": [1, 2]})


def test_the_weight_hash_index_is_written_whole(tmp_path):
    from fastmi.models.hashing import INDEX_NAME, file_sha256

    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"weights")
    digest = file_sha256(weights, tmp_path / "cache")
    index = json.loads((tmp_path / "cache" / INDEX_NAME).read_text())
    assert list(index.values()) == [digest] and leftovers(tmp_path) == []


def test_plots_claims_and_comparisons_are_written_whole(tmp_path):
    from synthetic_results import model_result, shared_difficulty

    from fastmi.results.result import RecoverabilityResult
    from fastmi.stats.claims import claims_to_json, evaluate_claims
    from fastmi.stats.comparison import compare

    difficulty, rows = shared_difficulty(120)
    result = RecoverabilityResult.concat(
        [
            model_result("enc", "encoder", [-0.3] * 4, difficulty, rows, seed=1),
            model_result("dec", "decoder", [0.0, -0.1, -0.3, -0.1, 0.0], difficulty, rows, seed=2),
        ]
    )
    png = result.plot(tmp_path / "out" / "bounds.png")
    assert png.read_bytes().startswith(b"\x89PNG")
    claims = claims_to_json(evaluate_claims(result, n_bootstrap=200), tmp_path / "out" / "claims.json")
    assert json.loads(claims.read_text())[0]["verdict"]
    comparison = compare(result, "enc", "dec", n_bootstrap=200).to_json(tmp_path / "out" / "compare.json")
    assert json.loads(comparison.read_text())["rows"]
    assert leftovers(tmp_path) == []


HOLD_THE_LOCK = """
import sys, time
from pathlib import Path
from fastmi.activations.locks import run_lock
lock = run_lock(Path(sys.argv[1]))
print("held", flush=True)
sys.stdin.readline()
lock.release()
"""


def test_the_run_lock_keeps_out_another_process_until_it_is_released(tmp_path):
    from fastmi.activations.locks import RUN_LOCK, run_lock

    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_THE_LOCK, str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RuntimeError, match="another process is extracting"):
            run_lock(tmp_path)
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.wait(timeout=60) == 0
    finally:
        holder.kill()
    run_lock(tmp_path).release()
    assert (tmp_path / RUN_LOCK).exists()  # the lock file stays, under its old name

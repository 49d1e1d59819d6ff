"""The Python API inside a program that initialised torch.distributed itself (2 gloo processes,
torch.multiprocessing): extract writes the one-process cache; recoverability on raw tensors returns
the one-process table on every rank, both with no directory (groups are exchanged through
torch.distributed) and resuming from groups saved earlier (what is left is spread over the ranks)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from tiny import make_tiny_model, random_sentences

import fastmi
import fastmi.probe.group_fit
from fastmi.probe.training import TrainConfig, probe_bytes

SENTENCES = random_sentences(30, seed=6, min_words=1)
TRAIN = TrainConfig(max_epochs=2)


def one_group_per_layer(cache) -> int:
    return probe_bytes(cache.num_rows, cache.hidden_size, len(torch.unique(cache.targets.ids)), TRAIN.batch_size)


def _worker(rank: int, root: str, model: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{root}/store", rank=rank, world_size=2)
    try:
        cache = fastmi.extract(
            model, SENTENCES, cache_dir=Path(root) / "two", shard_rows=7, batch_size=4, progress=False
        )
        tensors = {layer: cache.embeddings(layer) for layer in cache.layers}
        kwargs = dict(
            targets=cache.targets,
            vocab_size=int(cache.metadata["vocab_size"]),
            train=TRAIN,
            max_memory=one_group_per_layer(cache),
            progress=False,
        )
        in_memory = fastmi.recoverability(tensors, **kwargs)
        fits = []
        real_fit = fastmi.probe.group_fit.fit_heads
        fastmi.probe.group_fit.fit_heads = lambda *a, **k: fits.append(1) or real_fit(*a, **k)
        resumed = fastmi.recoverability(tensors, checkpoint_dir=Path(root) / "groups", **kwargs)
        (Path(root) / f"rank{rank}.json").write_text(
            json.dumps({"in_memory": in_memory.table, "resumed": resumed.table, "trained_groups": len(fits)})
        )
    finally:
        torch.distributed.destroy_process_group()


def test_api_under_an_initialised_process_group(tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("FASTMI_HOME", str(tmp_path / "home"))
    model = str(make_tiny_model("gpt2", tmp_path / "gpt2", hidden=16, layers=3))
    # One process first: its cache, and its probe saved group by group; then two groups are lost.
    cache = fastmi.extract(model, SENTENCES, cache_dir=tmp_path / "one", shard_rows=7, batch_size=4, progress=False)
    tensors = {layer: cache.embeddings(layer) for layer in cache.layers}
    mine = fastmi.recoverability(
        tensors,
        targets=cache.targets,
        vocab_size=int(cache.metadata["vocab_size"]),
        train=TRAIN,
        max_memory=one_group_per_layer(cache),
        progress=False,
        checkpoint_dir=tmp_path / "groups",
    )
    assert mine.config["layer_groups"] == [[0], [1], [2], [3]]
    saved = sorted((tmp_path / "groups").rglob("group_*.json"))
    assert len(saved) == 4
    for path in saved[1:3]:
        path.unlink()

    mp.start_processes(_worker, args=(str(tmp_path), model), nprocs=2, join=True, start_method="spawn")

    for path in sorted((tmp_path / "one").rglob("*.safetensors")):
        assert (tmp_path / "two" / path.relative_to(tmp_path / "one")).read_bytes() == path.read_bytes()
    assert len(list((tmp_path / "groups").rglob("group_*.json"))) == 4
    expected = json.loads(json.dumps(mine.table))
    for rank in (0, 1):
        report = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert report["trained_groups"] == 1  # the two lost groups, one per rank
        assert report["resumed"][0] == expected[0]  # a saved group is read back exactly
        for theirs in (report["resumed"], report["in_memory"]):
            assert [r["layer"] for r in theirs] == [0, 1, 2, 3]
            for a, b in zip(expected, theirs):
                for column, value in a.items():
                    if isinstance(value, float):
                        assert b[column] == pytest.approx(value, abs=1e-6), (rank, a["layer"], column)
                    else:
                        assert b[column] == value, (rank, a["layer"], column)


def test_an_error_of_rank_0_opening_the_cache_reaches_every_rank(monkeypatch):
    from fastmi.runtime import distributed

    sent = []
    monkeypatch.setattr(distributed, "broadcast", lambda value, src=0: sent.append(value) or value)

    def refuse():
        raise ValueError("the cache at X was built for another pooling")

    def prepared(rank, attach=None):
        return distributed.prepared_by_main(refuse, attach, "open the cache", distributed.Context(rank=rank, world=2))

    with pytest.raises(ValueError, match="another pooling"):  # rank 0 raises it and tells the others
        prepared(0)
    assert sent == [("ValueError", "the cache at X was built for another pooling")]

    monkeypatch.setattr(distributed, "broadcast", lambda value, src=0: sent[0])
    with pytest.raises(ValueError, match="rank 0 could not open the cache: the cache at X was built for another"):
        prepared(1)
    monkeypatch.setattr(distributed, "broadcast", lambda value, src=0: ("ok", [(1, [0, 2])]))
    assert prepared(1, attach=lambda: "writer") == ("writer", [(1, [0, 2])])


def test_probe_groups_are_dealt_by_rank_0_s_list_and_gathered_on_every_rank(monkeypatch, tmp_path):
    """GroupExchange: only rank 0 lists the unsaved groups, each rank takes its round-robin share;
    results come back through files (a barrier) or from every rank (in memory)."""
    from fastmi.runtime import distributed
    from fastmi.runtime.group_exchange import GroupExchange

    listed = [[0], [1], [2], [3], [4]]
    monkeypatch.setattr(distributed, "broadcast", lambda value, src=0: ("ok", listed))  # rank 0's list
    first, second = (GroupExchange(distributed.Context(rank=r, world=2)) for r in (0, 1))
    assert second.deal(lambda: pytest.fail("only rank 0 lists the saved groups")) == [[1], [3]]
    monkeypatch.setattr(distributed, "broadcast", lambda value, src=0: value)
    assert first.deal(lambda: listed) == [[0], [2], [4]]

    waits = []
    monkeypatch.setattr(distributed, "barrier", lambda: waits.append(1))
    monkeypatch.setattr(distributed, "all_gather", lambda value: [{(0,): "a", (2,): "c"}, value])
    assert second.gather({(1,): "b"}, in_files=True) == {(1,): "b"} and waits == [1]  # the rest is read from files
    assert second.gather({(1,): "b"}, in_files=False) == {(0,): "a", (2,): "c", (1,): "b"}

    # A directory rank 0 cannot make: every rank hears why, and all fall back to memory together.
    blocker = tmp_path / "a file"
    blocker.write_text("")
    monkeypatch.setattr(distributed, "broadcast", lambda value, src=0: value)
    reason = first.make_directory(blocker / "groups")
    assert reason and "a file" in reason
    monkeypatch.setattr(distributed, "broadcast", lambda value, src=0: ("ok", reason))
    assert second.make_directory(tmp_path / "never made") == reason
    assert not (tmp_path / "never made").exists()
    assert GroupExchange(distributed.Context()).make_directory(tmp_path / "made") is None
    assert (tmp_path / "made").is_dir()

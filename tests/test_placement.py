"""Models larger than one device: accelerate's CPU and disk offload gives the cache an in-memory
model gives; the replica and work-sharing arithmetic of multi-process runs."""

from __future__ import annotations

import pytest
import torch
from tiny import make_tiny_model, random_sentences

import fastmi
from fastmi.cli import main
from fastmi.models.placement import accelerate_kwargs, input_device
from fastmi.runtime.distributed import Context, my_share
from fastmi.runtime.replicas import parse_max_memory, replica_devices, replica_max_memory

SENTENCES = random_sentences(14, seed=9, min_words=1)
SETTINGS = dict(batch_size=4, shard_rows=5, progress=False)


@pytest.fixture(autouse=True)
def _fastmi_home(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTMI_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return str(make_tiny_model("llama", tmp_path_factory.mktemp("offload") / "llama", hidden=16, layers=3))


def cache_files(directory) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*.safetensors"))}


def test_a_model_offloaded_to_cpu_and_disk_gives_the_in_memory_cache(llama, tmp_path):
    in_memory = fastmi.extract(llama, SENTENCES, cache_dir=tmp_path / "memory", **SETTINGS)
    # ~30 KB of CPU budget holds the embeddings and the first block; the rest goes to disk.
    offloaded = fastmi.load_model(llama, max_memory="cpu=30KB", offload_dir=tmp_path / "offload")
    placed = set(offloaded.model.hf_device_map.values())
    assert placed == {"cpu", "disk"}, offloaded.model.hf_device_map
    # Really not in memory: disk-offloaded weights are read from the checkpoint's safetensors as
    # the forward reaches them (accelerate copies to offload_dir only weights it cannot map).
    assert any(p.device.type == "meta" for p in offloaded.model.parameters())
    cache = fastmi.extract(offloaded, SENTENCES, cache_dir=tmp_path / "offloaded", **SETTINGS)
    assert cache.layers == in_memory.layers == [0, 1, 2, 3]
    assert cache_files(cache.directory) == cache_files(in_memory.directory)


def test_a_model_wholly_on_disk_still_finds_its_input_device(llama, tmp_path):
    loaded = fastmi.load_model(llama, max_memory="1KB", offload_dir=tmp_path / "offload")  # bare size: CPU budget
    assert loaded.model.get_input_embeddings().weight.device.type == "meta"
    assert input_device(loaded.model) == torch.device("cpu") == loaded.device
    reference = fastmi.extract(llama, SENTENCES[:5], cache_dir=tmp_path / "a", **SETTINGS)
    cache = fastmi.extract(loaded, SENTENCES[:5], cache_dir=tmp_path / "b", **SETTINGS)
    assert cache_files(cache.directory) == cache_files(reference.directory)


def test_cli_offload_flags(llama, tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(SENTENCES) + "\n")
    common = ["extract", "--model", llama, "--corpus", str(corpus), "--shard-rows", "5", "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "a")]) == 0
    assert (
        main(
            [
                *common,
                "--out",
                str(tmp_path / "b"),
                "--max-memory",
                "cpu=30KB",
                "--offload-dir",
                str(tmp_path / "offload"),
            ]
        )
        == 0
    )
    assert cache_files(tmp_path / "a") == cache_files(tmp_path / "b")
    assert main([*common, "--out", str(tmp_path / "c"), "--max-memory", "cpu=30KB,banana=1GB"]) == 2
    assert "cannot read --max-memory" in capsys.readouterr().err


def test_replicas_take_consecutive_gpus():
    # 8 GPUs, a model that needs 2: 4 ranks per node, rank r on GPUs 2r and 2r + 1.
    assert [replica_devices(r, 4, 8, 2) for r in range(4)] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert [replica_devices(r, 8, 8, 1) for r in range(8)] == [[r] for r in range(8)]
    assert replica_devices(1, 2, 8, 3) == [3, 4, 5]  # 2 of the 8 GPUs idle, allowed
    with pytest.raises(ValueError, match="need 16 GPUs, this node has 8; launch 4 processes per node"):
        replica_devices(0, 8, 8, 2)
    with pytest.raises(ValueError, match="at least 1"):
        replica_devices(0, 1, 8, 0)
    with pytest.raises(ValueError, match="outside"):
        replica_devices(4, 4, 8, 2)


def test_max_memory_is_read_and_restricted_to_the_replica():
    assert parse_max_memory("0=70GiB, 1=70GiB,cpu=200GiB") == {0: "70GiB", 1: "70GiB", "cpu": "200GiB"}
    assert parse_max_memory("70GiB") == {"gpu": "70GiB"}
    with pytest.raises(ValueError, match="cannot read --max-memory"):
        parse_max_memory("0=")
    assert replica_max_memory({"gpu": "60GiB", "cpu": "100GiB"}, [2, 3]) == {2: "60GiB", 3: "60GiB", "cpu": "100GiB"}
    assert replica_max_memory({2: "10GiB", "gpu": "60GiB"}, [2, 3]) == {2: "10GiB", 3: "60GiB"}
    with pytest.raises(ValueError, match="names GPUs \\[0\\], but this replica owns GPUs \\[2, 3\\]"):
        replica_max_memory({0: "10GiB", "gpu": "1GiB"}, [2, 3])
    # Without GPUs a bare size is the CPU budget; the disk folder is created.
    assert accelerate_kwargs("cpu", "2GiB", None) == {"device_map": "auto", "max_memory": {"cpu": "2GiB"}}
    assert accelerate_kwargs("cpu", "cpu=1GiB", None, gpus=[]) == {"device_map": "auto", "max_memory": {"cpu": "1GiB"}}


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_ranks_share_work_disjointly_and_completely(world):
    items = list(range(11))
    shares = [my_share(items, Context(rank=r, world=world)) for r in range(world)]
    assert sorted(x for share in shares for x in share) == items
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_ranks_taking_turns_get_each_item_once(monkeypatch):
    """ShardQueue: a counter in the group's store hands each item to whichever rank asks next."""
    import fastmi.runtime.distributed as distributed
    from fastmi.runtime.shard_queue import ShardQueue

    store = torch.distributed.HashStore()
    monkeypatch.setattr(distributed, "group_store", lambda: store)
    items = [f"shard {i}" for i in range(7)]
    fast, slow = (iter(ShardQueue(items, "queue", Context(rank=r, world=2))) for r in (0, 1))
    taken = {1: [next(slow)]}  # rank 1 asks first, then rank 0 takes three while rank 1 works
    taken[0] = [next(fast), next(fast), next(fast)]
    taken[1] += list(slow)  # rank 1 takes the rest
    taken[0] += list(fast)  # nothing is left
    assert taken == {0: items[1:4], 1: [items[0], *items[4:]]}
    assert list(ShardQueue(items, "another queue", Context(rank=1, world=2))) == items  # its own counter
    assert list(ShardQueue(items, "unused", Context())) == items  # one process: everything


def test_the_shard_queue_adds_up_what_every_rank_finished(monkeypatch):
    """Rank 0's progress bar counts the whole job: each rank's finish() adds to one total."""
    import fastmi.runtime.distributed as distributed
    from fastmi.runtime.shard_queue import ShardQueue

    store = torch.distributed.HashStore()
    monkeypatch.setattr(distributed, "group_store", lambda: store)
    main, other = (ShardQueue(["a", "b", "c"], "sizes", Context(rank=r, world=2)) for r in (0, 1))
    assert main.finish(10) == 10
    assert other.finish(7) == 17  # rank 1's shard, seen in the total
    assert main.finish(3) == 20
    alone = ShardQueue(["a", "b"], "sizes", Context())  # one process: its own count, no store
    assert (alone.finish(4), alone.finish(5)) == (4, 9)


def test_a_queue_listed_by_rank_0_reaches_every_rank_under_one_name(monkeypatch):
    import fastmi.runtime.distributed as distributed
    from fastmi.runtime.shard_queue import ShardQueue

    sent = []
    monkeypatch.setattr(distributed, "context", lambda: Context(rank=0, world=2))
    monkeypatch.setattr(distributed, "broadcast", lambda value, src=0: sent.append(value) or value)
    resource, queue = ShardQueue.listed_by_main(lambda: ("writer", [(0, [1]), (2, [0, 1])]), None, "open it")
    assert resource == "writer" and queue.items == [(0, [1]), (2, [0, 1])]
    ((status, (items, name)),) = sent
    assert status == "ok" and items == queue.items and name == queue.name
    monkeypatch.setattr(distributed, "context", lambda: Context(rank=1, world=2))
    monkeypatch.setattr(distributed, "broadcast", lambda value, src=0: sent[0])  # what rank 0 sent
    opened = ShardQueue.listed_by_main(lambda: pytest.fail("only rank 0 lists the work"), lambda: "attached", "x")
    assert opened[0] == "attached" and (opened[1].items, opened[1].name) == (items, name)


def test_each_rank_gets_its_own_devices(monkeypatch):
    from fastmi.models.placement import rank_devices

    second_of_four = Context(rank=1, world=4, local_rank=1, local_world=4)
    assert rank_devices("cpu", 1, second_of_four) == ("cpu", None)
    assert rank_devices("cuda", 1, second_of_four) == ("cuda:1", None)  # one GPU per rank
    assert rank_devices("cuda:5", 1, second_of_four) == ("cuda:5", None)  # asked for explicitly
    assert rank_devices("cuda", 1, Context()) == ("cuda", None)  # one process: as given
    with pytest.raises(ValueError, match="needs CUDA GPUs"):
        rank_devices("cuda", 2, second_of_four)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    assert rank_devices("cuda", 2, second_of_four) == ("auto", [2, 3])  # a replica over 2 GPUs
    assert rank_devices("auto", 1, second_of_four) == ("auto", [2, 3])  # "all GPUs": this rank's share
    with pytest.raises(ValueError, match="launch 2 processes per node"):
        rank_devices("cuda", 4, second_of_four)


def test_each_rank_probes_on_the_first_gpu_of_its_replica(monkeypatch):
    from fastmi.runtime.replicas import probe_device

    second_of_four = Context(rank=1, world=4, local_rank=1, local_world=4)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert probe_device(None, 1, second_of_four) == "cuda:1"
    assert probe_device("cuda", 2, second_of_four) == "cuda:2"  # its replica holds GPUs 2 and 3
    assert probe_device("cuda:7", 2, second_of_four) == "cuda:7"  # asked for explicitly
    assert probe_device("cpu", 1, second_of_four) == "cpu"
    assert probe_device(None, 1, Context()) is None  # one process: the probe's own default
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert probe_device(None, 1, second_of_four) is None


def test_fewer_shards_than_ranks_are_said_once(capsys):
    from fastmi.runtime.shard_queue import ShardQueue

    hint = "pass a smaller shard_rows (--shard-rows)"
    ShardQueue([1, 2], "q", Context(rank=0, world=3)).note_idle_ranks("shard(s)", hint)
    assert capsys.readouterr().err.strip() == (
        "fastmi: 2 unfinished shard(s) for 3 processes: some have nothing to do; " + hint
    )
    for items, world in (([1, 2, 3], 3), ([], 3), ([1], 1)):  # enough work, none at all, one process
        ShardQueue(items, "q", Context(rank=0, world=world)).note_idle_ranks("shard(s)", hint)
    assert capsys.readouterr().err == ""

"""Notices are said once per job: under torchrun only rank 0 writes them (the README's promise), by
torch.distributed's rank once a group exists, else by the RANK that torchrun sets."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from fastmi.runtime.notices import notice


@pytest.mark.parametrize("rank,said", [(None, True), ("0", True), ("1", False), ("3", False)])
def test_a_notice_is_written_by_rank_0_only(monkeypatch, capsys, rank, said):
    if rank is None:
        monkeypatch.delenv("RANK", raising=False)
    else:
        monkeypatch.setenv("RANK", rank)
    notice("the activation cache at X is already complete; nothing to extract")
    err = capsys.readouterr().err
    assert ("fastmi: the activation cache at X is already complete" in err) == said


def _worker(rank: int, root: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{root}/store", rank=rank, world_size=2)
    try:
        with open(Path(root) / f"rank{rank}.err", "w") as sink, contextlib.redirect_stderr(sink):
            notice(f"said by rank {rank}")
    finally:
        torch.distributed.destroy_process_group()


def test_two_gloo_processes_say_a_notice_once(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "0")  # inherited by both: the process group's rank must decide, not this
    mp.start_processes(_worker, args=(str(tmp_path),), nprocs=2, join=True, start_method="spawn")
    assert (tmp_path / "rank0.err").read_text() == "fastmi: said by rank 0\n"
    assert (tmp_path / "rank1.err").read_text() == ""

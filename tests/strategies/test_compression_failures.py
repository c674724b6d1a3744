"""The Top-K compression hook when a collective fails: the surviving rank sees the collective's error.

Two gloo processes train one layer through DDP with the hook. Rank 1 stops early, killed with SIGKILL or simply
out of batches (8 against rank 0's 12); rank 0's next all-gather fails, and what it raises must be that failure,
not an error of decoding the (never received) entries, nor garbage added to its gradient.
"""

from __future__ import annotations

import json
import os
import signal
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from lit_microopt.strategies import TopKCompression, TopKCompressionState, topk_compression_hook
from tests.strategies.distributed import free_port


def train_until_rank_one_stops(rank: int, world_size: int, port: int, how: str, outcome_file: str) -> None:
    """Rank 0 takes 12 steps, rank 1 takes 8, then dies (``how="kill"``) or leaves; rank 0 writes what it raised."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    torch.manual_seed(0)
    layer = torch.nn.Linear(256, 64, bias=False)
    model = DistributedDataParallel(layer)
    state = TopKCompressionState(TopKCompression(density=0.02, block_size=1024))
    model.register_comm_hook(state, topk_compression_hook)
    batches = 12 if rank == 0 else 8
    outcome = {"steps": 0, "error": None, "message": "", "finite": True}
    try:
        for step in range(batches):
            layer.weight.grad = None
            model(torch.randn(8, 256)).square().sum().backward()
            outcome["finite"] = outcome["finite"] and bool(layer.weight.grad.isfinite().all())
            outcome["steps"] = step + 1
    except Exception as error:  # what the test checks: the type and message of the first failure
        outcome.update(error=type(error).__name__, message=str(error), trace=traceback.format_exc())
    if rank == 1:
        if how == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        os._exit(0)  # out of batches: leave without a goodbye, as a finished process does
    Path(outcome_file).write_text(json.dumps(outcome))
    os._exit(0)  # the group cannot be destroyed cleanly with a peer gone


@pytest.mark.parametrize("how", ["kill", "fewer_batches"])
def test_the_survivor_reports_the_failed_collective(tmp_path, how):
    outcome_file = tmp_path / "rank0.json"
    context = mp.get_context("spawn")
    port = free_port()
    processes = [context.Process(target=train_until_rank_one_stops, args=(rank, 2, port, how, str(outcome_file)))
                 for rank in range(2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    for process in processes:
        if process.is_alive():
            process.kill()
    assert processes[1].exitcode == (-signal.SIGKILL if how == "kill" else 0)
    outcome = json.loads(outcome_file.read_text())
    # Rank 0 got through the 8 steps both ranks took, then failed in the ninth, with gloo's own error.
    assert outcome["steps"] == 8, outcome
    assert outcome["error"] is not None, "the survivor went on as if the collective had worked"
    assert "IndexError" not in (outcome["error"], outcome["message"]), outcome["trace"]
    assert any(word in outcome["message"].lower() for word in ("connection", "closed", "peer", "gloo")), outcome
    assert outcome["finite"]

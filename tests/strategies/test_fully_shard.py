"""MicroAdam and Adam-mini on FSDP2 (``fully_shard``, DTensor parameters sharded along dim 0), on two gloo CPU ranks.

Each rank reads the same batch, so the averaged gradient is the whole-batch gradient and a sharded run can be
compared with an unsharded one in the same process. FSDP1 needs a GPU: its test is CUDA-marked (scripts/gpu_check.sh).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from lit_microopt.optim import AdamMini, MicroAdam
from tests.conftest import requires_cuda
from tests.strategies.distributed import spawn


def tiny_model() -> torch.nn.Module:
    # Every shard of 2 ranks is a multiple of 8 elements but one (the 5-row "odd" weight: 3 and 2 rows), so that
    # MicroAdam's blocks of 8 fall alike in the whole and in the sharded model.
    torch.manual_seed(0)
    return torch.nn.Sequential(OrderedDict(
        embed=torch.nn.Embedding(48, 16), q_proj=torch.nn.Linear(16, 16, bias=False),
        norm=torch.nn.LayerNorm(16), odd=torch.nn.Linear(16, 5, bias=False), head=torch.nn.Linear(5, 48),
    ))


def build(kind: str, model: torch.nn.Module) -> torch.optim.Optimizer:
    if kind == "MicroAdam":
        return MicroAdam(model.named_parameters(), lr=1e-2, m=4, density=0.25, block_size=8, quant_bucket_size=8)
    return AdamMini(model.named_parameters(), lr=1e-2, n_heads=2, weight_decay=0.1)


def shard(model: torch.nn.Module, world_size: int) -> torch.nn.Module:
    mesh = init_device_mesh("cpu", (world_size,))
    for module in model:
        fully_shard(module, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def train(model: torch.nn.Module, optimizer: torch.optim.Optimizer, steps: range) -> None:
    for step in steps:
        tokens = torch.randint(0, 48, (4, 6), generator=torch.Generator().manual_seed(step))
        loss = torch.nn.functional.cross_entropy(model(tokens).flatten(0, 1), tokens.roll(1, 1).flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def full(param: torch.Tensor) -> torch.Tensor:
    return param.full_tensor() if isinstance(param, DTensor) else param


def local(value: torch.Tensor) -> torch.Tensor:
    # Not full(): gloo and NCCL gather no int16 (MicroAdam's window indices).
    return value.to_local() if isinstance(value, DTensor) else value


def assert_close(sharded: torch.nn.Module, whole: torch.nn.Module, exact: bool) -> None:
    for (name, a), b in zip(sharded.named_parameters(), whole.parameters()):
        if exact:
            assert torch.equal(full(a), full(b)), name
        else:
            torch.testing.assert_close(full(a), full(b), rtol=1e-5, atol=1e-6, msg=name)


def check_training(rank: int, world_size: int, kind: str, folder: str) -> None:
    whole_model = tiny_model()
    model = shard(copy.deepcopy(whole_model), world_size)
    optimizer, whole = build(kind, model), build(kind, whole_model)
    train(model, optimizer, range(3))
    train(whole_model, whole, range(3))
    # MicroAdam's updates are element-wise once its blocks match: exact. Adam-mini sums a norm's statistics
    # over the ranks: equal up to float rounding.
    assert_close(model, whole_model, exact=kind == "MicroAdam")

    # The state is sharded like the parameters: a distributed checkpoint saves and restores it.
    state = optimizer.state[model.odd.weight]
    sharded_key = "error_feedback" if kind == "MicroAdam" else "exp_avg"
    assert isinstance(state[sharded_key], DTensor)
    dcp.save(get_optimizer_state_dict(model, optimizer), checkpoint_id=folder)
    restored_model = shard(tiny_model(), world_size)
    with torch.no_grad():
        for restored_param, param in zip(restored_model.parameters(), model.parameters()):
            restored_param.to_local().copy_(param.to_local())
    restored = build(kind, restored_model)
    template = get_optimizer_state_dict(restored_model, restored)
    dcp.load(template, checkpoint_id=folder)
    set_optimizer_state_dict(restored_model, restored, template)
    for name, param in restored_model.named_parameters():
        for key, value in restored.state[param].items():
            saved = optimizer.state[dict(model.named_parameters())[name]][key]
            assert torch.equal(local(value), local(saved)), (name, key)
    train(model, optimizer, range(3, 5))
    train(restored_model, restored, range(3, 5))
    assert_close(restored_model, model, exact=True)

    # A NaN in one rank's shard stops both ranks.
    tokens = torch.randint(0, 48, (4, 6), generator=torch.Generator().manual_seed(9))
    model(tokens).sum().backward()
    if rank == 1:
        model.embed.weight.grad.to_local().view(-1)[0] = float("nan")
    with pytest.raises(FloatingPointError, match="non-finite gradient .* in embed.weight"):
        optimizer.step()


def check_head_cut(rank: int, world_size: int) -> None:
    attention = torch.nn.Sequential(OrderedDict(q_proj=torch.nn.Linear(8, 12, bias=False)))  # 3 heads of 4 rows
    shard(attention, world_size)  # 6 rows a rank: the second head is cut in two
    with pytest.raises(ValueError, match="the sharding of q_proj.weight cuts a block of 4 rows"):
        AdamMini(attention.named_parameters(), n_heads=3)
    MicroAdam(attention.named_parameters())  # MicroAdam has no blocks to cut


def check_all(rank: int, world_size: int, folder: str) -> None:
    # One pair of processes for everything: starting them is the slow part.
    for kind in ("MicroAdam", "AdamMini"):
        check_training(rank, world_size, kind, os.path.join(folder, kind))
    check_head_cut(rank, world_size)


def test_sharded_training_matches_whole_training_checkpoints_and_refuses_a_cut_head(tmp_path):
    spawn(check_all, 2, str(tmp_path))


def test_a_flattened_fsdp1_shard_is_refused_with_the_fix():
    class FlatParameter(torch.nn.Parameter):  # FSDP1's class, by name (FSDP1 itself needs a GPU, see below)
        pass

    flattened = torch.nn.Parameter(torch.zeros(8))
    flattened._fsdp_flattened = True  # what FSDP1 marks the views of use_orig_params=True with
    for param in (FlatParameter(torch.zeros(8)), flattened):
        with pytest.raises(ValueError, match="flattened shard .* shard with FSDP2 .* or train with DDP"):
            AdamMini([("layer.weight", param)])


@pytest.mark.cuda
@requires_cuda
def test_fsdp1_parameters_are_refused_on_a_gpu(tmp_path):
    from torch.distributed.fsdp import FullyShardedDataParallel

    dist.init_process_group("nccl", init_method=f"file://{Path(tmp_path) / 'store'}", rank=0, world_size=1)
    try:
        for use_orig_params in (False, True):
            model = FullyShardedDataParallel(torch.nn.Linear(8, 8).cuda(), use_orig_params=use_orig_params)
            with pytest.raises(ValueError, match="flattened shard"):
                AdamMini(model.named_parameters())
    finally:
        dist.destroy_process_group()


# -- through Lightning: ModelParallelStrategy on two CPU processes, as a user runs it --------------------------------

FULLY_SHARD_RUN = Path(__file__).with_name("fully_shard_run.yaml")


def fit(folder: Path, *overrides: str) -> dict[int, dict]:
    environment = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "lit_microopt", "fit", "--config", str(FULLY_SHARD_RUN), *overrides],
                            cwd=folder, env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return {rank: json.loads((folder / "record" / f"rank{rank}.json").read_text()) for rank in range(2)}


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["MicroAdam", "AdamMini"])
def test_model_parallel_strategy_trains_and_saves_a_distributed_checkpoint(tmp_path, optimizer):
    # (Restoring such a checkpoint, through the same torch.distributed.checkpoint calls as Lightning's, is tested
    # above, without Lightning.)
    records = fit(tmp_path, "--model.init_args.optimizer", optimizer)
    for record in records.values():
        assert record["optimizer"] == optimizer and record["steps"] == [4]
        assert record["losses"][-1] < 0.9 * record["losses"][0]
    assert records[0]["state_bytes"] == records[1]["state_bytes"] > 0  # equal shards of state
    assert (tmp_path / "checkpoints" / "last.ckpt" / "meta.pt").is_file()  # a distributed checkpoint
    assert sorted(path.name for path in (tmp_path / "checkpoints" / "last.ckpt").glob("*.distcp")) == [
        "__0_0.distcp", "__1_0.distcp"]

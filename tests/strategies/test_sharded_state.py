"""OptimizerStateSharding without Lightning: owners, exact updates, consolidation, loading on any number of ranks."""

from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import torch

from lit_microopt.optim import AdamMini, MicroAdam
from lit_microopt.strategies import OptimizerStateSharding, assign_owners
from lit_microopt.strategies.sharded_state import shard_optimizer
from tests.strategies.distributed import spawn


def test_owners_balance_the_elements_and_are_the_same_on_every_rank():
    sizes = [4096, 128, 4096, 64, 16384, 4096, 128, 8192]
    owners = assign_owners(sizes, world_size=2)
    loads = [sum(size for size, owner in zip(sizes, owners) if owner == rank) for rank in range(2)]
    # Largest first, each to the lighter rank: the loads differ by less than the largest parameter.
    assert loads == [20480, 16704] and owners == assign_owners(sizes, world_size=2)
    assert assign_owners(sizes, world_size=1) == [0] * len(sizes)
    assert sorted(set(assign_owners(sizes, world_size=3))) == [0, 1, 2]


def test_an_optimizer_without_per_parameter_state_is_refused_with_the_fix():
    optimizer = torch.optim.LBFGS(torch.nn.Linear(2, 2).parameters())
    with pytest.raises(TypeError, match=r"LBFGS is not known to keep per-parameter state; .*=False"):
        OptimizerStateSharding(optimizer)
    warnings = []
    assert shard_optimizer(optimizer, warn=warnings.append) is None
    assert "LBFGS's state is kept whole on every rank" in warnings[0]


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(OrderedDict(
        embed=torch.nn.Embedding(40, 16), q_proj=torch.nn.Linear(16, 16, bias=False),
        k_proj=torch.nn.Linear(16, 16, bias=False), norm=torch.nn.LayerNorm(16), head=torch.nn.Linear(16, 40),
    ))


def build(kind: str, model: torch.nn.Module) -> torch.optim.Optimizer:
    if kind == "MicroAdam":
        return MicroAdam(model.named_parameters(), lr=1e-2, m=4, density=0.25, block_size=64)
    return AdamMini(model.named_parameters(), lr=1e-2, n_heads=2, weight_decay=0.1)


def backward(model: torch.nn.Module, step: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(step)  # the same batch on every rank: gradients as after DDP
    tokens = torch.randint(0, 40, (4, 6), generator=generator)
    loss = torch.nn.functional.cross_entropy(model(tokens).flatten(0, 1), tokens.roll(1, 1).flatten())
    loss.backward()
    return loss


def train(model, optimizer, steps: range) -> None:
    for step in steps:
        if step % 2:  # the closure path, as Lightning calls step()
            optimizer.step(closure=lambda: backward(model, step))
        else:
            backward(model, step)
            optimizer.step()
        optimizer.zero_grad()


def assert_same(first: torch.nn.Module, second: torch.nn.Module) -> None:
    for (name, a), b in zip(first.named_parameters(), second.parameters()):
        assert torch.equal(a, b), name


def check_sharded_training(rank: int, world_size: int, kind: str) -> None:
    model, reference_model = tiny_model(), tiny_model()
    optimizer, reference = build(kind, model), build(kind, reference_model)
    sharding = OptimizerStateSharding(optimizer)
    sharding.attach()
    train(model, optimizer, range(3))
    train(reference_model, reference, range(3))
    assert_same(model, reference_model)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    assert {id(p) for p in optimizer.state} == {id(p) for p, owner in zip(params, sharding.owners) if owner == rank}

    consolidated = sharding.consolidated_state_dict(destination=0)
    if rank == 0:
        expected = reference.state_dict()
        assert consolidated["param_groups"] == expected["param_groups"]
        assert consolidated["state"].keys() == expected["state"].keys()
        for index, state in expected["state"].items():
            for key, value in state.items():
                assert torch.equal(consolidated["state"][index][key], value), (index, key)
    else:
        assert consolidated == {}

    # A full state (as an unsharded run saves it) loaded on two ranks: each keeps its share and training goes on
    # exactly as the unsharded optimizer's.
    resumed_model = copy.deepcopy(reference_model)
    resumed = build(kind, resumed_model)
    resumed_sharding = OptimizerStateSharding(resumed)
    resumed_sharding.attach()
    resumed_sharding.load_state_dict(reference.state_dict())
    assert len(resumed.state) == resumed_sharding.owners.count(rank)
    train(resumed_model, resumed, range(3, 5))
    train(reference_model, reference, range(3, 5))
    assert_same(resumed_model, reference_model)

    # A non-finite gradient stops every rank, not only its owner, and changes nothing.
    before = [p.detach().clone() for p in params]
    backward(model, 9)
    params[sharding.owners.index(1)].grad.view(-1)[0] = float("nan")
    with pytest.raises(FloatingPointError, match="non-finite gradient"):
        optimizer.step()
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    sharding.detach()


def check_both_optimizers(rank: int, world_size: int) -> None:
    for kind in ("MicroAdam", "AdamMini"):  # one pair of processes for both: starting them is the slow part
        check_sharded_training(rank, world_size, kind)


def test_two_ranks_step_their_share_and_agree_with_one_unsharded_optimizer():
    spawn(check_both_optimizers, 2)


def test_a_state_dict_for_other_parameters_is_refused():
    class OneRank(OptimizerStateSharding):  # the checks only, without a process group
        def __init__(self, optimizer):
            self.optimizer, self.rank, self.owners = optimizer, 0, [0, 0]

    optimizer = build("MicroAdam", torch.nn.Linear(3, 3))
    with pytest.raises(ValueError, match="state for parameter 5, but the optimizer has 2 parameters"):
        OneRank(optimizer).local_state_dict({"state": {5: {}}, "param_groups": optimizer.state_dict()["param_groups"]})

"""MicroOptDDPStrategy end to end: ``python -m lit_microopt fit`` on two CPU processes (gloo), as a user runs it.

Every run is configs/quickstart.yaml with its overlay quickstart_ddp.yaml, shrunk by tiny_run.yaml (24 steps of
2 x 16 problems, validation loss on 64 held-out problems, no schedule); ``RecordRun`` writes what each rank ends with. Runs are made once, when a test
first needs them, and shared by the tests of this module.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lit_microopt.optim import MicroAdam

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
CONFIG = ROOT / "configs" / "quickstart_ddp.yaml"  # an overlay of the quickstart
TINY_RUN = Path(__file__).with_name("tiny_run.yaml")
STEPS_PER_EPOCH = 768 // (2 * 16)
ADAM_MINI = ["--model.init_args.optimizer",
             '{"class_path": "lit_microopt.optim.adam_mini.AdamMini", "init_args": {"lr": 0.001}}',
             "--data.init_args.train_size", "256"]
#: Each run's command-line overrides of the two configs, and the run (if any) whose checkpoint it resumes.
RUNS = {
    "dense": (["--trainer.strategy", "ddp"], None),  # Lightning's own DDP: the baseline
    "sharded": (["--trainer.strategy", "microopt_ddp_sharded"], None),
    "sharded_compressed": ([], None),  # the config as it is: sharded state, Top-K gradients
    "adam_mini_sharded": (["--trainer.strategy", "microopt_ddp_sharded", *ADAM_MINI], None),
    # One process, Lightning's default strategy, from the two-process sharded checkpoint. The other way round (a
    # full state loaded on two ranks) is tested without Lightning in test_sharded_state.py.
    "resumed_on_one": (["--trainer.devices", "1", "--trainer.strategy", "auto", "--trainer.max_epochs", "2"],
                       "sharded"),
}

pytestmark = pytest.mark.slow


class Run:
    """One finished run: its folder, output, per-rank records, parameters and checkpoint."""

    def __init__(self, folder: Path, output: str) -> None:
        self.folder, self.output = folder, output
        self.records = [json.loads(path.read_text()) for path in sorted((folder / "record").glob("rank*.json"))]
        self.parameters = [torch.load(path) for path in sorted((folder / "record").glob("rank*.pt"))]
        self.checkpoint_path = folder / "checkpoints" / "last.ckpt"

    def checkpoint(self) -> dict:
        return torch.load(self.checkpoint_path, weights_only=False)

    def base_val_loss(self) -> float:
        return float(re.search(r"Before training, on the whole validation set: val_loss ([0-9.]+)", self.output)[1])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    made: dict[str, Run] = {}

    def get(name: str) -> Run:
        if name not in made:
            overrides, resumes = RUNS[name]
            folder = tmp_path_factory.mktemp(name)
            if resumes is not None:
                overrides = [*overrides, "--ckpt_path", str(get(resumes).checkpoint_path)]
            environment = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
            result = subprocess.run(
                [sys.executable, "-m", "lit_microopt", "fit", "--config", str(QUICKSTART), "--config", str(CONFIG),
                 "--config", str(TINY_RUN), *overrides], cwd=folder, env=environment, capture_output=True, text=True, timeout=300,
            )
            assert result.returncode == 0, f"run {name} failed:\n{result.stderr[-4000:]}"
            made[name] = Run(folder, result.stdout + result.stderr)
        return made[name]

    return get


def assert_same_parameters(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> None:
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name


@pytest.mark.parametrize("name", ["sharded", "sharded_compressed", "adam_mini_sharded"])
def test_every_rank_ends_with_the_same_parameters(runs, name):
    run = runs(name)
    assert [record["world_size"] for record in run.records] == [2, 2]
    assert_same_parameters(*run.parameters)


def test_sharded_state_gives_the_parameters_of_plain_ddp_exactly(runs):
    # Sharding by whole parameters changes who computes an update, not the update: tolerance zero. (Adam-mini's
    # sharded and unsharded updates are compared without Lightning in test_sharded_state.py.)
    assert_same_parameters(runs("sharded").parameters[0], runs("dense").parameters[0])


def test_each_rank_keeps_about_half_of_the_state(runs):
    whole = runs("dense").records[0]
    shares = [record["state_bytes"] for record in runs("sharded").records]
    assert sum(shares) == whole["state_bytes"]
    for share in shares:
        assert 0.45 < share / whole["state_bytes"] < 0.55
    assert sum(record["parameters_with_state"] for record in runs("sharded").records) == whole["parameters"]
    # Adam-mini: half of its first moment each (its v is a few numbers per block).
    adam_mini = [record["state_bytes"] for record in runs("adam_mini_sharded").records]
    assert 0.45 < adam_mini[0] / sum(adam_mini) < 0.55
    assert sum(record["parameters_with_state"] for record in runs("adam_mini_sharded").records) == whole["parameters"]


def test_the_checkpoint_holds_the_unsharded_optimizer_state(runs):
    sharded, dense = runs("sharded").checkpoint(), runs("dense").checkpoint()
    [consolidated], [whole] = sharded["optimizer_states"], dense["optimizer_states"]
    assert consolidated["param_groups"] == whole["param_groups"]
    assert consolidated["state"].keys() == whole["state"].keys() == set(range(whole_parameters(whole)))
    for index, state in whole["state"].items():
        for key, value in state.items():
            assert consolidated["state"][index][key].dtype == value.dtype
            assert torch.equal(consolidated["state"][index][key], value), (index, key)


def whole_parameters(state_dict: dict) -> int:
    return sum(len(group["params"]) for group in state_dict["param_groups"])


def test_a_run_resumes_on_another_number_of_processes(runs):
    saved = runs("sharded").checkpoint()["optimizer_states"][0]
    one = runs("resumed_on_one")
    assert [record["world_size"] for record in one.records] == [1]
    on_one = one.checkpoint()["optimizer_states"][0]
    # The state went on: every parameter's step count is the two-process steps plus the one-process epoch's.
    steps = {int(state["step"]) for state in on_one["state"].values()}
    assert steps == {STEPS_PER_EPOCH + 2 * STEPS_PER_EPOCH}
    assert on_one["state"].keys() == saved["state"].keys()
    group = saved["param_groups"][0]
    for index, state in on_one["state"].items():
        numel = runs("sharded").parameters[0]["model." + group["param_names"][index]].numel()  # CausalLM.model
        for key, (shape, dtype) in MicroAdam.expected_state_shapes(numel, group).items():
            assert tuple(state[key].shape) == shape and state[key].dtype == dtype


def test_compressed_gradients_are_what_ddp_sent(runs):
    compressed, dense = runs("sharded_compressed"), runs("dense")
    assert [record["comm_hook"] for record in compressed.records] == ["topk_compression_hook"] * 2
    assert dense.records[0]["comm_hook"] is None
    for record in compressed.records:
        # Index and value bytes over a dense float32 all-reduce's, density 0.01 (the first step is dense).
        assert record["bytes_sent"] / record["dense_bytes"] <= 0.0105


def test_the_loss_falls_as_with_dense_gradients(runs):
    compressed, dense = runs("sharded_compressed"), runs("dense")
    base = dense.base_val_loss()
    dense_loss, compressed_loss = dense.records[0]["val_loss"], compressed.records[0]["val_loss"]
    assert dense_loss < 0.5 * base and compressed_loss < 0.5 * base  # 2.99 -> 1.17 and 1.20 when written
    assert compressed_loss < 1.1 * dense_loss

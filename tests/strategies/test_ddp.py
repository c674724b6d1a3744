"""MicroOptDDPStrategy as an object: its registry names, its arguments, pickling for spawned processes, and the
check of a checkpoint's compression state."""

from __future__ import annotations

import dataclasses
import pickle

import pytest
from lightning.pytorch import Trainer
from lightning.pytorch.strategies import StrategyRegistry
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

from lit_microopt.strategies import MicroOptDDPStrategy, TopKCompression, TopKCompressionState, topk_compression_hook
from lit_microopt.strategies.ddp import COMPRESSION_CHECKPOINT_KEY


@pytest.mark.parametrize(
    ("name", "sharded", "compressed", "start_method"),
    [
        ("microopt_ddp", True, True, "popen"),
        ("microopt_ddp_spawn", True, True, "spawn"),
        ("microopt_ddp_sharded", True, False, "popen"),
        ("microopt_ddp_compressed", False, True, "popen"),
    ],
)
def test_a_registered_name_gives_the_trainer_the_strategy(name, sharded, compressed, start_method):
    assert name in StrategyRegistry
    trainer = Trainer(accelerator="cpu", devices=2, strategy=name, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    strategy = trainer.strategy
    assert isinstance(strategy, MicroOptDDPStrategy)
    assert strategy.shard_optimizer_state is sharded and strategy._start_method == start_method
    assert (strategy.gradient_compression == TopKCompression()) is compressed
    assert (strategy._ddp_comm_hook is topk_compression_hook) is compressed
    assert (strategy.compression_state is not None) is compressed


def test_registering_again_keeps_the_names():
    before = {name: StrategyRegistry[name] for name in StrategyRegistry if name.startswith("microopt_ddp")}
    MicroOptDDPStrategy.register_strategies(StrategyRegistry)
    assert {name: StrategyRegistry[name] for name in before} == before
    assert StrategyRegistry["ddp"]["strategy"].__name__ == "DDPStrategy"


def test_a_hook_of_your_own_needs_compression_off():
    with pytest.raises(ValueError, match="and ddp_comm_hook were given, .* gradient_compression=None"):
        MicroOptDDPStrategy(ddp_comm_hook=allreduce_hook)
    strategy = MicroOptDDPStrategy(gradient_compression=None, ddp_comm_hook=allreduce_hook)
    assert strategy._ddp_comm_hook is allreduce_hook and strategy.compression_state is None


def test_the_strategy_and_its_compression_state_pickle_for_spawned_processes():
    strategy = MicroOptDDPStrategy(gradient_compression=TopKCompression(density=0.05), start_method="spawn")
    copied = pickle.loads(pickle.dumps(strategy))
    assert copied.compression_state.compression == TopKCompression(density=0.05)
    assert copied.shard_optimizer_state and copied._ddp_comm_hook is topk_compression_hook


def test_a_checkpoint_whose_error_feedback_does_not_fit_is_refused_before_anything_is_loaded():
    trainer = Trainer(accelerator="cpu", devices=2, strategy="microopt_ddp", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    strategy = trainer.strategy
    saved = TopKCompressionState(TopKCompression()).state_dict()
    saved["iteration"] = 8
    # Optimizer states that would fail to load: the check comes first.
    checkpoint = {COMPRESSION_CHECKPOINT_KEY: [saved] * 3, "optimizer_states": [None]}
    with pytest.raises(ValueError, match="it is of 3 processes, but this run has 2; resume with the processes, "
                       "model and gradient_compression settings that saved it, or delete the checkpoint's "
                       "'microopt_ddp_compression' entry"):
        strategy.load_optimizer_state_dict(checkpoint)
    other = {**saved, "compression": dataclasses.asdict(TopKCompression(block_size=4096))}
    with pytest.raises(ValueError, match=r"saved with TopKCompression\(density=0.01, block_size=4096"):
        strategy.load_optimizer_state_dict({**checkpoint, COMPRESSION_CHECKPOINT_KEY: [other] * 2})
    assert strategy.compression_state.iteration == 0

"""CausalLM shards itself with FSDP2 under ModelParallelStrategy: 2 gloo CPU processes fit, save, resume exactly.

A checkpoint gathered into one file (save_distributed_checkpoint: false) loads without the strategy.

One pair of processes runs everything (starting them is the slow part). Each is started the way torchrun starts
them (LOCAL_RANK set, process group up), so Lightning uses them rather than launching its own.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.distributed.tensor import DTensor

from lit_microopt.data import ArithmeticDataModule
from lit_microopt.eval import load_causal_lm
from lit_microopt.models import CausalLM
from lit_microopt.optim import AdamMini, MicroAdam
from tests.strategies.distributed import spawn

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TINY_LLAMA = dict(model_type="llama", vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
OPTIMIZERS = {
    "MicroAdam": partial(MicroAdam, lr=1e-2, m=4, density=0.25, block_size=64, quant_bucket_size=16),
    "AdamMini": partial(AdamMini, lr=1e-2, weight_decay=0.1),
}


class CountSteps(pl.Callback):
    """Counts the training batches this run itself takes (a resumed run skips those its checkpoint has)."""

    def __init__(self) -> None:
        self.batches = 0

    def on_train_batch_end(self, *args) -> None:
        self.batches += 1


def fit(folder: Path, optimizer: str, max_epochs: int, ckpt_path: Path | None = None,
        distributed_checkpoint: bool = True) -> pl.Trainer:
    torch.manual_seed(0)  # the same initial weights on both ranks: each keeps its shard of them
    module = CausalLM(OPTIMIZERS[optimizer], config=TINY_LLAMA, max_new_tokens=3)
    # 32 problems, 16 a rank: 2 steps an epoch; one validation batch generates answers on the sharded model.
    data = ArithmeticDataModule(train_size=32, val_size=8, test_size=8, batch_size=8, eval_batch_size=4)
    trainer = pl.Trainer(
        accelerator="cpu", devices=2,
        strategy=ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1,
                                       save_distributed_checkpoint=distributed_checkpoint),
        max_epochs=max_epochs, limit_val_batches=1, num_sanity_val_steps=0, logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=folder,
        callbacks=[ModelCheckpoint(dirpath=folder, filename="{epoch}", save_top_k=-1, monitor=None), CountSteps()],
    )
    trainer.fit(module, data, ckpt_path=ckpt_path)
    return trainer


def steps_taken(trainer: pl.Trainer) -> int:
    return next(callback.batches for callback in trainer.callbacks if isinstance(callback, CountSteps))


def local(value: torch.Tensor) -> torch.Tensor:
    return value.to_local() if isinstance(value, DTensor) else value


def check_fit_save_resume(rank: int, world_size: int, folder: str) -> None:
    os.environ.update(LOCAL_RANK=str(rank), NODE_RANK="0")  # as torchrun: Lightning launches no processes
    for optimizer in OPTIMIZERS:
        uninterrupted = fit(Path(folder) / optimizer, optimizer, max_epochs=2)
        model = uninterrupted.lightning_module.model
        layer = model.model.layers[0].self_attn.q_proj.weight
        assert isinstance(layer, DTensor) and layer.to_local().shape == (16, 32)  # half of the 32 rows a rank
        assert (Path(folder) / optimizer / "epoch=0.ckpt" / ".metadata").is_file()  # a distributed checkpoint

        resumed = fit(Path(folder) / f"{optimizer}_resumed", optimizer, max_epochs=2,
                      ckpt_path=Path(folder) / optimizer / "epoch=0.ckpt")
        assert resumed.global_step == uninterrupted.global_step == 4
        assert [steps_taken(resumed), steps_taken(uninterrupted)] == [2, 4]
        resumed_model = resumed.lightning_module.model
        for (name, param), expected in zip(resumed_model.named_parameters(), model.parameters()):
            assert torch.equal(local(param), local(expected)), (optimizer, name)
        states = zip(resumed.optimizers[0].state.values(), uninterrupted.optimizers[0].state.values())
        for state, expected in states:
            for key, value in state.items():
                assert torch.equal(local(value), local(expected[key])), (optimizer, key)

    # Gathered into one file by rank 0 instead, a checkpoint loads without a strategy (eval, export).
    trainer = fit(Path(folder) / "single_file", "AdamMini", max_epochs=1, distributed_checkpoint=False)
    whole = {name: param.full_tensor() for name, param in trainer.lightning_module.model.named_parameters()}
    if rank == 0:
        loaded = load_causal_lm(Path(folder) / "single_file" / "epoch=0.ckpt")
        for name, param in loaded.model.named_parameters():
            assert torch.equal(param, whole[name]), name


@pytest.mark.slow
def test_causal_lm_fits_saves_and_resumes_exactly_under_fsdp2_with_both_optimizers(tmp_path):
    spawn(check_fit_save_resume, 2, str(tmp_path))


def test_the_fsdp2_overlay_sets_model_parallel_with_data_parallel_only():
    strategy = yaml.safe_load((CONFIGS / "distributed" / "fsdp2.yaml").read_text())["trainer"]["strategy"]
    assert strategy["class_path"] == "lightning.pytorch.strategies.ModelParallelStrategy"
    ModelParallelStrategy(**strategy["init_args"])
    assert strategy["init_args"]["tensor_parallel_size"] == 1


def test_without_a_device_mesh_nothing_is_sharded_and_bert_units_are_found():
    from lit_microopt.models import SequenceClassifier
    from lit_microopt.models.sharding import is_fully_sharded, transformer_layers

    module = SequenceClassifier(config=dict(model_type="bert", vocab_size=16, hidden_size=32, intermediate_size=64,
                                            num_hidden_layers=2, num_attention_heads=4))
    module.configure_model()  # what load_from_checkpoint and single-device strategies do
    assert not is_fully_sharded(module.model)
    assert [type(layer).__name__ for layer in transformer_layers(module.model)] == ["BertEmbeddings", "BertLayer", "BertLayer"]

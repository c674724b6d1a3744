"""FSDP2 for the package's LightningModules: each transformer layer sharded, then the whole model.

Lightning's ``ModelParallelStrategy`` gives the module a device mesh and calls ``configure_model`` before the
optimizer is built; :class:`FullyShardLayers` answers with PyTorch's ``fully_shard`` (FSDP2). Each transformer
layer becomes its own unit, gathered only while it computes, and the root unit holds what is left (embeddings,
final norm, output layer). Parameters become DTensors sharded along their first dimension, which MicroAdam and
Adam-mini step shard by shard. ``configs/distributed/fsdp2.yaml`` turns it on from the command line.

Without a device mesh (any other strategy, or ``load_from_checkpoint``) ``configure_model`` does nothing.
"""

from __future__ import annotations

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.distributed.fsdp import FSDPModule, fully_shard
from typing_extensions import override


def transformer_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The layers of a Hugging Face model that FSDP2 shards one by one.

    Those whose class the model lists in ``_no_split_modules`` (``LlamaDecoderLayer``; BERT's ``BertEmbeddings``
    and ``BertLayer``), else the entries of its ``nn.ModuleList`` containers.

    Example:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
        ...                                      num_hidden_layers=2, num_attention_heads=4))
        >>> [type(layer).__name__ for layer in transformer_layers(model)]
        ['LlamaDecoderLayer', 'LlamaDecoderLayer']
    """
    unsplit = set(getattr(model, "_no_split_modules", None) or ())
    layers = [module for module in model.modules() if type(module).__name__ in unsplit]
    if layers:
        return layers
    return [layer for module in model.modules() if isinstance(module, torch.nn.ModuleList) for layer in module]


def is_fully_sharded(model: torch.nn.Module) -> bool:
    """Whether ``fully_shard`` has been applied to ``model`` itself."""
    return isinstance(model, FSDPModule)


class FullyShardLayers:
    """A mixin for LightningModules holding a Hugging Face ``self.model``: FSDP2 under ``ModelParallelStrategy``.

    List it before ``pl.LightningModule`` among the bases. With ``tensor_parallel_size: 1`` the whole mesh shards
    the model (FSDP, ZeRO-3); tensor parallelism is not supported.

    Example:
        >>> import lightning.pytorch as pl
        >>> from lightning.pytorch.strategies import ModelParallelStrategy
        >>> class MyModel(FullyShardLayers, pl.LightningModule):
        ...     pass
        >>> strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
    """

    @override
    def configure_model(self) -> None:
        mesh = self.device_mesh
        # Lightning calls this hook at every fit / validate / test: shard once.
        if mesh is None or is_fully_sharded(self.model):
            return
        if "tensor_parallel" in (mesh.mesh_dim_names or ()) and mesh["tensor_parallel"].size() > 1:
            raise ValueError(
                f"{type(self).__name__} shards with FSDP2 only and has no tensor-parallel plan; set the strategy's "
                "tensor_parallel_size: 1 (and data_parallel_size to the number of processes, or 'auto')."
            )
        data_mesh = mesh["data_parallel"] if "data_parallel" in (mesh.mesh_dim_names or ()) else mesh
        layers = transformer_layers(self.model)
        for layer in layers:
            fully_shard(layer, mesh=data_mesh)
        fully_shard(self.model, mesh=data_mesh)
        rank_zero_info(f"{type(self).__name__}: FSDP2 over {data_mesh.size()} processes, "
                       f"{len(layers)} transformer layers sharded one by one")

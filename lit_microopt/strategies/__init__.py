"""Training on several processes and machines: Lightning's DDP with sharded optimizer state and compressed gradients.

Importing this package (``python -m lit_microopt`` does; ``import lit_microopt`` alone does not) registers
:class:`MicroOptDDPStrategy` in Lightning's
``StrategyRegistry`` as ``microopt_ddp``, ``microopt_ddp_spawn``, ``microopt_ddp_sharded`` and
``microopt_ddp_compressed``, so that ``Trainer(strategy="microopt_ddp")`` and ``--trainer.strategy microopt_ddp``
work.
"""

from lightning.pytorch.strategies import StrategyRegistry

from lit_microopt.strategies.checkpoint_io import AtomicCheckpointIO
from lit_microopt.strategies.compression import TopKCompression, TopKCompressionState, topk_compression_hook
from lit_microopt.strategies.ddp import MicroOptDDPStrategy
from lit_microopt.strategies.sharded_state import OptimizerStateSharding, assign_owners

MicroOptDDPStrategy.register_strategies(StrategyRegistry)

__all__ = [
    "AtomicCheckpointIO",
    "MicroOptDDPStrategy",
    "OptimizerStateSharding",
    "TopKCompression",
    "TopKCompressionState",
    "assign_owners",
    "topk_compression_hook",
]

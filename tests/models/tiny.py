"""Tiny local models and trainers for the LightningModule tests: no network, a few thousand parameters."""

from functools import partial

import lightning.pytorch as pl
import torch

TINY_LLAMA = dict(model_type="llama", vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)


def tiny_trainer(tmp_path, **overrides) -> pl.Trainer:
    arguments = dict(
        accelerator="cpu", max_steps=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path,
    )
    return pl.Trainer(**{**arguments, **overrides})


def adamw(lr: float = 1e-2):
    return partial(torch.optim.AdamW, lr=lr)

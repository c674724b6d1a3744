"""``CausalLM``: a Hugging Face causal language model fine-tuned (or trained) on prompt / answer batches.

The loss is the model's own next-token loss on the answer tokens (the data modules label the prompt -100).
Validation and test report the token-weighted loss, its perplexity, and the exact match of greedy answers:
the model continues each prompt greedily until ``<eos>`` and the text is compared with the reference answer.
"""

from __future__ import annotations

import math
import re
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torchmetrics import MeanMetric
from transformers import AutoModelForCausalLM, GenerationConfig

from lit_microopt.callbacks.prediction_writer import default_prediction_writers
from lit_microopt.models.checkpointing import SelfContainedCheckpoint
from lit_microopt.models.hf_loading import load_model, load_tokenizer, load_tokenizer_if_present, same_vocabulary
from lit_microopt.models.metrics import EvaluationHooks, reset_outside_inference_mode
from lit_microopt.models.optimization import OptimizerFromConfig
from lit_microopt.models.sharding import FullyShardLayers, is_fully_sharded

IGNORE_INDEX = -100


class CausalLM(SelfContainedCheckpoint, FullyShardLayers, OptimizerFromConfig, EvaluationHooks, pl.LightningModule):
    """A Hugging Face causal LM with answer-only loss, perplexity and exact match of greedy answers.

    Batches are those of the package's causal-LM data modules: ``input_ids``, ``attention_mask`` and ``labels``
    for the loss; ``prompt_ids``, ``prompt_attention_mask`` and ``answers`` for exact match.

    The tokenizer comes from ``tokenizer``, else from the ``pretrained`` folder, else from the data module
    (the arithmetic one builds its own). Every checkpoint holds it and the model's configuration, so
    ``CausalLM.load_from_checkpoint(path)`` works without the data, the ``pretrained`` folder or a network
    (see :mod:`lit_microopt.models.checkpointing`). Under Lightning's ``ModelParallelStrategy`` it shards itself
    with FSDP2, layer by layer (``configs/distributed/fsdp2.yaml``, :mod:`lit_microopt.models.sharding`).

    Args:
        optimizer: builds the optimizer from named parameters (a YAML ``class_path`` / ``init_args`` block);
            PyTorch's AdamW with its defaults when not given (evaluation needs none).
        lr_scheduler: builds the learning-rate schedule from the optimizer, stepped every optimizer step; or ``None``.
        pretrained: model folder, ``lit_microopt/...`` folder shipped in the package, or Hub name (fine-tuning).
        config: model configuration with a ``model_type`` (training from scratch), instead of ``pretrained``.
        tokenizer: tokenizer folder or Hub name, when it is not next to the model.
        dtype: ``"float32"``, ``"bfloat16"``, ``"float16"``, or ``None`` to keep the stored dtype.
        gradient_checkpointing: recompute activations in the backward pass (less memory, ~30 % more time).
        exact_match: generate greedy answers during validation and test and report their exact match.
        max_new_tokens: the longest generated answer, in tokens.
        answer_pattern: a regular expression; when set, exact match compares its first group (or whole match)
            in the generated text and in the reference, e.g. ``"#### *(-?[0-9.,]+)"`` for GSM-8k.

    Example:
        >>> from functools import partial
        >>> from lit_microopt import MicroAdam
        >>> module = CausalLM(partial(MicroAdam, lr=1e-3), config=dict(model_type="llama", vocab_size=100,
        ...     hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2))
        >>> type(module.configure_optimizers()).__name__
        'MicroAdam'
    """

    def __init__(
        self,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        pretrained: str | None = None,
        config: dict[str, Any] | None = None,
        tokenizer: str | None = None,
        dtype: str | None = None,
        gradient_checkpointing: bool = False,
        exact_match: bool = True,
        max_new_tokens: int = 32,
        answer_pattern: str | None = None,
    ) -> None:
        super().__init__()
        # The optimizer factories stay out of checkpoints: they are Python objects, and evaluating a checkpoint
        # needs no optimizer (each run's config.yaml records them).
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.optimizer, self.lr_scheduler = optimizer, lr_scheduler
        if max_new_tokens < 1:
            raise ValueError(f"CausalLM: max_new_tokens must be >= 1, got {max_new_tokens}.")
        self.answer_regex = re.compile(answer_pattern) if answer_pattern else None
        self.exact_match, self.max_new_tokens = exact_match, max_new_tokens
        self.model = load_model(AutoModelForCausalLM, pretrained, config, dtype)
        if gradient_checkpointing:
            # transformers 5.2x renamed gradient_checkpointing_enable; older 5.x releases only have the old name.
            enable = getattr(self.model, "activation_checkpointing_enable", None)
            (enable or self.model.gradient_checkpointing_enable)()
        if tokenizer is not None:
            self.tokenizer = load_tokenizer(tokenizer)
        elif pretrained is not None:
            self.tokenizer = load_tokenizer_if_present(pretrained)
        else:
            self.tokenizer = None
        self.metrics = torch.nn.ModuleDict({
            f"{stage}_{name}": MeanMetric() for stage in ("val", "test") for name in ("loss", "exact_match")
        })

    # -- the tokenizer ---------------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        """Take the data module's tokenizer when the model has none, and check that the two agree."""
        datamodule = self.trainer.datamodule  # setup is called by a trainer: it is attached
        data_tokenizer = getattr(datamodule, "tokenizer", None)
        if self.tokenizer is None:
            self.tokenizer = data_tokenizer
        elif data_tokenizer is not None and not same_vocabulary(self.tokenizer, data_tokenizer):
            raise ValueError(
                "CausalLM: the data module's tokenizer differs from the model's; use data made with the model's "
                "tokenizer (leave the data module's tokenizer unset) or a model trained with the data's."
            )
        if self.tokenizer is None:
            raise ValueError(
                "CausalLM has no tokenizer; set model tokenizer (a folder or Hub name) or use a data module that has one."
            )
        vocabulary = self.model.get_input_embeddings().num_embeddings
        if len(self.tokenizer) > vocabulary:
            raise ValueError(
                f"CausalLM: the tokenizer has {len(self.tokenizer)} tokens but the model only {vocabulary} embeddings; "
                "use the tokenizer the model was trained with, or a config with a larger vocab_size."
            )

    # -- training --------------------------------------------------------------------------------------

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> Any:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self(batch["input_ids"], batch["attention_mask"], labels=batch["labels"]).loss
        self.log("train_loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    # -- evaluation ------------------------------------------------------------------------------------

    @torch.no_grad()
    def generate_answers(self, prompt_ids: torch.Tensor, prompt_attention_mask: torch.Tensor) -> list[str]:
        """Greedy continuations of left-padded prompts, decoded, up to ``<eos>`` or ``max_new_tokens``."""
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        # A fresh GenerationConfig: the pretrained model's own (sampling, temperature) must not apply here.
        generation = GenerationConfig(
            max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1,
            eos_token_id=self.tokenizer.eos_token_id, pad_token_id=pad_id,
        )
        # Sharded (FSDP2), every rank must run each forward pass, even one whose answers are all finished.
        synced = is_fully_sharded(self.model) and torch.distributed.get_world_size() > 1
        generated = self.model.generate(
            input_ids=prompt_ids, attention_mask=prompt_attention_mask, generation_config=generation, synced_gpus=synced
        )
        return self.tokenizer.batch_decode(generated[:, prompt_ids.shape[1]:], skip_special_tokens=True)

    def extract_answer(self, text: str) -> str | None:
        """The part of ``text`` that exact match compares: the stripped text, or ``answer_pattern``'s group."""
        if self.answer_regex is None:
            return text.strip()
        found = self.answer_regex.search(text)
        if found is None:
            return None
        return (found.group(1) if found.groups() else found.group(0)).strip()

    def _evaluate(self, batch: dict[str, Any], stage: str) -> None:
        loss = self(batch["input_ids"], batch["attention_mask"], labels=batch["labels"]).loss
        # The model's loss is a mean over the batch's answer tokens: weight it by their number.
        answer_tokens = (batch["labels"][:, 1:] != IGNORE_INDEX).sum()
        self.metrics[f"{stage}_loss"].update(loss, weight=answer_tokens)
        if self.exact_match and "prompt_ids" in batch:
            generated = self.generate_answers(batch["prompt_ids"], batch["prompt_attention_mask"])
            correct = [
                float(self.extract_answer(answer) is not None and self.extract_answer(text) == self.extract_answer(answer))
                for text, answer in zip(generated, batch["answers"])
            ]
            self.metrics[f"{stage}_exact_match"].update(torch.tensor(correct, device=self.device))

    def _log_epoch(self, stage: str) -> dict[str, float]:
        values = {}
        for name in ("loss", "exact_match"):
            metric = self.metrics[f"{stage}_{name}"]
            if metric.update_count:
                values[f"{stage}_{name}"] = float(metric.compute())
            reset_outside_inference_mode(metric)
        if f"{stage}_loss" in values:
            values[f"{stage}_perplexity"] = math.exp(min(values[f"{stage}_loss"], 50.0))
        if self.trainer.sanity_checking:
            # Lightning discards what the sanity check logs; its numbers are those of the model before training.
            summary = ", ".join(f"{key} {value:.4f}" for key, value in values.items())
            whole = self.trainer.num_sanity_val_steps == float("inf")  # num_sanity_val_steps: -1
            where = "the whole validation set" if whole else f"{self.trainer.num_sanity_val_steps} validation batches"
            rank_zero_info(f"Before training, on {where}: {summary}")
            if whole:  # the model's starting point, worth a point at step 0 of the curves
                for logger in self.loggers:
                    logger.log_metrics(values, step=0)
        else:
            for key, value in values.items():
                self.log(key, value, prog_bar=key.endswith(("loss", "exact_match")))
        return values

    def configure_callbacks(self) -> list[pl.Callback]:
        """When predicting without a prediction writer, one that writes ``predictions.jsonl`` in the log folder."""
        return default_prediction_writers(self.trainer)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, str]]:
        """The prompt, greedy answer and reference answer of every example of the batch."""
        generated = self.generate_answers(batch["prompt_ids"], batch["prompt_attention_mask"])
        prompts = self.tokenizer.batch_decode(batch["prompt_ids"], skip_special_tokens=True)
        return [
            {"prompt": prompt, "generated": text, "answer": answer}
            for prompt, text, answer in zip(prompts, generated, batch["answers"])
        ]


"""``SequenceClassifier``: a Hugging Face encoder with a classification head (GLUE / MNLI-style tasks).

Batches hold ``input_ids``, ``attention_mask`` (and ``token_type_ids`` for BERT-like models) and ``labels``;
the loss is cross-entropy, and validation and test report it with the accuracy (torchmetrics).
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy
from transformers import AutoModelForSequenceClassification

from lit_microopt.callbacks.prediction_writer import default_prediction_writers
from lit_microopt.models.checkpointing import SelfContainedCheckpoint
from lit_microopt.models.hf_loading import load_model, load_tokenizer, load_tokenizer_if_present, same_vocabulary
from lit_microopt.models.metrics import EvaluationHooks, reset_outside_inference_mode
from lit_microopt.models.optimization import OptimizerFromConfig
from lit_microopt.models.sharding import FullyShardLayers

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class SequenceClassifier(SelfContainedCheckpoint, FullyShardLayers, OptimizerFromConfig, EvaluationHooks,
                         pl.LightningModule):
    """A Hugging Face sequence classifier (``AutoModelForSequenceClassification``) with loss and accuracy.

    The tokenizer comes from ``tokenizer``, else from the ``pretrained`` folder, else from the data module.
    Every checkpoint holds it and the model's configuration, so ``SequenceClassifier.load_from_checkpoint(path)``
    works without the ``pretrained`` folder or a network (see :mod:`lit_microopt.models.checkpointing`). Under
    Lightning's ``ModelParallelStrategy`` it shards itself with FSDP2, layer by layer (``configs/distributed/fsdp2.yaml``).

    Args:
        optimizer: builds the optimizer from named parameters (a YAML ``class_path`` / ``init_args`` block);
            PyTorch's AdamW with its defaults when not given (evaluation needs none).
        lr_scheduler: builds the learning-rate schedule from the optimizer, stepped every optimizer step; or ``None``.
        num_labels: number of classes (3 for MNLI); a new head of this size is made when the checkpoint has none.
        pretrained: model folder or Hub name (fine-tuning), e.g. ``"google-bert/bert-base-uncased"``.
        config: model configuration with a ``model_type`` (training from scratch), instead of ``pretrained``.
        tokenizer: tokenizer folder or Hub name, when it is not next to the model.
        dtype: ``"float32"``, ``"bfloat16"``, ``"float16"``, or ``None`` to keep the stored dtype.

    Example:
        >>> from functools import partial
        >>> from lit_microopt import MicroAdam
        >>> module = SequenceClassifier(partial(MicroAdam, lr=1e-4), num_labels=3, config=dict(model_type="bert",
        ...     vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2))
        >>> module.model.config.num_labels
        3
    """

    def __init__(
        self,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        num_labels: int = 2,
        pretrained: str | None = None,
        config: dict[str, Any] | None = None,
        tokenizer: str | None = None,
        dtype: str | None = None,
    ) -> None:
        super().__init__()
        # The optimizer factories stay out of checkpoints (see CausalLM).
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        if num_labels < 2:
            raise ValueError(f"SequenceClassifier: num_labels must be >= 2, got {num_labels}.")
        self.optimizer, self.lr_scheduler, self.num_labels = optimizer, lr_scheduler, num_labels
        self.model = load_model(AutoModelForSequenceClassification, pretrained, config, dtype, num_labels=num_labels)
        if tokenizer is not None:
            self.tokenizer = load_tokenizer(tokenizer)
        elif pretrained is not None:
            self.tokenizer = load_tokenizer_if_present(pretrained)
        else:
            self.tokenizer = None
        self.metrics = torch.nn.ModuleDict()
        for stage in ("val", "test"):
            self.metrics[f"{stage}_loss"] = MeanMetric()
            self.metrics[f"{stage}_accuracy"] = MulticlassAccuracy(num_classes=num_labels, average="micro")

    def setup(self, stage: str) -> None:
        """Take the data module's tokenizer when the model has none, and check labels and vocabularies agree."""
        datamodule = self.trainer.datamodule  # setup is called by a trainer: it is attached
        data_tokenizer = getattr(datamodule, "tokenizer", None)
        if self.tokenizer is None:
            self.tokenizer = data_tokenizer
        elif data_tokenizer is not None and not same_vocabulary(self.tokenizer, data_tokenizer):
            raise ValueError(
                "SequenceClassifier: the data module's tokenizer differs from the model's; leave the data module's "
                "tokenizer unset so that it uses the model's."
            )
        data_labels = getattr(datamodule, "num_labels", None)
        if data_labels is not None and data_labels != self.num_labels:
            raise ValueError(
                f"SequenceClassifier: the data has {data_labels} labels but the model num_labels={self.num_labels}; "
                "set the same number in both."
            )

    def forward(self, batch: dict[str, Any]) -> Any:
        return self.model(**{key: batch[key] for key in MODEL_INPUTS if key in batch}, labels=batch.get("labels"))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self(batch).loss
        self.log("train_loss", loss, prog_bar=True, batch_size=batch["labels"].shape[0])
        return loss

    def _evaluate(self, batch: dict[str, Any], stage: str) -> None:
        output = self(batch)
        self.metrics[f"{stage}_loss"].update(output.loss, weight=batch["labels"].shape[0])
        self.metrics[f"{stage}_accuracy"].update(output.logits.argmax(dim=-1), batch["labels"])

    def _log_epoch(self, stage: str) -> None:
        if self.trainer.sanity_checking:
            for metric in self.metrics.values():
                reset_outside_inference_mode(metric)
            return
        for name in ("loss", "accuracy"):
            metric = self.metrics[f"{stage}_{name}"]
            if metric.update_count:
                self.log(f"{stage}_{name}", metric.compute(), prog_bar=True)
            reset_outside_inference_mode(metric)

    def configure_callbacks(self) -> list[pl.Callback]:
        """When predicting without a prediction writer, one that writes ``predictions.jsonl`` in the log folder."""
        return default_prediction_writers(self.trainer)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """The predicted class of every example of the batch."""
        return self(batch).logits.argmax(dim=-1)

"""JsonLinesPredictionWriter: what ``predict`` returns, written to a JSON Lines file as it comes."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

#: The file's name when no path is given, in the run's log folder.
DEFAULT_FILE_NAME = "predictions.jsonl"


def as_records(prediction: Any) -> list[dict[str, Any]]:
    """One JSON-ready dict per example of a ``predict_step`` result.

    A list of dicts (``CausalLM``: prompt, generated and reference answer) is kept as it is; a tensor
    (``SequenceClassifier``: one class per example) gives ``{"prediction": value}`` per row.

    Example:
        >>> as_records(torch.tensor([2, 0]))
        [{'prediction': 2}, {'prediction': 0}]
    """
    if isinstance(prediction, torch.Tensor):
        return [{"prediction": row} for row in prediction.tolist()]
    if isinstance(prediction, Sequence) and all(isinstance(item, dict) for item in prediction):
        return [
            {key: value.tolist() if isinstance(value, torch.Tensor) else value for key, value in item.items()}
            for item in prediction
        ]
    raise TypeError(
        f"JsonLinesPredictionWriter writes a tensor or a list of dicts per batch, but predict_step returned a "
        f"{type(prediction).__name__}; return one of those, or write it with your own BasePredictionWriter."
    )


class JsonLinesPredictionWriter(BasePredictionWriter):
    """Write every prediction to a JSON Lines file, one example a line, batch by batch (nothing is held in memory).

    ``CausalLM`` writes ``{"prompt": ..., "generated": ..., "answer": ...}``; ``SequenceClassifier`` writes
    ``{"prediction": class}``. The file is replaced at each ``predict``. With several processes, each writes its
    own file, ``predictions.rank1.jsonl`` and so on beside rank 0's (a distributed sampler gives each process
    its share of the examples, and pads the last share by repeating some).

    The package's models add one writing to ``<log folder>/predictions.jsonl`` when the trainer has no
    prediction writer; configure this callback to choose the file.

    Args:
        path: the file to write; ``None`` for ``predictions.jsonl`` in the trainer's log folder (``trainer.log_dir``,
            e.g. ``runs/quickstart/csv/version_3``), or in ``default_root_dir`` without a logger.

    Example::

        >>> from lightning.pytorch import Trainer
        >>> trainer = Trainer(callbacks=[JsonLinesPredictionWriter("predictions/test.jsonl")])

    In a LightningCLI config::

        trainer:
          callbacks:
            - class_path: lit_microopt.callbacks.prediction_writer.JsonLinesPredictionWriter
              init_args: {path: predictions/test.jsonl}
    """

    def __init__(self, path: str | Path | None = None) -> None:
        super().__init__(write_interval="batch")
        self.path = Path(path).expanduser() if path is not None else None
        self._file: IO[str] | None = None
        self.written: Path | None = None  #: the file of the last predict, on this process

    def file_for(self, trainer: pl.Trainer) -> Path:
        """The file this process writes: the given path (or the default), with ``.rankN`` for processes after the first."""
        path = self.path or Path(trainer.log_dir or trainer.default_root_dir) / DEFAULT_FILE_NAME
        if trainer.global_rank > 0:
            path = path.with_name(f"{path.stem}.rank{trainer.global_rank}{path.suffix}")
        return path

    @override
    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.written = self.file_for(trainer)
        self.written.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.written.open("w", encoding="utf-8")

    @override
    def write_on_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, prediction: Any, batch_indices: Sequence[int] | None,
        batch: Any, batch_idx: int, dataloader_idx: int,
    ) -> None:
        for record in as_records(prediction):
            self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()  # an interrupted predict keeps what it has written

    @override
    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close()
        rank_zero_info(f"Predictions written to {self.written}")

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._close()  # what was written so far stays readable

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def default_prediction_writers(trainer: pl.Trainer) -> list[pl.Callback]:
    """``[JsonLinesPredictionWriter()]`` for a trainer that is predicting without a prediction writer, else ``[]``.

    What the package's models return from ``configure_callbacks``, so that ``predict`` never discards its output.
    """
    if not trainer.predicting or any(isinstance(callback, BasePredictionWriter) for callback in trainer.callbacks):
        return []
    return [JsonLinesPredictionWriter()]


__all__ = ["JsonLinesPredictionWriter", "default_prediction_writers"]

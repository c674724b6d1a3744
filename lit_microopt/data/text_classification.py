"""Text classification data: a sentence (or sentence pair) and a label, from JSON Lines or a Hugging Face dataset.

The defaults fit GLUE-style records; for MNLI (``nyu-mll/glue``, ``mnli``) set ``text_field: premise``,
``text_pair_field: hypothesis``, ``num_labels: 3``. Labels are class indices, or names listed in
``label_names`` (their position is the index).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from lit_microopt.data.prompt_answer import SplitLoaders, tokenizer_for
from lit_microopt.data.records import DataFormatError, read_records

logger = logging.getLogger(__name__)


class TextClassificationDataModule(SplitLoaders, pl.LightningDataModule):
    """Sentence (pair) / label batches for a ``SequenceClassifier``.

    Splits come from ``train_file`` / ``val_file`` / ``test_file`` when given, else from the ``dataset``'s
    ``train_split`` / ``val_split`` / ``test_split`` (``None``: no such split). Texts are cut to
    ``max_length`` tokens (longest first for pairs) and padded per batch.

    Args:
        train_file: JSON Lines file of training records.
        val_file: JSON Lines file of validation records.
        test_file: JSON Lines file of test records.
        dataset: Hugging Face dataset name (e.g. ``"nyu-mll/glue"``), used for splits without a file.
        dataset_config: the dataset's configuration (e.g. ``"mnli"``).
        train_split: the dataset's training split.
        val_split: the dataset's validation split (``"validation_matched"`` for MNLI).
        test_split: the dataset's test split with labels (``"validation_mismatched"`` for MNLI).
        text_field: the field holding the (first) sentence.
        text_pair_field: the field holding the second sentence of a pair, or ``None``.
        label_field: the field holding the label.
        num_labels: number of classes; labels must be in ``[0, num_labels)``.
        label_names: class names, when labels are written as names (their position is the class index).
        tokenizer: tokenizer folder or Hub name; ``None`` uses the model's (the usual case).
        max_length: longest input in tokens.
        batch_size: training examples per batch (per device).
        eval_batch_size: validation and test examples per batch.
        num_workers: ``DataLoader`` worker processes.
        seed: seed of the training order.

    Example:
        >>> import json, os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "train.jsonl")
        >>> with open(path, "w") as file:
        ...     _ = file.write(json.dumps({"sentence": "a fine film", "label": "positive"}) + "\\n")
        >>> data = TextClassificationDataModule(train_file=path, label_names=["negative", "positive"])
        >>> data.load_records("train")
        [('a fine film', None, 1)]
    """

    def __init__(
        self,
        train_file: str | None = None,
        val_file: str | None = None,
        test_file: str | None = None,
        dataset: str | None = None,
        dataset_config: str | None = None,
        train_split: str | None = "train",
        val_split: str | None = "validation",
        test_split: str | None = None,
        text_field: str = "sentence",
        text_pair_field: str | None = None,
        label_field: str = "label",
        num_labels: int = 2,
        label_names: list[str] | None = None,
        tokenizer: str | None = None,
        max_length: int = 128,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if train_file is None and dataset is None:
            raise ValueError(
                "TextClassificationDataModule: set train_file (a JSON Lines file) or dataset (a Hugging Face dataset name)."
            )
        if label_names is not None and len(label_names) != num_labels:
            raise ValueError(
                f"TextClassificationDataModule: label_names has {len(label_names)} names but num_labels={num_labels}; "
                "make them agree."
            )
        self.files = {"train": train_file, "validation": val_file, "test": test_file}
        for split, file in self.files.items():
            if file is not None and not Path(file).is_file():
                raise FileNotFoundError(
                    f"TextClassificationDataModule: {split} file {file!r} does not exist (relative paths start at "
                    f"{Path.cwd()}); give the path of a JSON Lines file."
                )
        self.dataset, self.dataset_config = dataset, dataset_config
        self.splits = {"train": train_split, "validation": val_split, "test": test_split}
        self.text_field, self.text_pair_field, self.label_field = text_field, text_pair_field, label_field
        self.num_labels, self.label_names = num_labels, label_names
        self.tokenizer_name, self.max_length = tokenizer, max_length
        self.batch_size, self.eval_batch_size, self.num_workers, self.seed = batch_size, eval_batch_size, num_workers, seed
        self.tokenizer: Any = None
        self.datasets: dict[str, list[dict[str, Any]]] = {}

    def _label(self, value: Any, where: str) -> int:
        if isinstance(value, str):
            if self.label_names is None or value not in self.label_names:
                raise DataFormatError(
                    f"{where}: label {value!r} is not one of label_names {self.label_names}; "
                    "list every class name in label_names."
                )
            return self.label_names.index(value)
        if not 0 <= value < self.num_labels:
            raise DataFormatError(
                f"{where}: label {value} is outside [0, {self.num_labels}); fix the label or set num_labels."
            )
        return value

    def load_records(self, split: str) -> list[tuple[str, str | None, int]] | None:
        """The ``(text, text_pair, label)`` records of ``split``, or ``None`` when it has none."""
        fields = {self.text_field: (str,), self.label_field: (int, str)}
        if self.text_pair_field is not None:
            fields[self.text_pair_field] = (str,)
        hint = "add it, or set text_field / text_pair_field / label_field to the fields the data has"
        records = read_records(
            self.files[split], self.dataset, self.dataset_config, self.splits[split], fields, hint,
            check=lambda record, where: self._label(record[self.label_field], where),
        )
        if records is None:
            return None
        pair = self.text_pair_field
        return [(r[self.text_field], r[pair] if pair else None, self._label(r[self.label_field], "")) for r in records]

    def _load_tokenizer(self) -> Any:
        return tokenizer_for("TextClassificationDataModule", self.tokenizer_name, self.trainer)

    def setup(self, stage: str) -> None:
        if self.tokenizer is None:
            self.tokenizer = self._load_tokenizer()
        splits = {"fit": ("train", "validation"), "validate": ("validation",), "test": ("test",), "predict": ("test",)}
        for split in splits[stage]:
            if split in self.datasets:
                continue
            records = self.load_records(split)
            if records is None:
                continue
            texts, pairs, labels = zip(*records)
            encoded = self.tokenizer(
                list(texts), list(pairs) if self.text_pair_field else None, truncation=True, max_length=self.max_length
            )
            self.datasets[split] = [
                {**{key: encoded[key][index] for key in encoded}, "labels": label} for index, label in enumerate(labels)
            ]
            logger.info("TextClassificationDataModule: %d %s examples.", len(records), split)

    def _collate(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        return self.tokenizer.pad(examples, return_tensors="pt")

    def collate_fn(self) -> Any:
        return self._collate

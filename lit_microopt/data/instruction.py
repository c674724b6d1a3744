"""Instruction data: question / answer records from JSON Lines files or a Hugging Face dataset.

Each record is turned into a prompt and an answer by two templates whose ``{placeholders}`` name the record's
fields. The defaults read GSM-8k's ``question`` / ``answer`` fields as they are, in the format of
lm-evaluation-harness's ``gsm8k`` task (``"Question: ...\\nAnswer:"``, then the answer after a space).
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

from lit_microopt.data.prompt_answer import PromptAnswer, PromptAnswerDataModule, tokenizer_for
from lit_microopt.data.records import read_records

SPLITS = ("train", "validation", "test")


def template_fields(template: str) -> list[str]:
    """The field names a ``str.format`` template uses.

    Example:
        >>> template_fields("Question: {question}\\nContext: {context}\\nAnswer:")
        ['question', 'context']
    """
    return [field for _, field, _, _ in string.Formatter().parse(template) if field]


class InstructionDataModule(PromptAnswerDataModule):
    """Prompt / answer pairs for supervised fine-tuning, from JSON Lines files or a Hugging Face dataset.

    Splits come from ``train_file`` / ``val_file`` / ``test_file`` when given, else from the ``dataset``'s
    ``train_split`` / ``val_split`` / ``test_split`` (``None``: no such split). The loss covers the answer and
    the ``<eos>`` after it; sequences longer than ``max_length`` tokens are cut, and padding is per batch.

    Args:
        train_file: JSON Lines file of training records.
        val_file: JSON Lines file of validation records.
        test_file: JSON Lines file of test records.
        dataset: Hugging Face dataset name (e.g. ``"openai/gsm8k"``), used for splits without a file.
        dataset_config: the dataset's configuration (e.g. ``"main"``).
        train_split: the dataset's training split.
        val_split: the dataset's validation split (GSM-8k has none: its ``"test"`` split is the usual choice).
        test_split: the dataset's test split.
        prompt_template: the prompt, with ``{field}`` for the record's fields.
        answer_template: the answer the model learns to write, with ``{field}`` likewise.
        tokenizer: tokenizer folder or Hub name; ``None`` uses the model's (the usual case).
        batch_size: training examples per batch (per device).
        eval_batch_size: validation and test examples per batch.
        max_length: longest sequence in tokens.
        pad_to_multiple_of: round padded lengths up to a multiple of this, or ``None``.
        num_workers: ``DataLoader`` worker processes.
        seed: seed of the training order.

    Example:
        >>> import json, os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "train.jsonl")
        >>> with open(path, "w") as file:
        ...     _ = file.write(json.dumps({"question": "What is 2+2?", "answer": "2+2=4\\n#### 4"}) + "\\n")
        >>> InstructionDataModule(train_file=path).load_examples("train")
        [PromptAnswer(prompt='Question: What is 2+2?\\nAnswer:', answer=' 2+2=4\\n#### 4')]
    """

    def __init__(
        self,
        train_file: str | None = None,
        val_file: str | None = None,
        test_file: str | None = None,
        dataset: str | None = None,
        dataset_config: str | None = None,
        train_split: str | None = "train",
        val_split: str | None = None,
        test_split: str | None = None,
        prompt_template: str = "Question: {question}\nAnswer:",
        answer_template: str = " {answer}",
        tokenizer: str | None = None,
        batch_size: int = 8,
        eval_batch_size: int = 16,
        max_length: int = 512,
        pad_to_multiple_of: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, max_length, pad_to_multiple_of, num_workers, seed)
        self.save_hyperparameters()
        if train_file is None and dataset is None:
            raise ValueError(
                "InstructionDataModule: set train_file (a JSON Lines file) or dataset (a Hugging Face dataset name)."
            )
        self.files = {"train": train_file, "validation": val_file, "test": test_file}
        for split, file in self.files.items():
            if file is not None and not Path(file).is_file():
                raise FileNotFoundError(
                    f"InstructionDataModule: {split} file {file!r} does not exist (relative paths start at {Path.cwd()}); "
                    "give the path of a JSON Lines file."
                )
        self.dataset, self.dataset_config = dataset, dataset_config
        self.splits = {"train": train_split, "validation": val_split, "test": test_split}
        self.prompt_template, self.answer_template = prompt_template, answer_template
        used = template_fields(prompt_template) + template_fields(answer_template)
        self.fields = {field: (str, int, float) for field in used}
        self.tokenizer_name = tokenizer

    def load_examples(self, split: str) -> list[PromptAnswer] | None:
        hint = "add it, or change prompt_template / answer_template to name the fields the data has"
        records = read_records(self.files[split], self.dataset, self.dataset_config, self.splits[split], self.fields, hint)
        if records is None:
            return None
        return [PromptAnswer(self.prompt_template.format(**r), self.answer_template.format(**r)) for r in records]

    def load_tokenizer(self) -> Any:
        return tokenizer_for("InstructionDataModule", self.tokenizer_name, self.trainer)

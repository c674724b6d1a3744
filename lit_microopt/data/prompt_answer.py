"""Prompt / answer examples for causal language models: tokenization, loss masks, padding, batches.

Both causal-LM data modules (synthetic arithmetic and instruction files) produce :class:`PromptAnswer` pairs;
this module turns them into batches. Each example is tokenized as ``prompt + answer + <eos>``, and the
``labels`` hide the prompt (``-100``), so the loss is on the answer tokens only. Each batch also carries the
prompts alone, left-padded, and the answer texts, for greedy generation and exact match.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Sampler

logger = logging.getLogger(__name__)

#: Label of positions that take no part in the loss (PyTorch's and Hugging Face's ``ignore_index``).
IGNORE_INDEX = -100


@dataclass(frozen=True)
class PromptAnswer:
    """One example: the model reads ``prompt`` and should write ``answer``."""

    prompt: str
    answer: str


@dataclass(frozen=True)
class TokenizedExample:
    """Token ids of ``prompt + answer + <eos>`` (``input_ids``) and of the prompt alone, plus the answer text."""

    input_ids: list[int]
    prompt_ids: list[int]
    answer: str


def tokenize_examples(tokenizer: Any, examples: Sequence[PromptAnswer], max_length: int) -> list[TokenizedExample]:
    """Tokenize examples for training and generation; examples with no answer token left are dropped.

    The prompt and the whole text are tokenized separately (the usual recipe for instruction tuning): the
    first ``len(prompt_ids)`` tokens of the whole text are the prompt's, the rest the answer's. Sequences are
    cut after ``max_length`` tokens (the end of the answer is lost); an example whose prompt alone fills
    ``max_length`` would teach nothing and is dropped, with a warning.

    Args:
        tokenizer: a Hugging Face tokenizer with an ``eos_token_id``.
        examples: the prompt / answer pairs.
        max_length: longest sequence, in tokens.

    Example:
        >>> from lit_microopt.data.char_tokenizer import build_char_tokenizer
        >>> [example] = tokenize_examples(build_char_tokenizer(), [PromptAnswer("1+1=", "2")], max_length=16)
        >>> example.input_ids, example.prompt_ids
        ([1, 21, 15, 21, 33, 22, 2], [1, 21, 15, 21, 33])
    """
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token; use a tokenizer that defines one, so answers have an end.")
    if not examples:
        return []
    whole = tokenizer([example.prompt + example.answer for example in examples]).input_ids
    prompts = tokenizer([example.prompt for example in examples]).input_ids
    tokenized, dropped = [], 0
    for example, ids, prompt_ids in zip(examples, whole, prompts):
        ids = list(ids) + [tokenizer.eos_token_id]
        if len(prompt_ids) >= max_length or len(ids) <= len(prompt_ids):
            dropped += 1
            continue
        tokenized.append(TokenizedExample(ids[:max_length], list(prompt_ids), example.answer))
    if dropped:
        logger.warning(
            "Dropped %d of %d examples whose prompt alone fills max_length=%d tokens.", dropped, len(examples), max_length
        )
    return tokenized


def _pad(sequences: Sequence[Sequence[int]], value: int, length: int, left: bool) -> torch.Tensor:
    rows = [([value] * (length - len(s)) + list(s)) if left else (list(s) + [value] * (length - len(s))) for s in sequences]
    return torch.tensor(rows, dtype=torch.long)


class PromptAnswerCollator:
    """Pads tokenized examples into a batch for a causal LM.

    The batch holds ``input_ids``, ``attention_mask`` and ``labels`` (right-padded; the prompt and padding
    labelled ``-100``) for the loss, and ``prompt_ids`` / ``prompt_attention_mask`` (left-padded, so that
    generation continues every prompt at the same position) with ``answers`` (texts) for exact match.

    Args:
        pad_token_id: id used for padding (any id works: padding is masked out).
        pad_to_multiple_of: round the padded length up to a multiple of this (tensor cores like 8 or 64).

    Example:
        >>> collate = PromptAnswerCollator(pad_token_id=0)
        >>> batch = collate([TokenizedExample([1, 5, 6, 2], [1, 5], "6"), TokenizedExample([1, 5, 2], [1], "5")])
        >>> batch["labels"].tolist()
        [[-100, -100, 6, 2], [-100, 5, 2, -100]]
        >>> batch["prompt_ids"].tolist()
        [[1, 5], [0, 1]]
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None) -> None:
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def _length(self, sequences: Sequence[Sequence[int]]) -> int:
        length = max(len(s) for s in sequences)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        return length

    def __call__(self, examples: Sequence[TokenizedExample]) -> dict[str, Any]:
        ids = [example.input_ids for example in examples]
        prompts = [example.prompt_ids for example in examples]
        length, prompt_length = self._length(ids), self._length(prompts)
        labels = [[IGNORE_INDEX] * len(p) + i[len(p):] for i, p in zip(ids, prompts)]
        return {
            "input_ids": _pad(ids, self.pad_token_id, length, left=False),
            "attention_mask": _pad([[1] * len(i) for i in ids], 0, length, left=False),
            "labels": _pad(labels, IGNORE_INDEX, length, left=False),
            "prompt_ids": _pad(prompts, self.pad_token_id, prompt_length, left=True),
            "prompt_attention_mask": _pad([[1] * len(p) for p in prompts], 0, prompt_length, left=True),
            "answers": [example.answer for example in examples],
        }


class EpochShuffleSampler(Sampler[int]):
    """A shuffling sampler whose order depends only on ``seed`` and the epoch (Lightning calls ``set_epoch``).

    PyTorch's ``RandomSampler`` draws from the global random state, which a resumed run does not share with
    an uninterrupted one; this order is a pure function of (seed, epoch), so resuming replays it exactly.

    Example:
        >>> sampler = EpochShuffleSampler(5, seed=0)
        >>> sampler.set_epoch(1)
        >>> sorted(sampler)
        [0, 1, 2, 3, 4]
    """

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())


def tokenizer_for(owner: str, tokenizer_name: str | None, trainer: Any) -> Any:
    """The tokenizer a data module uses: ``tokenizer_name`` from Hugging Face when given, else the model's.

    Raises:
        ValueError: neither is available; the message names the setting to add.
    """
    if tokenizer_name is not None:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(tokenizer_name)
    model = trainer.lightning_module if trainer is not None else None
    if getattr(model, "tokenizer", None) is None:
        raise ValueError(
            f"{owner} has no tokenizer: set data.init_args.tokenizer, or use a model whose pretrained folder holds one."
        )
    return model.tokenizer


class SplitLoaders(ABC):
    """The dataloaders of a data module that keeps its prepared splits in ``self.datasets`` (``"train"``,
    ``"validation"``, ``"test"``): training batches in the seeded order of :class:`EpochShuffleSampler`, the others
    in order and ``eval_batch_size`` at a time; no validation split means no validation. ``predict`` reads the test
    split.

    A subclass sets ``datasets``, ``batch_size``, ``eval_batch_size``, ``num_workers`` and ``seed``, and gives its
    batches' collate function with :meth:`collate_fn`.
    """

    datasets: dict[str, Sequence[Any]]
    batch_size: int
    eval_batch_size: int
    num_workers: int
    seed: int

    @abstractmethod
    def collate_fn(self) -> Any:
        """The ``collate_fn`` of every loader."""

    def _loader(self, split: str, train: bool) -> DataLoader:
        if split not in self.datasets:
            raise ValueError(f"{type(self).__name__} has no {split} split; give it {split} data.")
        dataset = self.datasets[split]
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            sampler=EpochShuffleSampler(len(dataset), self.seed) if train else None,
            collate_fn=self.collate_fn(),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader | list:
        # No validation data is allowed: Lightning then skips validation.
        return self._loader("validation", train=False) if "validation" in self.datasets else []

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)


class PromptAnswerDataModule(SplitLoaders, pl.LightningDataModule, ABC):
    """Base of the causal-LM data modules: subclasses say where the examples and the tokenizer come from.

    Subclasses implement :meth:`load_examples` (the examples of a split, or ``None`` when there are none) and
    :meth:`load_tokenizer`. After ``setup``, :attr:`tokenizer` is the tokenizer used (the model reads it to
    decode and saves it with checkpoints).

    Args:
        batch_size: training examples per batch (per device).
        eval_batch_size: validation and test examples per batch (generation is cheap to batch).
        max_length: longest sequence in tokens; longer ones are cut (see :func:`tokenize_examples`).
        pad_to_multiple_of: round padded lengths up to a multiple of this, or ``None``.
        num_workers: ``DataLoader`` worker processes (0: load in the training process).
        seed: seed of the training order.
    """

    def __init__(
        self,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        max_length: int = 512,
        pad_to_multiple_of: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size), ("max_length", max_length)):
            if value < 1:
                raise ValueError(f"{type(self).__name__}: {name} must be >= 1, got {value}.")
        self.batch_size, self.eval_batch_size, self.max_length = batch_size, eval_batch_size, max_length
        self.pad_to_multiple_of, self.num_workers, self.seed = pad_to_multiple_of, num_workers, seed
        self.tokenizer: Any = None
        self.datasets: dict[str, list[TokenizedExample]] = {}

    # -- what subclasses provide -----------------------------------------------------------------

    @abstractmethod
    def load_examples(self, split: str) -> list[PromptAnswer] | None:
        """The examples of ``split`` (``"train"``, ``"validation"`` or ``"test"``), or ``None`` when it has none."""

    @abstractmethod
    def load_tokenizer(self) -> Any:
        """The tokenizer to use (called once, in ``setup``)."""

    # -- Lightning hooks ---------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        if self.tokenizer is None:
            self.tokenizer = self.load_tokenizer()
        splits = {"fit": ("train", "validation"), "validate": ("validation",), "test": ("test",), "predict": ("test",)}
        for split in splits[stage]:
            if split in self.datasets:
                continue
            examples = self.load_examples(split)
            if examples is not None:
                self.datasets[split] = tokenize_examples(self.tokenizer, examples, self.max_length)
                logger.info("%s: %d %s examples.", type(self).__name__, len(self.datasets[split]), split)
        if stage == "fit" and not self.datasets.get("train"):
            raise ValueError(f"{type(self).__name__}: the training split has no examples; give it training data.")

    def collate_fn(self) -> PromptAnswerCollator:
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        return PromptAnswerCollator(pad_id, self.pad_to_multiple_of)

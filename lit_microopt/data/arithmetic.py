"""Synthetic arithmetic problems ("57+68=" -> "125"): the package's built-in data, made in memory from a seed.

No files and no network: the problems are drawn without repetition from all ``operand operation operand``
combinations, so the test, validation and training splits never share a problem, and the same seed gives the
same splits on every machine. The tokenizer is the character-level one of :mod:`.char_tokenizer`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from transformers import PreTrainedTokenizerFast

from lit_microopt.data.char_tokenizer import build_char_tokenizer
from lit_microopt.data.prompt_answer import PromptAnswer, PromptAnswerDataModule

OPERATIONS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
SPLITS = ("test", "validation", "train")
MAX_DIGITS = 8  # keeps the number of possible problems within what random.sample can index


def arithmetic_problems(operations: Sequence[str], digits: int, count: int, seed: int) -> list[tuple[int, str, int]]:
    """``count`` distinct problems ``(a, operation, b)`` with operands in ``[0, 10**digits)``, in a seeded order.

    Args:
        operations: operation symbols among ``"+"``, ``"-"``, ``"*"``.
        digits: most digits of an operand.
        count: how many problems.
        seed: the order's seed.

    Raises:
        ValueError: an unknown operation, ``digits`` out of [1, 8], or more problems asked than exist.

    Example:
        >>> arithmetic_problems(["+"], digits=1, count=3, seed=0)
        [(4, '+', 9), (9, '+', 7), (5, '+', 3)]
    """
    unknown = [op for op in operations if op not in OPERATIONS]
    if unknown or not operations or len(set(operations)) != len(operations):
        raise ValueError(f"operations must be distinct symbols among {sorted(OPERATIONS)}, got {list(operations)}.")
    if not 1 <= digits <= MAX_DIGITS:
        raise ValueError(f"digits must be in [1, {MAX_DIGITS}], got {digits}.")
    operands = 10**digits
    space = len(operations) * operands * operands
    if count > space:
        raise ValueError(
            f"{count} distinct problems were asked for, but only {space} exist with {digits}-digit operands and "
            f"operations {list(operations)}; lower train_size, val_size or test_size, or raise digits."
        )
    # Sampling indices of the whole space without replacement: distinct problems, whatever the space's size.
    indices = random.Random(seed).sample(range(space), count)
    return [
        (index // operands % operands, operations[index // (operands * operands)], index % operands)
        for index in indices
    ]


class ArithmeticDataModule(PromptAnswerDataModule):
    """Arithmetic question / answer text, e.g. ``"57+68="`` -> ``"125"``, generated in memory.

    The test problems are drawn first, then the validation and the training ones, all distinct: changing
    ``train_size`` leaves the held-out problems unchanged. ``prompt_template`` writes a problem as text:
    ``"{question}="`` gives ``"57+68="``, ``"What is {question}?"`` gives ``"What is 57+68?"``.

    Args:
        operations: operation symbols among ``"+"``, ``"-"``, ``"*"``.
        digits: most digits of an operand (operands are ``0`` to ``10**digits - 1``).
        train_size: training problems.
        val_size: validation problems.
        test_size: test problems.
        prompt_template: the prompt, with ``{question}`` standing for ``"57+68"``.
        batch_size: training problems per batch.
        eval_batch_size: validation and test problems per batch.
        max_length: longest sequence in tokens.
        pad_to_multiple_of: round padded lengths up to a multiple of this, or ``None``.
        num_workers: ``DataLoader`` worker processes.
        seed: seed of the problems, their splits and the training order.

    Example:
        >>> data = ArithmeticDataModule(operations=["+"], digits=2, train_size=100, val_size=10, test_size=10)
        >>> data.problems("test")[0]
        PromptAnswer(prompt='63+11=', answer='74')
        >>> data.setup("fit")
        >>> batch = next(iter(data.train_dataloader()))
        >>> sorted(batch)
        ['answers', 'attention_mask', 'input_ids', 'labels', 'prompt_attention_mask', 'prompt_ids']
    """

    def __init__(
        self,
        operations: list[str] = ["+"],  # noqa: B006 - jsonargparse needs a plain list default; never mutated
        digits: int = 2,
        train_size: int = 8000,
        val_size: int = 500,
        test_size: int = 500,
        prompt_template: str = "{question}=",
        batch_size: int = 64,
        eval_batch_size: int = 256,
        max_length: int = 64,
        pad_to_multiple_of: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, max_length, pad_to_multiple_of, num_workers, seed)
        for name, value in (("train_size", train_size), ("val_size", val_size), ("test_size", test_size)):
            if value < 0:
                raise ValueError(f"ArithmeticDataModule: {name} must be >= 0, got {value}.")
        if "{question}" not in prompt_template:
            raise ValueError(f"ArithmeticDataModule: prompt_template must contain {{question}}, got {prompt_template!r}.")
        self.save_hyperparameters()
        self.operations, self.digits, self.prompt_template = list(operations), digits, prompt_template
        self.sizes = {"test": test_size, "validation": val_size, "train": train_size}
        # Checked now, so that a bad configuration fails before any training starts.
        self._all = arithmetic_problems(self.operations, digits, sum(self.sizes.values()), seed)

    def triples(self, split: str) -> list[tuple[int, str, int]]:
        """The problems of ``split`` (``"train"``, ``"validation"`` or ``"test"``) as ``(a, operation, b)``."""
        if split not in self.sizes:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
        start = sum(self.sizes[name] for name in SPLITS[: SPLITS.index(split)])
        return self._all[start : start + self.sizes[split]]

    def problems(self, split: str) -> list[PromptAnswer]:
        """The problems of ``split`` (``"train"``, ``"validation"`` or ``"test"``) as prompt / answer pairs."""
        return [
            PromptAnswer(self.prompt_template.format(question=f"{a}{op}{b}"), str(OPERATIONS[op](a, b)))
            for a, op, b in self.triples(split)
        ]

    def load_examples(self, split: str) -> list[PromptAnswer] | None:
        return self.problems(split) if self.sizes[split] else None

    def load_tokenizer(self) -> PreTrainedTokenizerFast:
        return build_char_tokenizer()

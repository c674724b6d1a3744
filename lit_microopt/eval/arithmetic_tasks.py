"""The data of the lm-eval tasks shipped in ``configs/tasks/``: the quickstart's held-out sums, as JSON Lines.

The quickstart fine-tunes on sums asked as questions ("What is 57+68?" -> "125") and holds out 500 validation
and 500 test problems (:class:`~lit_microopt.data.ArithmeticDataModule`, seed 0). The tasks score the test
problems and draw their few-shot examples from the validation ones, so neither was ever trained on. Each record
carries the question, the answer and, for the multiple-choice task, four candidate answers: the true one and
three near misses (off by one or by ten), in a seeded order.

The files are generated, not written by hand; regenerate them (the same bytes for the same arguments) with::

    python -m lit_microopt.eval.arithmetic_tasks --out configs/tasks
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: The quickstart's data (``configs/quickstart.yaml``); the held-out splits do not depend on ``train_size``.
QUICKSTART_DATA = dict(
    operations=["+"], digits=2, train_size=7000, val_size=500, test_size=500, prompt_template="What is {question}?",
    seed=0,
)
#: File of each split, next to the task YAML files.
SPLIT_FILES = {"test": "arithmetic_sums_test.jsonl", "validation": "arithmetic_sums_validation.jsonl"}
#: How far the wrong choices of the multiple-choice task are from the answer, tried in this order.
NEAR_MISSES = (1, -1, 10, -10, 2, -2, 11, -11)
CHOICES = 4


def near_miss_choices(answer: int, rng: random.Random) -> tuple[list[str], int]:
    """Four candidate answers, the true one among three non-negative near misses, and the true one's index.

    Example:
        >>> near_miss_choices(57, random.Random(0))
        (['56', '57', '58', '67'], 1)
    """
    wrong = [answer + offset for offset in NEAR_MISSES if answer + offset >= 0][: CHOICES - 1]
    choices = [answer, *wrong]
    rng.shuffle(choices)
    return [str(choice) for choice in choices], choices.index(answer)


def arithmetic_task_records(split: str, data: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The records of ``split`` (``"test"`` or ``"validation"``): question, answer, choices and label.

    Args:
        split: which held-out problems.
        data: ``ArithmeticDataModule`` arguments; the quickstart's when ``None``.

    Raises:
        ValueError: ``split`` is not a held-out split, or a problem's answer is not an integer.

    Example:
        >>> arithmetic_task_records("test")[0]
        {'question': 'What is 63+11?', 'answer': '74', 'choices': ['75', '73', '84', '74'], 'label': 3}
    """
    from lit_microopt.data import ArithmeticDataModule

    if split not in SPLIT_FILES:
        raise ValueError(f"split must be one of {sorted(SPLIT_FILES)} (the held-out problems), got {split!r}.")
    data = dict(QUICKSTART_DATA if data is None else data)
    problems = ArithmeticDataModule(**data).problems(split)
    # One generator per split, seeded from the data's seed: each file is reproducible on its own.
    rng = random.Random(f"{data.get('seed', 0)}-{split}")
    records = []
    for problem in problems:
        choices, label = near_miss_choices(int(problem.answer), rng)
        records.append({"question": problem.prompt, "answer": problem.answer, "choices": choices, "label": label})
    return records


def write_arithmetic_task_data(folder: str | Path, data: dict[str, Any] | None = None) -> list[Path]:
    """Write one JSON Lines file per held-out split into ``folder``; returns their paths.

    Example:
        >>> import tempfile
        >>> [path.name for path in write_arithmetic_task_data(tempfile.mkdtemp())]
        ['arithmetic_sums_test.jsonl', 'arithmetic_sums_validation.jsonl']
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for split, name in SPLIT_FILES.items():
        lines = [json.dumps(record) + "\n" for record in arithmetic_task_records(split, data)]
        path = folder / name
        path.write_text("".join(lines))
        paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m lit_microopt.eval.arithmetic_tasks --out configs/tasks``."""
    parser = argparse.ArgumentParser(
        prog="python -m lit_microopt.eval.arithmetic_tasks",
        description="Write the quickstart's held-out sums as the JSON Lines files of the tasks in configs/tasks.",
    )
    parser.add_argument("--out", default="configs/tasks", help="folder of the task YAML files (default: %(default)s)")
    arguments = parser.parse_args(argv)
    for path in write_arithmetic_task_data(arguments.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

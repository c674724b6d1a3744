"""Loader of the arithmetic tasks' data: the JSON Lines files next to this file, from any working directory.

lm-eval resolves a task's relative ``data_files`` against the current directory. The task YAML files name this
loader instead (``custom_dataset: !function arithmetic.load_problems``); lm-eval finds it next to the YAML file
and it finds the data next to itself. It needs only ``datasets``, so stock ``lm_eval --include_path`` runs the
tasks without lit_microopt installed. The files are made by ``python -m lit_microopt.eval.arithmetic_tasks``.
"""

import json
from pathlib import Path

import datasets

HERE = Path(__file__).resolve().parent
SPLIT_FILES = {"test": "arithmetic_sums_test.jsonl", "validation": "arithmetic_sums_validation.jsonl"}


def load_problems(**_metadata) -> datasets.DatasetDict:
    """The held-out problems by split; lm-eval passes the task's metadata and model arguments, unused here."""
    splits = {}
    for split, name in SPLIT_FILES.items():
        with open(HERE / name) as file:
            splits[split] = datasets.Dataset.from_list([json.loads(line) for line in file if line.strip()])
    return datasets.DatasetDict(splits)

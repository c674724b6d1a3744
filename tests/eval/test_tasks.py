"""The shipped tasks: their data is the quickstart's held-out problems, found from any directory; task names."""

import json
import random

import pytest

from lit_microopt.data import ArithmeticDataModule
from lit_microopt.eval import UnknownTaskError
from lit_microopt.eval.arithmetic_tasks import QUICKSTART_DATA, SPLIT_FILES, near_miss_choices, write_arithmetic_task_data
from lit_microopt.eval.tasks import (
    build_task_manager,
    expand_task_names,
    metrics_from_results,
    resolve_include_path,
)
from tests.eval.conftest import TASKS


def test_the_shipped_data_is_what_the_generator_writes(tmp_path):
    for path in write_arithmetic_task_data(tmp_path):
        assert path.read_bytes() == (TASKS / path.name).read_bytes(), f"regenerate {path.name}: see arithmetic_tasks.py"


def test_the_tasks_hold_the_quickstarts_held_out_problems():
    data = ArithmeticDataModule(**QUICKSTART_DATA)
    for split, name in SPLIT_FILES.items():
        records = [json.loads(line) for line in (TASKS / name).read_text().splitlines()]
        assert [(r["question"], r["answer"]) for r in records] == [(p.prompt, p.answer) for p in data.problems(split)]
        for record in records:
            assert record["choices"][record["label"]] == record["answer"] and len(set(record["choices"])) == 4
    training = {problem.prompt for problem in data.problems("train")}
    assert not training & {json.loads(line)["question"] for line in (TASKS / SPLIT_FILES["test"]).open()}


def test_near_misses_are_distinct_and_never_negative():
    for answer in (0, 1, 9, 10, 198):
        choices, label = near_miss_choices(answer, random.Random(answer))
        numbers = [int(choice) for choice in choices]
        assert numbers[label] == answer and len(set(numbers)) == 4 and min(numbers) >= 0


def test_the_tasks_load_their_data_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # lm-eval would read relative data paths from here
    manager = build_task_manager(["lit_microopt"], TASKS)
    tasks = manager.load(["lit_microopt"])["tasks"]
    assert sorted(tasks) == ["lit_microopt_arithmetic", "lit_microopt_arithmetic_mc"]
    generation, choice = tasks["lit_microopt_arithmetic"], tasks["lit_microopt_arithmetic_mc"]
    [first] = generation.test_docs().select([0])
    assert len(generation.test_docs()) == 500 and len(generation.fewshot_docs()) == 500
    assert generation.doc_to_text(first) + generation.doc_to_target(first) == "What is 63+11?74"
    assert choice.doc_to_choice(first)[choice.doc_to_target(first)] == "74"


def test_configs_tasks_is_found_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_include_path("configs/tasks") == TASKS
    with pytest.raises(FileNotFoundError, match="task folder 'no/such/folder' does not exist"):
        resolve_include_path("no/such/folder")


def test_glob_patterns_and_files_name_tasks():
    manager = build_task_manager(["lit_microopt_arith*"], TASKS)
    files = [str(TASKS / "lit_microopt_arithmetic_mc.yaml")]
    assert expand_task_names(manager, ["lit_microopt_arith*", *files]) == [
        "lit_microopt_arithmetic", "lit_microopt_arithmetic_mc", *files,
    ]


def test_an_unknown_task_lists_the_closest_names():
    with pytest.raises(UnknownTaskError) as error:
        build_task_manager(["lit_microopt_arithmetc", "hellaswg"], TASKS)
    message = str(error.value)
    assert "unknown lm-eval task 'lit_microopt_arithmetc' (close names: lit_microopt_arithmetic" in message
    assert "unknown lm-eval task 'hellaswg' (close names: hellaswag" in message  # lm-eval's own tasks too
    with pytest.raises(ValueError, match="no lm-eval task given"):
        build_task_manager([], TASKS)


def test_results_become_metrics_per_task_metric_and_filter():
    results = {"results": {
        "gsm8k": {"alias": "gsm8k", "exact_match,strict-match": 0.25, "exact_match_stderr,strict-match": 0.01,
                  "exact_match,flexible-extract": 0.5},
        "mmlu": {"acc,none": 0.4, "acc_stderr,none": "N/A", "sample_count,none": True},
    }}
    assert metrics_from_results(results) == {
        "lm_eval/gsm8k/exact_match/strict-match": 0.25,
        "lm_eval/gsm8k/exact_match/flexible-extract": 0.5,
        "lm_eval/mmlu/acc": 0.4,
    }

"""Running lm-eval tasks: task folders, task names checked against lm-eval's list, results as metrics and tables.

Shared by the ``eval`` command and :class:`~lit_microopt.eval.LMEvalCallback`.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lit_microopt._extras import require_extra

require_extra("eval", "lm_eval")  # imported where used: lm-eval takes seconds to import

#: The repository's root in a source checkout (``pip install -e``): where ``configs/tasks`` is found from anywhere.
REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
#: Close names offered for an unknown task.
CLOSE_NAMES = 5


class UnknownTaskError(ValueError):
    """A task name that lm-eval does not know, with the known names closest to it."""


def resolve_include_path(path: str | Path) -> Path:
    """The folder of task YAML files that ``path`` names.

    A relative path is looked up from the current directory, then from the repository's root, so that
    ``configs/tasks`` works from any directory in a source checkout.

    Raises:
        FileNotFoundError: no such folder.

    Example:
        >>> resolve_include_path("configs/tasks").name
        'tasks'
    """
    candidate = Path(path).expanduser()
    if candidate.is_dir():
        return candidate.resolve()
    if not candidate.is_absolute() and (REPOSITORY_ROOT / candidate).is_dir():
        return REPOSITORY_ROOT / candidate
    raise FileNotFoundError(
        f"task folder {str(path)!r} does not exist (relative paths start at {Path.cwd()}, then at {REPOSITORY_ROOT}); "
        "give a folder of lm-eval task YAML files, e.g. configs/tasks."
    )


def as_list(value: str | Sequence[str] | None) -> list[str]:
    """``"a,b"`` or ``["a", "b"]`` -> ``["a", "b"]``; ``None`` -> ``[]``.

    Example:
        >>> as_list("gsm8k, arc_challenge")
        ['gsm8k', 'arc_challenge']
    """
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    return [str(item).strip() for item in items if str(item).strip()]


def _is_task_file(name: str) -> bool:
    return name.endswith((".yaml", ".yml")) and Path(name).is_file()


def _unknown(manager: Any, tasks: Sequence[str]) -> list[str]:
    return [name for name in tasks if not _is_task_file(name) and not manager.match_tasks([name])]


def build_task_manager(tasks: Sequence[str], include_path: str | Path | Sequence[str | Path] | None = None) -> Any:
    """An lm-eval ``TaskManager`` that knows every task of ``tasks``.

    When the tasks are all in ``include_path``, only those folders are indexed (a fraction of a second);
    otherwise lm-eval's own tasks too (a few seconds: thousands of YAML files).

    Args:
        tasks: task, group or tag names, glob patterns (``"arc_*"``) or YAML files.
        include_path: folder(s) of task YAML files (see :func:`resolve_include_path`).

    Raises:
        UnknownTaskError: a name that matches no task, with lm-eval's closest names.
        ValueError: no task given.
        FileNotFoundError: an ``include_path`` folder that does not exist.

    Example:
        >>> build_task_manager(["lit_microopt_arithmetic"], "configs/tasks").all_tasks
        ['lit_microopt', 'lit_microopt_arithmetic', 'lit_microopt_arithmetic_mc']
    """
    tasks = list(tasks)
    if not tasks:
        raise ValueError("no lm-eval task given; name at least one, e.g. tasks: [lit_microopt_arithmetic] or gsm8k.")
    folders = tuple(str(resolve_include_path(path)) for path in as_list_of_paths(include_path))
    if folders:
        own = _task_manager(folders, include_defaults=False)
        if not _unknown(own, tasks):
            return own
    manager = _task_manager(folders, include_defaults=True)
    unknown = _unknown(manager, tasks)
    if unknown:
        raise UnknownTaskError(" ".join(_unknown_task_message(name, manager.all_tasks, folders) for name in unknown))
    return manager


@functools.lru_cache(maxsize=8)
def _task_manager(folders: tuple[str, ...], include_defaults: bool) -> Any:
    # Indexing lm-eval's own tasks reads thousands of YAML files: once per process is enough.
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(folders) or None, include_defaults=include_defaults)


def as_list_of_paths(value: str | Path | Sequence[str | Path] | None) -> list[str | Path]:
    """One path or several, as a list; a string may list several separated by commas."""
    if value is None:
        return []
    if isinstance(value, Path):
        return [value]
    return as_list(value) if isinstance(value, str) else list(value)


def _unknown_task_message(name: str, known: Sequence[str], folders: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, known, n=CLOSE_NAMES, cutoff=0.6)
    where = f"lm-eval's tasks and {', '.join(folders)}" if folders else "lm-eval's tasks"
    suggestion = f"close names: {', '.join(close)}" if close else "no known name is close"
    return (
        f"unknown lm-eval task {name!r} ({suggestion}); check the spelling, or give the folder of its YAML file "
        f"as include_path (searched: {where}; 'lm-eval ls tasks' lists them all)."
    )


def expand_task_names(manager: Any, tasks: Sequence[str]) -> list[str]:
    """Task names with glob patterns expanded and YAML files made absolute, each once, in order.

    Example:
        >>> manager = build_task_manager(["lit_microopt_*"], "configs/tasks")
        >>> expand_task_names(manager, ["lit_microopt_*"])
        ['lit_microopt_arithmetic', 'lit_microopt_arithmetic_mc']
    """
    names: list[str] = []
    for name in tasks:
        matches = [str(Path(name).resolve())] if _is_task_file(name) else manager.match_tasks([name])
        names += [match for match in matches if match not in names]
    return names


def metrics_from_results(results: dict[str, Any]) -> dict[str, float]:
    """lm-eval's results as flat metrics: ``lm_eval/<task>/<metric>``, ``lm_eval/<task>/<metric>/<filter>``.

    Standard errors and values that are not numbers are left out; groups (``mmlu``) get their own entries.

    Example:
        >>> metrics_from_results({"results": {"gsm8k": {"alias": "gsm8k", "exact_match,strict-match": 0.25,
        ...     "exact_match_stderr,strict-match": 0.01}, "arc_challenge": {"acc,none": 0.5}}})
        {'lm_eval/gsm8k/exact_match/strict-match': 0.25, 'lm_eval/arc_challenge/acc': 0.5}
    """
    metrics = {}
    for task, values in results.get("results", {}).items():
        for key, value in values.items():
            metric, _, filter_name = key.partition(",")
            if not filter_name or metric.endswith("_stderr") or isinstance(value, bool):
                continue
            if isinstance(value, (int, float)):
                suffix = "" if filter_name == "none" else f"/{filter_name}"
                metrics[f"lm_eval/{task}/{metric}{suffix}"] = float(value)
    return metrics


def results_table(results: dict[str, Any]) -> str:
    """lm-eval's Markdown table of the results (and of the groups', when there are groups)."""
    from lm_eval.utils import make_table

    table = make_table(results)
    if results.get("groups"):
        table += "\n" + make_table(results, "groups")
    return table


def run_tasks(
    lm: Any,
    tasks: Sequence[str],
    manager: Any,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    bootstrap_iters: int = 100_000,
) -> dict[str, Any]:
    """Evaluate ``lm`` on ``tasks`` with ``lm_eval.simple_evaluate``; returns lm-eval's results.

    lm-eval seeds Python's, NumPy's and PyTorch's generators and the few-shot draws with its own defaults, so
    that results match those of its command line.

    Args:
        lm: an lm-eval model (e.g. :class:`~lit_microopt.eval.LitMicroOptLM`).
        tasks: names known to ``manager`` (see :func:`build_task_manager`).
        manager: the ``TaskManager``.
        limit: documents per task (a number), or a fraction of them (below 1); all when ``None``.
        num_fewshot: few-shot examples, instead of each task's own number.
        bootstrap_iters: resamplings for the standard errors that have no formula (0: no standard errors).
    """
    from lm_eval import simple_evaluate

    return simple_evaluate(
        model=lm, tasks=expand_task_names(manager, tasks), task_manager=manager, limit=limit,
        num_fewshot=num_fewshot, bootstrap_iters=bootstrap_iters, log_samples=False,
    )

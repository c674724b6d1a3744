"""``python -m lit_microopt eval``: a trained checkpoint on lm-eval tasks; prints lm-eval's table, writes JSON.

::

    python -m lit_microopt eval --checkpoint runs/quickstart/checkpoints/last.ckpt \\
        --tasks lit_microopt_arithmetic,lit_microopt_arithmetic_mc --include_path configs/tasks
    python -m lit_microopt eval --checkpoint runs/gsm8k/checkpoints/last.ckpt --tasks gsm8k --device cuda
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: Where the results go when ``--output_path`` is not given (relative to the current directory).
DEFAULT_OUTPUT_FOLDER = "lm_eval_results"


def evaluate_checkpoint(
    checkpoint: str | Path,
    tasks: str | Sequence[str],
    include_path: str | Sequence[str] | None = None,
    device: str | None = None,
    batch_size: int = 16,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    max_gen_toks: int = 256,
    bootstrap_iters: int = 100_000,
) -> dict[str, Any]:
    """lm-eval's results for the ``CausalLM`` in ``checkpoint`` on ``tasks``.

    Args:
        checkpoint: a ``.ckpt`` file of a ``CausalLM``.
        tasks: lm-eval task, group or tag names, glob patterns or YAML files: a list or ``"a,b"``.
        include_path: folder(s) of task YAML files (``configs/tasks`` is found from any directory).
        device: ``"cpu"``, ``"cuda"``, ...; default CUDA when there is one.
        batch_size: requests per forward pass.
        limit: documents per task, or a fraction of them (below 1); all when ``None``.
        num_fewshot: few-shot examples, instead of each task's own number.
        max_gen_toks: most generated tokens when a task does not say.
        bootstrap_iters: resamplings for the standard errors that have no formula (0: none).

    Raises:
        UnknownTaskError: a task lm-eval does not know (the message lists close names).
        FileNotFoundError, ValueError: a missing folder or checkpoint, a file that is not a ``CausalLM`` checkpoint.

    Example:
        >>> results = evaluate_checkpoint("last.ckpt", "lit_microopt_arithmetic", "configs/tasks")  # doctest: +SKIP
        >>> results["results"]["lit_microopt_arithmetic"]["exact_match,none"]  # doctest: +SKIP
        0.998
    """
    from lit_microopt.eval.harness_model import LitMicroOptLM
    from lit_microopt.eval.tasks import as_list, build_task_manager, run_tasks

    tasks = as_list(tasks)
    manager = build_task_manager(tasks, include_path)  # before loading the model: a typo fails in seconds
    lm = LitMicroOptLM(checkpoint=str(checkpoint), device=device, batch_size=batch_size, max_gen_toks=max_gen_toks)
    return run_tasks(lm, tasks, manager, limit=limit, num_fewshot=num_fewshot, bootstrap_iters=bootstrap_iters)


def write_results(results: dict[str, Any], output_path: str | Path | None) -> Path:
    """Write lm-eval's results as JSON: to ``output_path`` if it ends in ``.json``, else into that folder
    (default ``lm_eval_results/``) as ``results_<date>T<time>.json``; returns the file."""
    from lm_eval.utils import handle_non_serializable

    target = Path(output_path or DEFAULT_OUTPUT_FOLDER).expanduser()
    if target.suffix != ".json":
        target = target / f"results_{time.strftime('%Y-%m-%dT%H-%M-%S')}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(results, indent=2, default=handle_non_serializable, ensure_ascii=False) + "\n")
    return target


def _limit(text: str) -> int | float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0 (a number of documents, or a fraction below 1), got {text}")
    return int(value) if value >= 1 and value.is_integer() else value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """The ``eval`` command; returns the exit status (2 for a mistake in the command line)."""
    parser = argparse.ArgumentParser(
        prog="python -m lit_microopt eval",
        description="Evaluate a CausalLM checkpoint on lm-evaluation-harness tasks: print lm-eval's table and "
        "write its results as JSON.",
    )
    parser.add_argument("--checkpoint", required=True, help="the .ckpt file, e.g. runs/quickstart/checkpoints/last.ckpt")
    parser.add_argument("--tasks", required=True, help="comma-separated task names, e.g. lit_microopt_arithmetic,gsm8k")
    parser.add_argument("--include_path", action="append", help="a folder of task YAML files, e.g. configs/tasks "
                        "(repeat for several)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when there is one)")
    parser.add_argument("--batch_size", type=_positive, default=16, help="requests per forward pass (default 16)")
    parser.add_argument("--limit", type=_limit, help="documents per task, or a fraction below 1 (default: all)")
    parser.add_argument("--num_fewshot", type=_non_negative, help="few-shot examples (default: each task's own)")
    parser.add_argument("--max_gen_toks", type=_positive, default=256,
                        help="most generated tokens when a task does not say (default 256)")
    parser.add_argument("--bootstrap_iters", type=_non_negative, default=100_000,
                        help="resamplings for standard errors without a formula; 0 skips them (default 100000)")
    parser.add_argument("--output_path", help=f"a .json file, or a folder for results_<time>.json "
                        f"(default: {DEFAULT_OUTPUT_FOLDER}/)")
    arguments = parser.parse_args(argv)
    try:
        results = evaluate_checkpoint(
            arguments.checkpoint, arguments.tasks, arguments.include_path, arguments.device, arguments.batch_size,
            arguments.limit, arguments.num_fewshot, arguments.max_gen_toks, arguments.bootstrap_iters,
        )
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))
    from lit_microopt.eval.tasks import results_table

    print(results_table(results))
    print(f"results written to {write_results(results, arguments.output_path)}")
    return 0

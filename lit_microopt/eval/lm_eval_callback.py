"""LMEvalCallback: lm-evaluation-harness tasks on the model being trained, logged with the other metrics."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from lit_microopt.eval.tasks import as_list, build_task_manager, metrics_from_results, results_table, run_tasks
from lit_microopt.models import CausalLM


class LMEvalCallback(Callback):
    """Evaluate the model on lm-eval tasks every ``every_n_epochs`` epochs and/or when training ends.

    Each evaluation logs lm-eval's metrics through the trainer's loggers as ``lm_eval/<task>/<metric>`` (with
    ``/<filter>`` for tasks whose results are filtered, e.g. ``lm_eval/gsm8k/exact_match/strict-match``) at the
    trainer's global step, logs lm-eval's table, and puts the metrics in ``trainer.callback_metrics`` on every
    rank. Rank zero runs the harness on its copy of the model while the other ranks wait; the model goes back to
    the training mode each layer had, and the random generators to their state, so training goes on exactly as
    it would have without the evaluation.

    The model must be a :class:`~lit_microopt.models.CausalLM` (a Hugging Face causal LM and its tokenizer) whose
    parameters are all on rank zero: DDP yes, FSDP and DeepSpeed ZeRO-3 no (evaluate their checkpoints with
    ``python -m lit_microopt eval``). The other ranks wait for rank zero within the strategy's collective
    timeout (30 minutes for DDP by default): give ``DDPStrategy(timeout=...)`` more for long evaluations.

    Task names are checked when the callback is made: a name lm-eval does not know is a ``ValueError`` that
    lists the closest known names, before any training.

    Args:
        tasks: lm-eval task, group or tag names, glob patterns or YAML files: a list or ``"a,b"``.
        every_n_epochs: evaluate after every ``every_n_epochs``-th training epoch; ``None`` or 0: not during training.
        at_fit_end: evaluate when training ends (unless the last epoch's evaluation saw the final weights).
        limit: documents per task, or a fraction of them (below 1), for quick checks; ``None``: all of them.
        num_fewshot: few-shot examples, instead of each task's own number.
        batch_size: requests per forward pass.
        include_path: folder(s) of task YAML files, e.g. ``configs/tasks`` (found from any directory in a
            source checkout).
        max_gen_toks: most generated tokens when a task does not say.
        bootstrap_iters: resamplings for the standard errors that have no formula; 0 skips standard errors.
        log_table: log lm-eval's table of results (INFO level, rank zero).

    Raises:
        ValueError: an unknown task (with close names), or an argument out of range.
        FileNotFoundError: an ``include_path`` folder that does not exist.

    Example::

        >>> from lightning.pytorch import Trainer
        >>> from lit_microopt.eval import LMEvalCallback
        >>> callback = LMEvalCallback(["lit_microopt_arithmetic"], include_path="configs/tasks", limit=100)
        >>> trainer = Trainer(callbacks=[callback])

    In a LightningCLI config::

        trainer:
          callbacks:
            - class_path: lit_microopt.eval.LMEvalCallback
              init_args: {tasks: [gsm8k], every_n_epochs: 1, limit: 200}
    """

    def __init__(
        self,
        tasks: str | list[str],
        every_n_epochs: int | None = None,
        at_fit_end: bool = True,
        limit: int | float | None = None,
        num_fewshot: int | None = None,
        batch_size: int = 16,
        include_path: str | list[str] | None = None,
        max_gen_toks: int = 256,
        bootstrap_iters: int = 100_000,
        log_table: bool = True,
    ) -> None:
        super().__init__()
        every_n_epochs = every_n_epochs or 0
        checks = [
            (every_n_epochs >= 0, f"every_n_epochs must be >= 0, got {every_n_epochs}"),
            (every_n_epochs > 0 or at_fit_end, "with every_n_epochs unset and at_fit_end false it would never run"),
            (limit is None or limit > 0, f"limit must be > 0 (a number of documents or a fraction), got {limit}"),
            (num_fewshot is None or num_fewshot >= 0, f"num_fewshot must be >= 0, got {num_fewshot}"),
            (batch_size >= 1, f"batch_size must be >= 1, got {batch_size}"),
            (max_gen_toks >= 1, f"max_gen_toks must be >= 1, got {max_gen_toks}"),
            (bootstrap_iters >= 0, f"bootstrap_iters must be >= 0, got {bootstrap_iters}"),
        ]
        for valid, problem in checks:
            if not valid:
                raise ValueError(f"LMEvalCallback: {problem}; fix the callback's arguments.")
        self.tasks = as_list(tasks)
        self.every_n_epochs, self.at_fit_end = every_n_epochs, at_fit_end
        self.limit, self.num_fewshot, self.batch_size = limit, num_fewshot, batch_size
        self.max_gen_toks, self.bootstrap_iters, self.log_table = max_gen_toks, bootstrap_iters, log_table
        self.task_manager = build_task_manager(self.tasks, include_path)
        #: lm-eval's results of the latest evaluation, on rank zero (``None`` elsewhere and before the first).
        self.results: dict[str, Any] | None = None
        self._evaluated_step: int | None = None

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if getattr(trainer.strategy, "zero_stage_3", False) or "FSDP" in type(trainer.strategy).__name__:
            raise ValueError(
                f"LMEvalCallback runs lm-eval on rank zero's copy of the model, which {type(trainer.strategy).__name__} "
                "shards; evaluate the checkpoints with 'python -m lit_microopt eval' instead."
            )
        if not isinstance(pl_module, CausalLM):
            raise ValueError(
                f"LMEvalCallback evaluates a CausalLM (a Hugging Face causal LM and its tokenizer), not a "
                f"{type(pl_module).__name__}; remove the callback or train a lit_microopt.models.CausalLM."
            )

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self.evaluate(trainer, pl_module, f"after epoch {trainer.current_epoch}")

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.at_fit_end and self._evaluated_step != trainer.global_step:
            self.evaluate(trainer, pl_module, "at the end of training")

    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule, when: str = "") -> dict[str, float]:
        """Run the tasks now (rank zero), log and return the metrics (on every rank)."""
        from lit_microopt.eval.harness_model import LitMicroOptLM

        self._evaluated_step = trainer.global_step
        metrics = None
        if trainer.is_global_zero:
            lm = LitMicroOptLM(
                module=pl_module, batch_size=self.batch_size, max_gen_toks=self.max_gen_toks, progress_bar=False
            )
            with _random_generators_kept():
                self.results = run_tasks(
                    lm, self.tasks, self.task_manager, limit=self.limit, num_fewshot=self.num_fewshot,
                    bootstrap_iters=self.bootstrap_iters,
                )
            metrics = metrics_from_results(self.results)
            if self.log_table:
                limit = "" if self.limit is None else f", limit {self.limit}"
                rank_zero_info(f"lm-eval {when} (step {trainer.global_step}{limit}):\n{results_table(self.results)}")
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
                logger.save()
        # A collective: the other ranks wait here until rank zero has finished, then all have the same metrics.
        metrics = trainer.strategy.broadcast(metrics, src=0)
        trainer.callback_metrics.update({name: torch.tensor(value) for name, value in metrics.items()})
        return metrics


@contextmanager
def _random_generators_kept() -> Iterator[None]:
    """Give Python's, NumPy's and PyTorch's generators back their state: lm-eval seeds them all."""
    python, numpy, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(python)
        np.random.set_state(numpy)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


__all__ = ["LMEvalCallback"]

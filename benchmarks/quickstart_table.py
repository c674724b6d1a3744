"""Accuracy, memory and time of the optimizers on the quickstart task: the MicroAdam paper's GSM-8k table in miniature.

Each optimizer fine-tunes the quickstart's base model on the arithmetic task (``configs/quickstart*.yaml``: 440
steps of 64 problems, learning rates as there: AdamW's 1e-3 for AdamW, 8-bit AdamW and Adam-mini, 3e-4 for
MicroAdam) once per seed, each run in a fresh process. The seed sets the order of the training problems (the
model starts from the same weights and has no dropout); the problems and the held-out splits stay the same. For
every run:

- exact match of the greedy answers on the 500 held-out test sums after training, through lm-eval: the task
  ``lit_microopt_arithmetic`` of ``configs/tasks`` run on the trained model by ``lit_microopt.eval`` (the
  model's own ``test_exact_match`` where that package is missing; the table says which);
- the optimizer's state bytes after training (``lit_microopt.optim.memory.optimizer_state_bytes``);
- the process's peak resident memory at the end of training (model, data, framework and optimizer together);
- the median wall time of a training step (forward, backward, optimizer step), and the wall time of
  ``trainer.fit`` (all 440 steps and the validation after every epoch).

The table gives the mean and the spread (min-max) over seeds, and the step time as a ratio to AdamW's. Runs are
interleaved (every optimizer for seed 0, then seed 1, ...) so that a change in the load of the machine touches
them alike; on a shared machine the median step time varies much less than the total. The figure draws the
training loss and the validation exact match over steps (mean over seeds, min-max shaded). 8-bit AdamW is bitsandbytes'
``AdamW8bit`` (a test dependency; it runs on the CPU), with AdamW's learning rate.

Written to ``--out`` (default ``benchmarks/results/quickstart``): ``table.md``, ``runs.json`` (every run's
figures and curves) and ``curves.png``; the runs' own logs go to ``--work-dir``.

Run:
    python benchmarks/quickstart_table.py                          # 5 optimizers x 3 seeds (about 20 min, 2 cores)
    python benchmarks/quickstart_table.py --seeds 0 --epochs 1 --train-size 256 --eval-size 32   # a quick look
    python benchmarks/quickstart_table.py --resume                 # go on after an interruption
    python benchmarks/quickstart_table.py --replot                 # redraw table and figure from runs.json
"""

from __future__ import annotations

import argparse
import copy
import importlib
import inspect
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch import Callback, LightningModule, Trainer
from typing_extensions import override

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class OptimizerSetup:
    """One row of the table: the quickstart with an optimizer overlay (``None``: MicroAdam's base configuration),
    and what to change in its optimizer."""

    label: str
    overlay: str | None
    #: With a ``class_path``: replaces the configuration's optimizer; else its ``init_args`` are changed.
    optimizer: dict[str, Any] = field(default_factory=dict)


_ADAMW_8BIT = {"class_path": "bitsandbytes.optim.AdamW8bit",
               "init_args": {"lr": 0.001, "betas": [0.9, 0.999], "eps": 1.0e-08, "weight_decay": 0.0}}

#: Optimizers by command-line name; the first is the baseline of the time ratios.
OPTIMIZERS = {
    "adamw": OptimizerSetup("AdamW", "configs/quickstart_adamw.yaml"),
    "adamw8bit": OptimizerSetup("8-bit AdamW (bitsandbytes)", "configs/quickstart_adamw.yaml", _ADAMW_8BIT),
    "microadam_m10": OptimizerSetup("MicroAdam m=10", None),
    "microadam_m20": OptimizerSetup("MicroAdam m=20", None, {"init_args": {"m": 20}}),
    "adam_mini": OptimizerSetup("Adam-mini", "configs/quickstart_adam_mini.yaml"),
}


def quickstart_config(overlay: str | None) -> dict[str, Any]:
    """``configs/quickstart.yaml`` with the optimizer of ``overlay``, merged as the command line merges them: an
    optimizer of another class keeps the base's arguments that it also takes. (The runs replace the loggers and the
    callbacks, the overlays' other changes.)"""
    config = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    if overlay is None:
        return config
    optimizer = yaml.safe_load((ROOT / overlay).read_text())["model"]["init_args"]["optimizer"]
    base = config["model"]["init_args"]["optimizer"]
    module, _, name = optimizer["class_path"].rpartition(".")
    accepted = inspect.signature(getattr(importlib.import_module(module), name)).parameters
    kept = {key: value for key, value in base["init_args"].items() if key in accepted}
    config["model"]["init_args"]["optimizer"] = {"class_path": optimizer["class_path"],
                                                 "init_args": {**kept, **optimizer.get("init_args", {})}}
    return config


def run_config(name: str, seed: int, run_dir: Path, epochs: int | None, train_size: int | None,
               eval_size: int | None) -> dict[str, Any]:
    """The quickstart configuration of optimizer ``name`` for one run: the seed set, the run's logs in ``run_dir``
    (a CSV logger only; no checkpoints, no monitors, no progress bar), and the sizes changed where given."""
    setup = OPTIMIZERS[name]
    config = quickstart_config(setup.overlay)
    config["seed_everything"] = seed
    trainer = config["trainer"]
    trainer.update(
        logger=[{"class_path": "lightning.pytorch.loggers.CSVLogger",
                 "init_args": {"save_dir": str(run_dir), "name": "csv", "version": 0}}],
        callbacks=[], enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    model = config["model"]["init_args"]
    if "class_path" in setup.optimizer:
        model["optimizer"] = copy.deepcopy(setup.optimizer)
    else:
        model["optimizer"]["init_args"].update(setup.optimizer.get("init_args", {}))
    model["pretrained"] = str(ROOT / model["pretrained"])
    data = config["data"]["init_args"]
    if train_size is not None:
        data["train_size"] = train_size
    if eval_size is not None:
        data["val_size"] = data["test_size"] = eval_size
    if epochs is not None:
        trainer["max_epochs"] = epochs
    steps_per_epoch = math.ceil(data["train_size"] / data["batch_size"])
    trainer["log_every_n_steps"] = min(trainer["log_every_n_steps"], steps_per_epoch)
    # The schedule spans the run, as in the quickstart (warm-up kept under a quarter of it).
    schedule = model["lr_scheduler"]["init_args"]
    total_steps = trainer["max_epochs"] * steps_per_epoch
    schedule["warmup_steps"] = min(schedule["warmup_steps"], total_steps // 4)
    schedule["total_steps"] = total_steps
    return config


def final_exact_match(trainer, model, datamodule, limit: int | None) -> tuple[float, str]:
    """Exact match on the held-out test sums after training, and how it was measured: through lm-eval (the
    ``lit_microopt_arithmetic`` task of ``configs/tasks``, the first ``limit`` problems) where the package's
    lm-eval integration is installed, else the model's own test metric."""
    try:
        from lit_microopt.eval import LitMicroOptLM
        from lit_microopt.eval.tasks import build_task_manager, run_tasks
    except ImportError:
        trainer.test(model, datamodule=datamodule, verbose=False)
        return float(trainer.callback_metrics["test_exact_match"]), "CausalLM test_exact_match (greedy, whole answer)"
    task = "lit_microopt_arithmetic"
    manager = build_task_manager([task], ROOT / "configs" / "tasks")
    lm = LitMicroOptLM(module=model, batch_size=250, progress_bar=False)
    results = run_tasks(lm, [task], manager, limit=limit, bootstrap_iters=0)
    return float(results["results"][task]["exact_match,none"]), f"lm-eval {task} (greedy, exact match)"


class StepTimer(Callback):
    """Wall time of every training step: forward, backward and optimizer step (the median resists a passing load)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    @override
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._start = time.perf_counter()

    @override
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.seconds.append(time.perf_counter() - self._start)


def run_worker(run_dir: Path, eval_size: int | None) -> None:
    """Train and evaluate the run configured in ``run_dir/run.yaml``; write ``run_dir/result.json``."""
    import logging

    import torch

    from lit_microopt.cli import LitMicroOptCLI
    from lit_microopt.optim.memory import optimizer_state_bytes

    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)  # an unused 4-bit kernel
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    sys.argv = sys.argv[:1]  # the CLI reads its arguments from the list below only
    cli = LitMicroOptCLI(["--config", str(run_dir / "run.yaml")], run=False)
    trainer, model, datamodule = cli.trainer, cli.model, cli.datamodule
    # The base model is loaded, not drawn, and has no dropout: what the seed changes is the order of the training
    # problems. The problems themselves and the held-out splits stay those of the configuration's data seed.
    datamodule.seed = cli.config["seed_everything"]
    timer = StepTimer()
    trainer.callbacks.append(timer)
    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    fit_seconds = time.perf_counter() - start
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    optimizer = trainer.optimizers[0]
    parameters = sum(p.numel() for group in optimizer.param_groups for p in group["params"])
    exact_match, how = final_exact_match(trainer, model, datamodule, eval_size)
    result = {
        "exact_match": exact_match, "evaluation": how, "state_bytes": optimizer_state_bytes(optimizer),
        "parameters": parameters, "peak_rss_bytes": peak_rss, "fit_seconds": fit_seconds,
        "median_step_seconds": statistics.median(timer.seconds),
        "steps": trainer.global_step, "threads": torch.get_num_threads(),
    }
    (run_dir / "result.json").write_text(json.dumps(result, indent=1))


def read_curves(run_dir: Path) -> dict[str, list[list[float]]]:
    """The run's training loss and validation exact match, as [step, value] pairs."""
    from lit_microopt.plot import read_metrics

    metrics = read_metrics(run_dir / "csv" / "version_0" / "metrics.csv")
    return {name: [[step, value] for step, value in zip(*metrics[name])]
            for name in ("train_loss", "val_exact_match") if name in metrics}


def machine() -> str:
    """One line naming the machine: CPU, cores, threads and versions."""
    import torch

    cpu = platform.processor() or "CPU"
    if Path("/proc/cpuinfo").is_file():
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return (f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, Python "
            f"{platform.python_version()}, torch {torch.__version__}")


def _spread(values: list[float], digits: int, center=statistics.fmean) -> str:
    """``center(values)`` followed by the range, e.g. ``0.600 (0.500-0.700)``; just the value for one run."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{center(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def table(runs: list[dict[str, Any]]) -> str:
    """The markdown table of ``runs``, one row per optimizer: the mean over seeds, or for times (which a passing
    load stretches) the median, then the range; the step time also as a ratio to the first optimizer's."""
    by_optimizer: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by_optimizer.setdefault(run["optimizer"], []).append(run)
    first = next(iter(by_optimizer))
    baseline = statistics.median(run["median_step_seconds"] for run in by_optimizer[first])
    lines = [f"| optimizer | test exact match | state KiB | state bytes/param | peak RSS MiB | step ms | "
             f"step / {OPTIMIZERS[first].label} | fit s | seeds |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, group in by_optimizer.items():
        state = statistics.fmean(run["state_bytes"] for run in group)
        step = [1000 * run["median_step_seconds"] for run in group]
        lines.append(
            f"| {OPTIMIZERS[name].label} | {_spread([run['exact_match'] for run in group], 3)} | {state / 1024:.0f} | "
            f"{state / group[0]['parameters']:.3f} | {_spread([run['peak_rss_bytes'] / 2**20 for run in group], 0)} | "
            f"{_spread(step, 1, statistics.median)} | {statistics.median(step) / 1000 / baseline:.2f}x | "
            f"{_spread([run['fit_seconds'] for run in group], 0, statistics.median)} | {len(group)} |"
        )
    return "\n".join(lines)


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    """Training loss and validation exact match over steps, per optimizer: mean over seeds, min-max shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    panels = (("train_loss", "training loss"), ("val_exact_match", "validation exact match"))
    for (metric, title), axis in zip(panels, axes):
        by_optimizer: dict[str, list[dict[float, float]]] = {}
        for run in runs:
            by_optimizer.setdefault(run["optimizer"], []).append(dict(map(tuple, run["curves"].get(metric, []))))
        for name, curves in by_optimizer.items():
            steps = sorted(set.intersection(*(set(curve) for curve in curves)))
            if not steps:
                continue
            values = [[curve[step] for curve in curves] for step in steps]
            (line,) = axis.plot(steps, [statistics.fmean(v) for v in values], label=OPTIMIZERS[name].label)
            axis.fill_between(steps, [min(v) for v in values], [max(v) for v in values], color=line.get_color(),
                              alpha=0.2)
        axis.set_title(title)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[1].legend(loc="lower right")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_results(runs: list[dict[str, Any]], out: Path, command: str, machine_line: str) -> str:
    """Write ``runs.json``, ``table.md`` and ``curves.png`` to ``out``; return the table's text."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "runs.json").write_text(json.dumps({"command": command, "machine": machine_line, "runs": runs}, indent=1))
    evaluation = sorted({run["evaluation"] for run in runs})
    text = (f"{table(runs)}\n\nCommand: `{command}`  \nMachine: {machine_line}  \n"
            f"Final evaluation: {'; '.join(evaluation)}. Each cell: the mean over seeds (times: the median, "
            "step ms being each run's median training step), then the range over seeds.\n")
    (out / "table.md").write_text(text)
    plot(runs, out / "curves.png")
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=list(OPTIMIZERS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: the quickstart's 4)")
    parser.add_argument("--train-size", type=int, default=None, help="training problems (default: 7000)")
    parser.add_argument("--eval-size", type=int, default=None, help="validation and test problems (default: 500)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "quickstart")
    parser.add_argument("--work-dir", type=Path, default=ROOT / "runs" / "quickstart_table")
    parser.add_argument("--resume", action="store_true",
                        help="keep the runs of --work-dir that finished with the same configuration")
    parser.add_argument("--replot", action="store_true", help="redraw table.md and curves.png from --out/runs.json")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)  # one run, in its own process
    args = parser.parse_args(argv)
    for option in ("epochs", "train_size", "eval_size"):
        if getattr(args, option) is not None and getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} must be at least 1, got {getattr(args, option)}.")

    if args.worker is not None:
        run_worker(args.worker, args.eval_size)
        return
    if args.replot:
        saved_file = args.out / "runs.json"
        if not saved_file.is_file():
            parser.error(f"--replot needs {saved_file}; run the benchmark first (without --replot).")
        saved = json.loads(saved_file.read_text())
        print(write_results(saved["runs"], args.out, saved["command"], saved["machine"]))
        return

    given = [arg for arg in (argv if argv is not None else sys.argv[1:]) if arg != "--resume"]  # same results
    command = " ".join(["python benchmarks/quickstart_table.py", *given])
    runs = []
    for seed in args.seeds:
        for name in args.optimizers:
            result = run_once(name, seed, args)
            runs.append({"optimizer": name, "seed": seed, **result})
            print(f"{OPTIMIZERS[name].label}, seed {seed}: exact match {result['exact_match']:.3f}, "
                  f"{result['fit_seconds']:.0f} s", flush=True)
    print(write_results(runs, args.out, command, machine()))


def run_once(name: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """One run of optimizer ``name`` with ``seed`` in its own process (or, with ``--resume``, the result of the
    same run finished before); its result with its curves."""
    run_dir = args.work_dir / f"{name}_seed{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_dump(run_config(name, seed, run_dir, args.epochs, args.train_size, args.eval_size),
                            sort_keys=False)
    config_file, result_file = run_dir / "run.yaml", run_dir / "result.json"
    finished = result_file.is_file() and config_file.is_file() and config_file.read_text() == config
    if not (args.resume and finished):
        config_file.write_text(config)
        result_file.unlink(missing_ok=True)
        worker = [sys.executable, __file__, "--worker", str(run_dir)]
        if args.eval_size is not None:
            worker += ["--eval-size", str(args.eval_size)]
        completed = subprocess.run(worker, cwd=ROOT, capture_output=True, text=True)
        (run_dir / "output.log").write_text(completed.stdout + completed.stderr)
        if completed.returncode != 0:
            sys.exit(f"the run {run_dir.name} failed (exit {completed.returncode}); its output, in "
                     f"{run_dir / 'output.log'}, ends with:\n{completed.stderr[-3000:]}")
    return {**json.loads(result_file.read_text()), "curves": read_curves(run_dir)}


if __name__ == "__main__":
    main()

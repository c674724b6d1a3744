"""bfloat16 weights with ``param_rounding="nearest"`` or ``"stochastic"``, next to float32 weights, on the quickstart.

A bfloat16 weight of magnitude w has an ulp of about w / 128: an update below half of it rounds back to the old
value. The quickstart's fine-tuning (``configs/quickstart.yaml``, and ``configs/quickstart_adam_mini.yaml`` for
Adam-mini) is run with each optimizer three times: float32 weights (the quickstart as it is), bfloat16 weights
without a float32 master copy (Lightning's ``precision="bf16-true"``) rounded to nearest, and the same rounded
stochastically. For every run: the mean training loss of the last tenth of the steps, the validation loss and the
validation exact match (greedy answers, whole answer) after training, evaluated in float32 from the trained weights,
and the fraction of the weights that moved.

All runs share one process, the quickstart's data, learning rates and schedule (its warm-up kept under a quarter
of the run), and the seed of the configuration.

Run:
    python benchmarks/param_rounding.py                      # 440 steps a run, 6 runs (several minutes, 2 cores)
    python benchmarks/param_rounding.py --steps 100 --eval-size 100   # a quick look
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from quickstart_table import StepTimer, machine, quickstart_config  # noqa: E402

#: (label, overlay of the quickstart): the optimizers compared.
OPTIMIZERS = {"MicroAdam": None, "Adam-mini": "configs/quickstart_adam_mini.yaml"}
#: (label, model dtype, trainer precision, param_rounding): the weights of every optimizer's runs.
WEIGHTS = [
    ("float32", "float32", "32-true", "nearest"),
    ("bfloat16, nearest", "bfloat16", "bf16-true", "nearest"),
    ("bfloat16, stochastic", "bfloat16", "bf16-true", "stochastic"),
]


def run_config(overlay: str | None, dtype: str, precision: str, param_rounding: str, steps: int, eval_size: int,
               run_dir: Path) -> dict[str, Any]:
    """The quickstart's configuration for one run: ``steps`` training steps with the schedule spanning them, a CSV
    logger in ``run_dir``, no checkpoints, callbacks or validation during training."""
    config = quickstart_config(overlay)
    trainer = config["trainer"]
    trainer.update(
        max_steps=steps, max_epochs=-1, precision=precision, limit_val_batches=0, num_sanity_val_steps=0,
        logger=[{"class_path": "lightning.pytorch.loggers.CSVLogger",
                 "init_args": {"save_dir": str(run_dir), "name": "csv", "version": 0}}],
        callbacks=[], enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        log_every_n_steps=1,
    )
    model = config["model"]["init_args"]
    model["pretrained"] = str(ROOT / model["pretrained"])
    model["dtype"] = dtype
    model["optimizer"]["init_args"]["param_rounding"] = param_rounding
    schedule = model["lr_scheduler"]["init_args"]
    schedule["total_steps"] = steps
    schedule["warmup_steps"] = min(schedule["warmup_steps"], steps // 4)
    data = config["data"]["init_args"]
    data["val_size"] = data["eval_batch_size"] = eval_size
    return config


def train_and_evaluate(config_file: Path) -> dict[str, float]:
    """Train the run of ``config_file``, then validate it: its figures."""
    import logging

    import torch
    from lightning.pytorch import Trainer
    from torchmetrics import Metric

    from lit_microopt.cli import LitMicroOptCLI
    from lit_microopt.plot import read_metrics

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    cli = LitMicroOptCLI(["--config", str(config_file)], run=False)
    trainer, model, datamodule = cli.trainer, cli.model, cli.datamodule
    before = [p.detach().clone() for p in model.parameters()]
    timer = StepTimer()
    trainer.callbacks.append(timer)
    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    fit_seconds = time.perf_counter() - start
    moved = sum(int((a != b).sum()) for a, b in zip(before, model.parameters()))
    total = sum(p.numel() for p in model.parameters())
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()})
    # Evaluated in float32 from the trained weights (converting bfloat16 to float32 is exact), so that the metrics
    # compare the weights, and accumulate in float32 (under bf16-true they would accumulate in bfloat16).
    model.float()
    for module in model.modules():
        if isinstance(module, Metric):
            module.set_dtype(torch.float32)
    evaluator = Trainer(accelerator="cpu", devices=1, precision="32-true", logger=False, enable_progress_bar=False,
                        enable_model_summary=False)
    [metrics] = evaluator.validate(model, datamodule=datamodule, verbose=False)
    log_dir = Path(trainer.logger.log_dir)
    losses = read_metrics(log_dir / "metrics.csv")["train_loss"][1]
    tail = losses[-max(1, len(losses) // 10):]
    return {
        "train_loss": statistics.fmean(tail), "val_loss": float(metrics["val_loss"]),
        "val_exact_match": float(metrics["val_exact_match"]), "moved": moved / total,
        "trained_dtypes": dtypes, "fit_seconds": fit_seconds,
        "median_step_seconds": statistics.median(timer.seconds), "threads": torch.get_num_threads(),
    }


def table(rows: list[dict[str, Any]]) -> str:
    """One markdown row per run."""
    lines = ["| optimizer | weights | final train loss | val loss | val exact match | weights moved | step ms |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        lines.append(f"| {row['optimizer']} | {row['weights']} | {row['train_loss']:.4f} | {row['val_loss']:.4f} | "
                     f"{row['val_exact_match']:.3f} | {100 * row['moved']:.1f} % | "
                     f"{1000 * row['median_step_seconds']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=440, help="training steps of every run (default: the "
                        "quickstart's 440)")
    parser.add_argument("--eval-size", type=int, default=250, help="validation problems (default: 250)")
    parser.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=list(OPTIMIZERS))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1, steadier on a shared "
                        "machine)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "param_rounding.md")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.eval_size < 1:
        parser.error("--steps and --eval-size must be at least 1.")
    import torch

    torch.set_num_threads(args.threads)
    sys.argv = sys.argv[:1]  # the CLI reads its arguments from the list it is given only
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.optimizers:
            for label, dtype, precision, rounding in WEIGHTS:
                run_dir = Path(folder) / f"{name}_{dtype}_{rounding}"
                run_dir.mkdir()
                config_file = run_dir / "run.yaml"
                config = run_config(OPTIMIZERS[name], dtype, precision, rounding, args.steps, args.eval_size, run_dir)
                config_file.write_text(yaml.safe_dump(config))
                rows.append({"optimizer": name, "weights": label, **train_and_evaluate(config_file)})
                print(f"{name}, {label}: {rows[-1]}", flush=True)
    command = "python benchmarks/param_rounding.py" + "".join(
        f" {argument}" for argument in (argv if argv is not None else sys.orig_argv[2:]))
    text = f"{table(rows)}\n\nCommand: `{command.strip()}`  \nMachine: {machine()}\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()

"""Figures from a run's logged metrics: what the monitoring callbacks saw, as PNG files.

Reads the ``metrics.csv`` that Lightning's ``CSVLogger`` writes and draws, for the metrics that are there:

- ``training.png``: the losses (training and validation) and the learning rates
  (:class:`~lightning.pytorch.callbacks.LearningRateMonitor`) over steps;
- ``compression.png``: MicroAdam's compression and quantization errors and error-feedback norm over steps
  (:class:`~lit_microopt.callbacks.CompressionMonitor`);
- ``window.png``: MicroAdam's window support and occupancy (:class:`~lit_microopt.callbacks.WindowMonitor`);
- ``block_lr.png``: per role, the median effective learning rate with its min-max range, and
  ``block_lr_heatmap.png``: the median of every role and layer over training, in colour
  (:class:`~lit_microopt.callbacks.BlockLRMonitor`);
- ``memory.png``: optimizer state per parameter against AdamW's 8 bytes
  (:class:`~lit_microopt.callbacks.OptimizerMemoryMonitor`).

Run:
    python -m lit_microopt plot RUN_DIR [--out DIR]

``RUN_DIR`` is the CSVLogger's version folder (``.../version_0``), a ``metrics.csv`` file, or a folder above runs:
the newest ``metrics.csv`` of a ``fit`` run is read (a ``test`` run logs no training metrics), and named.
"""

from __future__ import annotations

import argparse
import csv
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lit_microopt._extras import require_extra

#: AdamW's state with float32 moments, in bytes per parameter: the reference line of ``memory.png``.
ADAMW_FLOAT32_BYTES_PER_PARAMETER = 8
ROLES = ("head", "row", "tensor", "element")

Series = tuple[list[int], list[float]]  # steps, values


def is_fit_run(path: Path) -> bool:
    """Whether the ``metrics.csv`` at ``path`` is a training run's: it has columns other than ``test_*`` ones."""
    with open(path, newline="") as file:
        header = next(csv.reader(file), [])
    return any(name not in ("step", "epoch") and not name.startswith("test") for name in header)


def find_metrics_file(run_dir: Path) -> Path:
    """The ``metrics.csv`` of the run in ``run_dir``: ``run_dir`` itself when it is the file, its own, else the
    newest of a fit run below it (else the newest one).

    Raises:
        FileNotFoundError: there is none.
    """
    if run_dir.is_file():
        return run_dir
    own = run_dir / "metrics.csv"
    if own.is_file():
        return own
    found = sorted(run_dir.rglob("metrics.csv"), key=lambda path: path.stat().st_mtime)
    if not found:
        raise FileNotFoundError(
            f"No metrics.csv in or below {run_dir}; pass the folder a CSVLogger wrote (e.g. lightning_logs/version_0)."
        )
    fit_runs = [path for path in found if is_fit_run(path)]
    return (fit_runs or found)[-1]


def read_metrics(path: Path) -> dict[str, Series]:
    """Every metric of a CSVLogger ``metrics.csv``, by name, sorted by step (the last value of a step wins)."""
    by_step: dict[str, dict[int, float]] = {}
    with open(path, newline="") as file:
        for row in csv.DictReader(file):
            step = int(float(row["step"]))
            for name, value in row.items():
                if name in ("step", "epoch") or value in ("", None):
                    continue
                by_step.setdefault(name, {})[step] = float(value)
    return {name: (sorted(values), [values[step] for step in sorted(values)]) for name, values in by_step.items()}


def _matching(metrics: dict[str, Series], pattern: str) -> dict[str, Series]:
    """Metrics whose full name matches ``pattern``, keyed by its first group (the optimizer's prefix)."""
    return {match.group(1): series for name, series in metrics.items() if (match := re.fullmatch(pattern, name))}


def _figure(rows: int, columns: int = 1, height: float = 3.0) -> tuple[Any, Any]:
    # matplotlib.figure.Figure draws without pyplot, so no GUI backend or global state is involved.
    require_extra("plot", "matplotlib")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, height * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False)
    return figure, axes[:, 0] if columns == 1 else axes


def _save(figure: Any, path: Path) -> Path:
    figure.savefig(path, dpi=100)
    return path


def plot_training(metrics: dict[str, Series], out_dir: Path) -> Path | None:
    """The losses (``train_loss``, ``val_loss``, ...) and the learning rates (``lr-*``) over steps."""
    losses = {name: series for name, series in metrics.items() if name.endswith("loss") and "/" not in name}
    rates = {name: series for name, series in metrics.items() if name.startswith("lr-")}
    panels = [(label, series, log) for label, series, log in (("loss", losses, False), ("learning rate", rates, False))
              if series]
    if not panels:
        return None
    figure, axes = _figure(len(panels))
    for ax, (label, series, _) in zip(axes, panels):
        for name, (steps, values) in sorted(series.items()):
            ax.plot(steps, values, marker="." if len(steps) < 50 else None, label=name)
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    axes[-1].set_xlabel("step")
    figure.suptitle("Training")
    return _save(figure, out_dir / "training.png")


def plot_compression(metrics: dict[str, Series], out_dir: Path) -> Path | None:
    """Compression and quantization errors and error-feedback norm of every MicroAdam over steps."""
    panels = [
        ("compression_error", r"compression error $\|a - \mathrm{TopK}(a)\| / \|a\|$", False),
        ("quantization_error", r"quantization error $\|Q^{-1}(Q(r)) - r\| / \|r\|$", False),
        ("ef_norm", r"error feedback norm $\|Q^{-1}(e)\|$", True),
    ]
    found = [(label, log, _matching(metrics, rf"([^/]+)/{figure}")) for figure, label, log in panels]
    found = [panel for panel in found if panel[2]]
    if not found:
        return None
    figure, axes = _figure(len(found))
    for ax, (label, log, series) in zip(axes, found):
        for prefix, (steps, values) in series.items():
            ax.plot(steps, values, marker=".", label=prefix)
        ax.set_ylabel(label, fontsize=8)
        if log and all(value > 0 for _, values in series.values() for value in values):
            ax.set_yscale("log")
        ax.legend(fontsize=8)
    axes[-1].set_xlabel("step")
    figure.suptitle("MicroAdam: what Top-K and 4-bit error feedback lose")
    return _save(figure, out_dir / "compression.png")


def plot_window(metrics: dict[str, Series], out_dir: Path) -> Path | None:
    """Window support and occupancy of every MicroAdam over steps."""
    support = _matching(metrics, r"([^/]+)/window_support")
    occupancy = _matching(metrics, r"([^/]+)/window_occupancy")
    if not support and not occupancy:
        return None
    figure, axes = _figure(1, height=3.5)
    ax = axes[0]
    for prefix, (steps, values) in support.items():
        ax.plot(steps, values, marker=".", label=f"{prefix}: support (coordinates with a window entry)")
    for prefix, (steps, values) in occupancy.items():
        ax.plot(steps, values, linestyle="--", label=f"{prefix}: occupancy (filled rows / m)")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("step")
    ax.set_ylabel("fraction")
    ax.legend(fontsize=8)
    figure.suptitle("MicroAdam's sliding window")
    return _save(figure, out_dir / "window.png")


def _block_lr_keys(metrics: dict[str, Series]) -> dict[str, list[str]]:
    """Per optimizer prefix, the summarised keys (``role`` or ``layer/<layer>``), roles first."""
    keys: dict[str, list[str]] = {}
    for name in metrics:
        match = re.fullmatch(r"([^/]+)/block_lr/(.+)/median", name)
        if match:
            keys.setdefault(match.group(1), []).append(match.group(2))
    order = {role: index for index, role in enumerate(ROLES)}
    return {
        prefix: sorted(found, key=lambda key: (key not in order, order.get(key, 0), key))
        for prefix, found in keys.items()
    }


def plot_block_lr(metrics: dict[str, Series], out_dir: Path) -> list[Path]:
    """Per role, median effective learning rate and min-max band; a heatmap of every role's and layer's median."""
    keys = _block_lr_keys(metrics)
    if not keys:
        return []
    figure, axes = _figure(len(keys), height=3.5)
    for ax, (prefix, found) in zip(axes, keys.items()):
        for role in (key for key in found if key in ROLES):
            steps, medians = metrics[f"{prefix}/block_lr/{role}/median"]
            (line,) = ax.plot(steps, medians, marker=".", label=role)
            low, high = metrics.get(f"{prefix}/block_lr/{role}/min"), metrics.get(f"{prefix}/block_lr/{role}/max")
            if low and high and low[0] == steps and high[0] == steps:
                ax.fill_between(steps, low[1], high[1], color=line.get_color(), alpha=0.15)
        ax.set_yscale("log")
        ax.set_ylabel("effective learning rate")
        ax.set_title(f"{prefix}: median per role, shaded from min to max", fontsize=9)
        ax.legend(fontsize=8)
    axes[-1].set_xlabel("step")
    written = [_save(figure, out_dir / "block_lr.png")]

    figure, axes = _figure(len(keys), height=max(2.5, 0.3 * max(len(found) for found in keys.values()) + 1.5))
    for ax, (prefix, found) in zip(axes, keys.items()):
        steps = sorted({step for key in found for step in metrics[f"{prefix}/block_lr/{key}/median"][0]})
        column = {step: index for index, step in enumerate(steps)}
        grid = [[math.nan] * len(steps) for _ in found]
        for row, key in enumerate(found):
            for step, value in zip(*metrics[f"{prefix}/block_lr/{key}/median"]):
                grid[row][column[step]] = math.log10(value) if value > 0 else math.nan
        # Cell edges halfway between logged steps, so that each cell is centred on its step.
        edges = [steps[0] - 0.5] + [(a + b) / 2 for a, b in zip(steps, steps[1:])] + [steps[-1] + 0.5]
        mesh = ax.pcolormesh(edges, range(len(found) + 1), grid, cmap="viridis", shading="flat")
        ax.set_yticks([row + 0.5 for row in range(len(found))], found, fontsize=7)
        ax.invert_yaxis()
        ax.set_title(f"{prefix}: log10 of the median effective learning rate, per role and layer", fontsize=9)
        ax.figure.colorbar(mesh, ax=ax, label="log10 learning rate")
    axes[-1].set_xlabel("step")
    written.append(_save(figure, out_dir / "block_lr_heatmap.png"))
    return written


def plot_memory(metrics: dict[str, Series], out_dir: Path) -> Path | None:
    """Optimizer state in bytes per parameter over steps, against AdamW with float32 moments."""
    series = _matching(metrics, r"([^/]+)/state_bytes_per_param")
    if not series:
        return None
    last_step = max(steps[-1] for steps, _ in metrics.values())
    figure, axes = _figure(1, height=3.5)
    ax = axes[0]
    for prefix, (steps, values) in series.items():
        # Logged only when it changes: hold each value until the next one, up to the run's last step.
        ax.step(steps + [max(last_step, steps[-1])], values + values[-1:], where="post", label=prefix)
        ax.annotate(
            f"{values[-1]:.2f} B/param = {values[-1] / ADAMW_FLOAT32_BYTES_PER_PARAMETER:.0%} of AdamW",
            (steps[-1], values[-1]), textcoords="offset points", xytext=(5, 5), fontsize=8,
        )
    ax.axhline(ADAMW_FLOAT32_BYTES_PER_PARAMETER, color="grey", linestyle="--", label="AdamW, float32 (8 B/param)")
    ax.set_ylim(0, ADAMW_FLOAT32_BYTES_PER_PARAMETER * 1.15)
    ax.set_xlabel("step")
    ax.set_ylabel("state bytes per parameter")
    ax.legend(fontsize=8)
    figure.suptitle("Optimizer state memory")
    return _save(figure, out_dir / "memory.png")


def default_out_dir(run_dir: Path) -> Path:
    """Where the figures of ``run_dir`` go by default: ``RUN_DIR/plots`` (beside the file for a ``metrics.csv``)."""
    return (run_dir.parent if run_dir.is_file() else run_dir) / "plots"


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Draw the figures of the run in ``run_dir`` into ``out_dir`` (default ``RUN_DIR/plots``).

    Figures whose metrics the run did not log are left out.

    Args:
        run_dir: the CSVLogger's version folder, its ``metrics.csv``, or a folder above (see
            :func:`find_metrics_file`).
        out_dir: where the PNG files go; created if needed.

    Returns:
        The paths of the files written (none when the run logged none of the monitors' metrics).

    Example::

        >>> from lit_microopt.plot import plot_run
        >>> plot_run("lightning_logs/version_0")  # doctest: +SKIP
        [PosixPath('lightning_logs/version_0/plots/compression.png'), ...]
    """
    metrics_file = find_metrics_file(Path(run_dir))
    metrics = read_metrics(metrics_file)
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(Path(run_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [plot_training(metrics, out_dir), plot_compression(metrics, out_dir), plot_window(metrics, out_dir)]
    written += plot_block_lr(metrics, out_dir)
    written.append(plot_memory(metrics, out_dir))
    return [path for path in written if path is not None]


def main(argv: Sequence[str] | None = None) -> int:
    """``plot RUN_DIR [--out DIR]``: write the figures and print their paths; 1 when there was nothing to draw."""
    parser = argparse.ArgumentParser(
        prog="python -m lit_microopt plot",
        description="Draw PNG figures from the metrics.csv of a run logged with the lit_microopt callbacks.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", type=Path, help="CSVLogger version folder (or a folder above it)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: RUN_DIR/plots)")
    arguments = parser.parse_args(argv)
    try:
        metrics_file = find_metrics_file(arguments.run_dir)
    except FileNotFoundError as error:
        print(error, file=sys.stderr)
        return 1
    print(f"Reading {metrics_file}", file=sys.stderr)  # which run, when a folder holds several
    written = plot_run(metrics_file, arguments.out or default_out_dir(arguments.run_dir))
    if not written:
        print(
            f"Nothing to draw: {metrics_file} holds no losses, learning rates or metrics of the lit_microopt "
            "callbacks; log with a CSVLogger and add LearningRateMonitor, CompressionMonitor, WindowMonitor, "
            "BlockLRMonitor or OptimizerMemoryMonitor to the Trainer.",
            file=sys.stderr,
        )
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""plot_run and its command line: figures from a CSVLogger metrics.csv."""

from __future__ import annotations

import csv

import pytest

from lit_microopt.plot import main, plot_run, read_metrics

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_metrics(path, rows):
    """A metrics.csv as CSVLogger writes it: one header for all rows, empty cells where a row has no value."""
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = sorted({key for row in rows for key in row})
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, columns)
        writer.writeheader()
        writer.writerows(rows)


def monitored_run(steps=range(1, 40, 2)):
    """Rows like those the four callbacks log, around the loss rows of ``self.log``."""
    rows = [{"step": 0, "optim/state_bytes": 900.0, "optim/state_bytes_per_param": 0.9,
             "optim/state_ratio_to_adamw": 0.1125}]
    for step in steps:
        rows.append({"step": step, "epoch": 0, "train_loss": 1 / step})
        rows.append({"step": step, "microadam/compression_error": 0.9, "microadam/quantization_error": 0.07,
                     "microadam/ef_norm": 2.0 + step, "microadam/window_occupancy": min(1, step / 10),
                     "microadam/window_support": min(0.1, step / 100)})
        summaries = {}
        for key in ("head", "row", "tensor", "element", "layer/model.layers.0", "layer/lm_head"):
            summaries.update({f"adam_mini/block_lr/{key}/min": 1e-4, f"adam_mini/block_lr/{key}/median": 1e-3 / step,
                              f"adam_mini/block_lr/{key}/max": 1e-2})
        rows.append({"step": step, **summaries})
    return rows


def test_draws_every_figure_of_a_monitored_run(tmp_path):
    write_metrics(tmp_path / "run" / "version_0" / "metrics.csv", monitored_run())
    written = plot_run(tmp_path / "run" / "version_0", tmp_path / "figures")

    names = ["training.png", "compression.png", "window.png", "block_lr.png", "block_lr_heatmap.png", "memory.png"]
    assert written == [tmp_path / "figures" / name for name in names]
    for path in written:
        assert path.read_bytes().startswith(PNG_SIGNATURE)


def test_reads_the_csv_by_metric_and_step(tmp_path):
    write_metrics(tmp_path / "metrics.csv", monitored_run(steps=[1, 3]))
    metrics = read_metrics(tmp_path / "metrics.csv")
    assert metrics["microadam/ef_norm"] == ([1, 3], [3.0, 5.0])
    assert metrics["optim/state_bytes"] == ([0], [900.0])


def test_draws_only_what_was_logged_and_finds_the_run_below_a_folder(tmp_path):
    rows = [{"step": 0, "optim/state_bytes": 8e3, "optim/state_bytes_per_param": 8.0,
             "optim/state_ratio_to_adamw": 1.0}, {"step": 9, "train_loss": 0.5}]
    write_metrics(tmp_path / "logs" / "version_3" / "metrics.csv", rows)
    assert plot_run(tmp_path / "logs") == [tmp_path / "logs" / "plots" / name for name in ("training.png", "memory.png")]


def test_command_line(tmp_path, capsys):
    write_metrics(tmp_path / "run" / "metrics.csv", monitored_run(steps=[1, 3]))
    assert main([str(tmp_path / "run"), "--out", str(tmp_path / "out")]) == 0
    assert str(tmp_path / "out" / "memory.png") in capsys.readouterr().out

    write_metrics(tmp_path / "bare" / "metrics.csv", [{"step": 1, "grad_norm": 0.5}])
    assert main([str(tmp_path / "bare")]) == 1
    assert "CompressionMonitor" in capsys.readouterr().err

    assert main([str(tmp_path / "missing")]) == 1
    assert "No metrics.csv" in capsys.readouterr().err


def test_missing_run_names_the_folder_to_pass(tmp_path):
    with pytest.raises(FileNotFoundError, match="version_0"):
        plot_run(tmp_path)

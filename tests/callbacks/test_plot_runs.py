"""``plot`` on a folder of several runs: it reads a fit run's metrics.csv, says which, and draws loss and rates."""

from __future__ import annotations

import os

from lit_microopt.plot import find_metrics_file, main, plot_run, read_metrics
from tests.callbacks.test_plot import write_metrics


def fit_then_test(folder):
    """A fit run (version_0) and, written after it, a test run (version_1) of the same model."""
    fit_rows = [{"step": step, "train_loss": 2.0 / step, "lr-MicroAdam": 1e-3 * (10 - step)} for step in range(1, 10)]
    fit_rows.append({"step": 9, "epoch": 0, "val_loss": 0.4})
    write_metrics(folder / "version_0" / "metrics.csv", fit_rows)
    write_metrics(folder / "version_1" / "metrics.csv", [{"step": 0, "test_loss": 0.5, "test_exact_match": 0.9}])
    os.utime(folder / "version_0" / "metrics.csv", (1, 1))  # the test run is the newer


def test_a_fit_run_is_preferred_to_a_newer_test_run(tmp_path):
    fit_then_test(tmp_path)
    assert find_metrics_file(tmp_path) == tmp_path / "version_0" / "metrics.csv"
    # Alone, a test run is still read.
    assert find_metrics_file(tmp_path / "version_1") == tmp_path / "version_1" / "metrics.csv"


def test_loss_and_learning_rate_panels(tmp_path):
    fit_then_test(tmp_path)
    [training] = plot_run(tmp_path, tmp_path / "figures")
    assert training == tmp_path / "figures" / "training.png" and training.stat().st_size > 0
    assert {"train_loss", "val_loss", "lr-MicroAdam"} <= set(read_metrics(tmp_path / "version_0" / "metrics.csv"))


def test_the_command_names_the_file_it_read(tmp_path, capsys):
    fit_then_test(tmp_path)
    assert main([str(tmp_path)]) == 0
    assert f"Reading {tmp_path / 'version_0' / 'metrics.csv'}" in capsys.readouterr().err
    # Nothing to draw: the message names the file.
    write_metrics(tmp_path / "other" / "metrics.csv", [{"step": 1, "grad_norm": 0.5}])
    assert main([str(tmp_path / "other")]) == 1
    assert f"Nothing to draw: {tmp_path / 'other' / 'metrics.csv'} holds no losses" in capsys.readouterr().err

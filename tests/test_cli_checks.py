"""What the command line checks before a run starts: one ``error:`` line, not a traceback or an epoch lost.

Every case runs ``python -m lit_microopt fit`` in-process on the quickstart shrunk to seconds; those about a
checkpoint share one finished one-epoch run (copied into each test's folder).
"""

from __future__ import annotations

import csv
import logging
import shutil
import sys
from pathlib import Path

import pytest
import torch

import lit_microopt.cli  # noqa: F401  (Lightning's log handler binds to the real stderr, not to one test's capture)
from lit_microopt.__main__ import main
from tests.test_cli import QUICKSTART, ROOT, TINY_QUICKSTART

CHECKPOINTS = Path("runs") / "quickstart" / "checkpoints"


@pytest.fixture(autouse=True)
def command_line(monkeypatch):
    # LightningCLI reads sys.argv (pytest's here) when handed no arguments, and warns when handed both.
    monkeypatch.setattr(sys, "argv", ["lit_microopt"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fit(*overrides: str, config: str = QUICKSTART) -> None:
    main(["fit", "--config", config, *TINY_QUICKSTART, *overrides])


def expect_error(capsys, *overrides: str, config: str = QUICKSTART) -> str:
    """The error line a run ends with (exit status 2, no traceback)."""
    with pytest.raises(SystemExit) as exit_info:
        fit(*overrides, config=config)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "Traceback" not in error
    [line] = [line for line in error.splitlines() if line.startswith("error:")]
    return line


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A folder where the quickstart ran one epoch: runs/quickstart/checkpoints/{last,best-...}.ckpt."""
    folder = tmp_path_factory.mktemp("finished")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.setattr(sys, "argv", ["lit_microopt"])
        fit()
    return folder


@pytest.fixture
def run_folder(finished_run, tmp_path, monkeypatch):
    """A copy of the finished run, as the current directory."""
    folder = tmp_path / "run"
    shutil.copytree(finished_run, folder)
    monkeypatch.chdir(folder)
    return folder


def test_options_are_taken_by_their_whole_names_only(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert "unrecognized arguments: --trainer.max_epoch 2" in expect_error(capsys, "--trainer.max_epoch", "2")


def test_zero_devices(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert "devices" in expect_error(capsys, "--trainer.devices", "0")


def test_a_checkpoint_that_does_not_exist(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    error = expect_error(capsys, "--ckpt_path", "nothing/here.ckpt")
    assert error == "error: checkpoint nothing/here.ckpt cannot be used: there is no such file."


def test_last_without_a_checkpoint_stops(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    error = expect_error(capsys, "--ckpt_path", "last")
    assert f"--ckpt_path last: there is no last checkpoint in {tmp_path / CHECKPOINTS}" in error
    assert not (tmp_path / "runs" / "quickstart" / "csv" / "version_0" / "metrics.csv").exists()  # nothing trained


def test_a_log_folder_that_cannot_be_written(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("")
    error = expect_error(capsys, "--trainer.logger", '{"class_path": "lightning.pytorch.loggers.CSVLogger", '
                                 '"init_args": {"save_dir": "a_file/logs"}}')
    assert "log folder a_file/logs/lightning_logs cannot be written (Not a directory)" in error


def test_a_checkpoint_folder_that_cannot_be_written_stops_before_training(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("")
    overlay = tmp_path / "checkpoints.yaml"
    overlay.write_text("trainer:\n  callbacks:\n    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
                       "      init_args: {dirpath: a_file/checkpoints}\n")
    error = expect_error(capsys, "--config", str(overlay))
    assert f"checkpoint folder {tmp_path / 'a_file' / 'checkpoints'} cannot be written (Not a directory)" in error
    assert not (tmp_path / "runs" / "quickstart" / "csv" / "version_0" / "metrics.csv").exists()


def test_an_empty_last_checkpoint_names_the_file_and_the_readable_one_beside_it(capsys, run_folder):
    last = run_folder / CHECKPOINTS / "last.ckpt"
    last.write_bytes(b"")
    [best] = (run_folder / CHECKPOINTS).glob("best-*.ckpt")
    error = expect_error(capsys, "--ckpt_path", "last", "--trainer.max_epochs", "2")
    assert error == (f"error: checkpoint {last} cannot be used: it is empty (0 bytes), probably cut short while it "
                     f"was written; the newest readable checkpoint beside it is {best}: pass it to --ckpt_path.")


def test_a_truncated_checkpoint(capsys, run_folder):
    last = run_folder / CHECKPOINTS / "last.ckpt"
    last.write_bytes(last.read_bytes()[:100_000])
    error = expect_error(capsys, "--ckpt_path", str(last), "--trainer.max_epochs", "2")
    assert f"checkpoint {last} cannot be used: it is truncated or not a checkpoint (100000 bytes" in error


def test_a_checkpoint_with_other_optimizer_settings(capsys, run_folder):
    error = expect_error(capsys, "--ckpt_path", "last", "--trainer.max_epochs", "2",
                         "--model.init_args.optimizer.init_args.m", "5")
    assert "does not fit this run's MicroAdam: MicroAdam: the state dict was saved with m=10" in error


def test_a_checkpoint_of_another_optimizer(capsys, run_folder):
    error = expect_error(capsys, "--config", str(ROOT / "configs" / "quickstart_adamw.yaml"),  # after the quickstart's
                         "--ckpt_path", str(run_folder / CHECKPOINTS / "last.ckpt"), "--trainer.max_epochs", "2")
    assert "holds the state of another optimizer than this run's AdamW (with settings block_size, density" in error


@pytest.mark.filterwarnings("ignore:.*could not find the monitored key")  # one step: no validation metric yet
def test_a_new_run_over_another_runs_checkpoints_warns(run_folder):
    with pytest.warns(UserWarning, match="already holds checkpoints of another run .*last.ckpt"):
        fit("--trainer.max_steps", "1", "--trainer.num_sanity_val_steps", "0")


def best_checkpoints(folder: Path) -> list[str]:
    return sorted(path.name for path in (folder / CHECKPOINTS).glob("best-*.ckpt"))


def test_resumes_keep_one_best_checkpoint_and_skip_the_validation_before_training(tmp_path, monkeypatch, caplog):
    # Its own first run: a checkpoint callback restores its records only in the folder it saved them in.
    run_folder = tmp_path
    monkeypatch.chdir(run_folder)
    fit()
    # last.ckpt knows the best checkpoint written in the same epoch: the best callback saved first.
    state = torch.load(run_folder / CHECKPOINTS / "last.ckpt", weights_only=True)["callbacks"]
    [best_path] = [value["best_model_path"] for key, value in state.items() if "val_exact_match" in key]
    assert best_path and Path(best_path).name in best_checkpoints(run_folder)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        fit("--ckpt_path", "last", "--trainer.max_epochs", "2")
        fit("--ckpt_path", "last", "--trainer.max_epochs", "3")
    assert len(best_checkpoints(run_folder)) == 1, best_checkpoints(run_folder)
    assert "Before training" not in caplog.text
    assert "Resuming from" in caplog.text
    # Nor is the resumed model's score logged at step 0 of the curves.
    resumed_logs = list((run_folder / "runs" / "quickstart" / "csv").glob("version_[12]/metrics.csv"))
    assert len(resumed_logs) == 2
    for metrics in resumed_logs:
        rows = list(csv.DictReader(metrics.open()))
        assert not [row for row in rows if row["step"] == "0" and row.get("val_loss")], metrics

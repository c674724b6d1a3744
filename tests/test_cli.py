"""The command line: help, the quickstart with tiny overrides, exact resume, and clear configuration errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lit_microopt.__main__ import PACKAGE_COMMANDS, Command, main

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
#: The quickstart shrunk to seconds: 64 training problems (4 steps an epoch), 16 held out, one epoch.
TINY_QUICKSTART = [
    "--data.init_args.train_size", "64", "--data.init_args.val_size", "16", "--data.init_args.test_size", "16",
    "--data.init_args.batch_size", "16", "--data.init_args.eval_batch_size", "16", "--trainer.max_epochs", "1",
    "--trainer.accelerator", "cpu", "--trainer.log_every_n_steps", "1",
]


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    # LightningCLI reads sys.argv (pytest's here) when handed no arguments, and warns when handed both.
    monkeypatch.setattr(sys, "argv", ["lit_microopt"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_module(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "lit_microopt", *args], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=300)


def test_help_lists_lightning_and_package_commands(capsys, monkeypatch):
    monkeypatch.setitem(PACKAGE_COMMANDS, "plot", Command("draw the curves of a run", "lit_microopt.plot:main"))
    assert main(["--help"]) == 0
    overview = capsys.readouterr().out
    for name in ("fit", "validate", "test", "predict", "plot"):
        assert f"\n  {name} " in overview


def test_a_package_command_gets_its_own_arguments(monkeypatch):
    received = []
    monkeypatch.setitem(PACKAGE_COMMANDS, "echo", Command("test command", "tests.test_cli:_record"))
    monkeypatch.setattr(sys.modules[__name__], "_record", lambda argv: received.append(argv) or 0)
    assert main(["echo", "--x", "1"]) == 0 and received == [["--x", "1"]]


def _record(argv):  # replaced in the test above
    raise AssertionError


@pytest.mark.slow
def test_quickstart_runs_as_a_command_and_writes_logs_config_and_checkpoints(tmp_path):
    result = run_module("fit", "--config", QUICKSTART, *TINY_QUICKSTART, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Before training, on the whole validation set" in result.stderr + result.stdout
    run = tmp_path / "runs" / "quickstart"
    metrics = (run / "csv" / "version_0" / "metrics.csv").read_text()
    assert "val_exact_match" in metrics and "train_loss" in metrics
    assert (run / "csv" / "version_0" / "config.yaml").is_file()
    assert list((run / "tensorboard" / "version_0").glob("events.out.tfevents.*"))
    assert (run / "checkpoints" / "last.ckpt").is_file()


def final_parameters(folder: Path) -> dict[str, torch.Tensor]:
    [checkpoint] = (folder / "runs").glob("*/checkpoints/last.ckpt")
    return torch.load(checkpoint, weights_only=False)["state_dict"]


@pytest.mark.parametrize("overlays", [[], ["quickstart_adam_mini.yaml"]])
def test_resuming_from_last_equals_an_uninterrupted_run(tmp_path, monkeypatch, overlays):
    configs = [QUICKSTART, *(str(ROOT / "configs" / overlay) for overlay in overlays)]
    uninterrupted, resumed = tmp_path / "uninterrupted", tmp_path / "resumed"
    for folder in (uninterrupted, resumed):
        folder.mkdir()
    monkeypatch.chdir(uninterrupted)
    config = [word for path in configs for word in ("--config", path)]
    main(["fit", *config, *TINY_QUICKSTART, "--trainer.max_epochs", "2"])
    monkeypatch.chdir(resumed)
    main(["fit", *config, *TINY_QUICKSTART, "--trainer.max_epochs", "1"])
    main(["fit", *config, *TINY_QUICKSTART, "--trainer.max_epochs", "2", "--ckpt_path", "last"])
    expected, found = final_parameters(uninterrupted), final_parameters(resumed)
    assert expected.keys() == found.keys()
    for name in expected:
        assert torch.equal(expected[name], found[name]), name


def expect_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "Traceback" not in error
    return error


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (["--model.init_args.no_such_argument", "1"], "no_such_argument"),
        (["--model.init_args.optimizer.init_args.m", "ten"], "m"),
        (["--model.init_args.optimizer.init_args.density", "2.0"], "density must be in (0, 1], got 2.0"),
        (["--trainer.max_epochs", "many"], "max_epochs"),
    ],
    ids=["unknown key", "wrong type", "optimizer argument out of range", "wrong trainer type"],
)
def test_bad_configurations_end_with_one_clear_error(capsys, tmp_path, monkeypatch, override, message):
    monkeypatch.chdir(tmp_path)
    assert message in expect_error(capsys, ["fit", "--config", QUICKSTART, *TINY_QUICKSTART, *override])


def test_a_pretrained_folder_that_does_not_exist(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    error = expect_error(capsys, ["fit", "--config", QUICKSTART, "--model.init_args.pretrained", "models/nothing/here"])
    assert "pretrained folder 'models/nothing/here' does not exist" in error


def test_a_data_file_with_a_missing_field_names_file_line_and_field(capsys, tmp_path, monkeypatch):
    from tests.test_recipes import tiny_llama_folder

    monkeypatch.chdir(tmp_path)
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"question": "1+1=", "answer": "2"}) + "\n" + json.dumps({"question": "2+2="}) + "\n")
    error = expect_error(capsys, [
        "fit", "--config", str(ROOT / "configs" / "llama2_7b_gsm8k_microadam.yaml"),
        "--model.init_args.pretrained", tiny_llama_folder(tmp_path / "model"), "--trainer.accelerator", "cpu",
        "--trainer.precision", "32-true", "--data.init_args.dataset", "null", "--data.init_args.train_file", str(data),
    ])
    assert f"{data}, line 2: missing field 'answer'" in error

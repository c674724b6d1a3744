"""benchmarks/quickstart_table.py: configurations of the runs, the table, the figure, and a short real run."""

from __future__ import annotations

import json

import pytest

from tests.benchmarks.helpers import load_benchmark

quickstart_table = load_benchmark("quickstart_table")


def test_each_optimizer_runs_the_quickstart_with_its_own_settings(tmp_path):
    configs = {name: quickstart_table.run_config(name, 2, tmp_path, None, None, None)
               for name in quickstart_table.OPTIMIZERS}
    optimizers = {name: config["model"]["init_args"]["optimizer"] for name, config in configs.items()}
    assert optimizers["adamw"]["class_path"] == "torch.optim.AdamW"
    assert optimizers["adamw8bit"] == {
        "class_path": "bitsandbytes.optim.AdamW8bit",
        "init_args": {"lr": 0.001, "betas": [0.9, 0.999], "eps": 1e-08, "weight_decay": 0.0},
    }
    assert optimizers["microadam_m10"]["init_args"]["m"] == 10
    assert optimizers["microadam_m20"]["init_args"]["m"] == 20
    assert optimizers["microadam_m20"]["init_args"]["lr"] == optimizers["microadam_m10"]["init_args"]["lr"] == 0.0003
    assert optimizers["adam_mini"]["class_path"].endswith("AdamMini")
    for config in configs.values():
        assert config["seed_everything"] == 2
        assert config["trainer"]["callbacks"] == [] and config["trainer"]["enable_checkpointing"] is False
        assert config["trainer"]["logger"][0]["init_args"]["save_dir"] == str(tmp_path)
        assert config["model"]["init_args"]["lr_scheduler"]["init_args"]["total_steps"] == 440  # the quickstart's
        assert config["data"]["init_args"]["test_size"] == 500


def test_a_quick_configuration_shrinks_the_run_and_its_schedule(tmp_path):
    config = quickstart_table.run_config("microadam_m10", 0, tmp_path, epochs=2, train_size=100, eval_size=10)
    schedule = config["model"]["init_args"]["lr_scheduler"]["init_args"]
    assert (schedule["total_steps"], schedule["warmup_steps"]) == (4, 1)  # 2 epochs of 2 batches of 64
    assert config["trainer"]["log_every_n_steps"] == 2
    data = config["data"]["init_args"]
    assert (data["train_size"], data["val_size"], data["test_size"]) == (100, 10, 10)


def _run(name, seed, exact_match, seconds, state_bytes):
    return {"optimizer": name, "seed": seed, "exact_match": exact_match, "evaluation": "test",
            "state_bytes": state_bytes, "parameters": 1000, "peak_rss_bytes": 2**30 + seed * 2**20,
            "fit_seconds": seconds, "median_step_seconds": seconds / 100, "steps": 4,
            "curves": {"train_loss": [[1, 2.0 - seed / 10], [3, 1.0]], "val_exact_match": [[0, 0.3], [3, exact_match]]}}


def test_the_table_gives_mean_or_median_and_range_over_seeds_and_step_time_against_adamw():
    runs = [_run("adamw", 0, 0.5, 10.0, 8000), _run("adamw", 1, 0.7, 14.0, 8000), _run("adamw", 2, 0.6, 60.0, 8000),
            _run("microadam_m10", 0, 0.4, 30.0, 963), _run("microadam_m10", 1, 0.5, 18.0, 963),
            _run("microadam_m10", 2, 0.6, 28.0, 963)]
    lines = quickstart_table.table(runs).splitlines()
    assert lines[0].startswith("| optimizer | test exact match |") and "| step / AdamW |" in lines[0]
    # Exact match and memory: mean (range); times: median (range), so that one slowed run does not move them.
    assert lines[2] == ("| AdamW | 0.600 (0.500-0.700) | 8 | 8.000 | 1025 (1024-1026) | 140.0 (100.0-600.0) | 1.00x | "
                        "14 (10-60) | 3 |")
    assert lines[3] == ("| MicroAdam m=10 | 0.500 (0.400-0.600) | 1 | 0.963 | 1025 (1024-1026) | 280.0 (180.0-300.0) | "
                        "2.00x | 28 (18-30) | 3 |")


def test_results_are_written_and_can_be_redrawn(tmp_path, capsys):
    runs = [_run("adamw", seed, 0.5, 10.0, 8000) for seed in (0, 1)] + [_run("adam_mini", 0, 0.6, 5.0, 4000)]
    quickstart_table.write_results(runs, tmp_path, "python benchmarks/quickstart_table.py --seeds 0 1", "a machine")
    (tmp_path / "curves.png").unlink()
    quickstart_table.main(["--replot", "--out", str(tmp_path)])
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    text = (tmp_path / "table.md").read_text()
    assert "Command: `python benchmarks/quickstart_table.py --seeds 0 1`" in text and "Machine: a machine" in text
    assert "| Adam-mini | 0.600 |" in capsys.readouterr().out


def test_bad_arguments_are_refused_with_the_fix(tmp_path, capsys):
    with pytest.raises(SystemExit):
        quickstart_table.main(["--replot", "--out", str(tmp_path)])
    assert "--replot needs" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        quickstart_table.main(["--epochs", "0"])
    assert "--epochs must be at least 1, got 0" in capsys.readouterr().err


@pytest.mark.slow
def test_a_short_real_run_fills_the_table_and_resumes_without_running_again(tmp_path, capsys):
    arguments = ["--optimizers", "adamw8bit", "--seeds", "0", "1", "--epochs", "1", "--train-size", "128",
                 "--eval-size", "8", "--out", str(tmp_path / "out"), "--work-dir", str(tmp_path / "runs")]
    quickstart_table.main(arguments)
    runs = json.loads((tmp_path / "out" / "runs.json").read_text())["runs"]
    assert [(run["optimizer"], run["seed"]) for run in runs] == [("adamw8bit", 0), ("adamw8bit", 1)]
    for run in runs:
        assert run["steps"] == 2 and 0.0 <= run["exact_match"] <= 1.0 and run["peak_rss_bytes"] > 2**27
        assert run["state_bytes"] / run["parameters"] < 2.1  # 8-bit moments
        assert 0 < run["median_step_seconds"] < run["fit_seconds"]
        assert [step for step, _ in run["curves"]["val_exact_match"]][0] == 0  # the model before training
    # Another seed, another order of the training problems: another loss.
    assert runs[0]["curves"]["train_loss"] != runs[1]["curves"]["train_loss"]
    table = (tmp_path / "out" / "table.md").read_text()
    assert "| 8-bit AdamW (bitsandbytes) |" in table and "lm-eval lit_microopt_arithmetic" in table
    assert (tmp_path / "out" / "curves.png").is_file()

    logs = sorted((tmp_path / "runs").glob("*/output.log"))
    written = [log.stat().st_mtime_ns for log in logs]
    quickstart_table.main([*arguments, "--resume"])
    assert [log.stat().st_mtime_ns for log in logs] == written  # nothing ran again
    assert json.loads((tmp_path / "out" / "runs.json").read_text())["runs"] == runs

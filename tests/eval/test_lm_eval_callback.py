"""LMEvalCallback on a real Trainer: what it logs and when, what it leaves as it was, and its errors."""

import csv
import sys

import lightning.pytorch as pl
import pytest
import torch
import yaml
from lightning.pytorch.loggers import CSVLogger

from lit_microopt.__main__ import main
from lit_microopt.eval import LMEvalCallback
from lit_microopt.models import CausalLM
from tests.eval.conftest import BASE_MODEL, ROOT, TASKS, quickstart_data
from tests.models.tiny import TINY_LLAMA, adamw, tiny_trainer

METRIC = "lm_eval/lit_microopt_arithmetic/exact_match"


class TrainingModeProbe(pl.Callback):
    """Records, after each epoch's evaluation, whether every layer is back in training mode."""

    def __init__(self) -> None:
        self.all_training: list[bool] = []

    def on_train_epoch_end(self, trainer, pl_module):
        self.all_training.append(all(layer.training for layer in pl_module.modules()))


def logged_rows(folder) -> list[dict[str, str]]:
    [path] = folder.glob("**/metrics.csv")
    with open(path) as file:
        return [row for row in csv.DictReader(file) if row.get(METRIC)]


@pytest.mark.slow
def test_metrics_are_logged_after_every_epoch_and_not_twice_at_the_end(tmp_path):
    callback = LMEvalCallback(["lit_microopt_arithmetic"], every_n_epochs=1, limit=8, include_path=TASKS, batch_size=8)
    probe = TrainingModeProbe()
    module = CausalLM(adamw(3e-4), pretrained=BASE_MODEL, max_new_tokens=5)
    trainer = tiny_trainer(tmp_path, max_steps=-1, max_epochs=2, limit_train_batches=2, limit_val_batches=0,
                           logger=CSVLogger(tmp_path), callbacks=[callback, probe])
    trainer.fit(module, quickstart_data())
    rows = logged_rows(tmp_path)
    assert [int(row["step"]) for row in rows] == [2, 4]  # after each epoch; the end saw the same weights
    for row in rows:
        assert 0.0 <= float(row[METRIC]) <= 1.0
    assert float(rows[-1][METRIC]) == callback.results["results"]["lit_microopt_arithmetic"]["exact_match,none"]
    assert trainer.callback_metrics[METRIC].item() == pytest.approx(float(rows[-1][METRIC]))
    assert callback.results["n-samples"]["lit_microopt_arithmetic"]["effective"] == 8  # the limit
    assert probe.all_training == [True, True]


@pytest.mark.slow
def test_evaluating_during_training_changes_nothing_in_the_training(tmp_path):
    """Dropout draws from PyTorch's generator, which lm-eval seeds: the callback must give it back."""

    def train(callbacks):
        pl.seed_everything(0)
        module = CausalLM(adamw(), config={**TINY_LLAMA, "attention_dropout": 0.5})
        tiny_trainer(tmp_path, max_steps=-1, max_epochs=2, limit_train_batches=2, limit_val_batches=0,
                     callbacks=callbacks).fit(module, quickstart_data())
        return module.state_dict()

    with_evaluation = train([LMEvalCallback("lit_microopt_arithmetic", every_n_epochs=1, limit=4, include_path=TASKS)])
    without = train([])
    assert with_evaluation.keys() == without.keys()
    for name in without:
        assert torch.equal(with_evaluation[name], without[name]), name


def test_an_unknown_task_stops_before_training_with_close_names():
    with pytest.raises(ValueError, match=r"unknown lm-eval task 'lit_microopt_arithmetc' \(close names: "
                                         r"lit_microopt_arithmetic"):
        LMEvalCallback(["lit_microopt_arithmetc"], include_path=TASKS)


def test_an_unknown_task_in_a_config_is_a_command_line_error(tmp_path, monkeypatch, capsys):
    config = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    [entry] = [c for c in config["trainer"]["callbacks"] if c["class_path"] == "lit_microopt.eval.LMEvalCallback"]
    entry["init_args"]["tasks"] = ["lit_microopt_arithmetc"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["lit_microopt"])
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(tmp_path / "config.yaml"), "--trainer.accelerator", "cpu"])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in error
    assert "unknown lm-eval task 'lit_microopt_arithmetc' (close names: lit_microopt_arithmetic" in error


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"every_n_epochs": None, "at_fit_end": False}, "it would never run"),
        ({"limit": 0}, "limit must be > 0"),
        ({"every_n_epochs": -1}, "every_n_epochs must be >= 0"),
        ({"include_path": "no/such/folder"}, "task folder 'no/such/folder' does not exist"),
    ],
)
def test_bad_arguments_are_named(arguments, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        LMEvalCallback("lit_microopt_arithmetic", **{"include_path": TASKS, **arguments})


def test_a_model_that_is_not_a_causal_lm_is_refused(tmp_path):
    class Regression(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(1, 1)

    callback = LMEvalCallback("lit_microopt_arithmetic", include_path=TASKS)
    with pytest.raises(ValueError, match="evaluates a CausalLM .*not a Regression"):
        callback.setup(tiny_trainer(tmp_path), Regression(), "fit")

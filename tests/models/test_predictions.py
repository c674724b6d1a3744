"""``predict`` writes what it predicts: JSON Lines in the run's log folder, or the file a writer is given."""

import json
import sys
from pathlib import Path

import pytest

from lit_microopt.__main__ import main
from lit_microopt.callbacks.prediction_writer import JsonLinesPredictionWriter
from lit_microopt.data import TextClassificationDataModule
from lit_microopt.models import SequenceClassifier
from tests.models.test_sequence_classifier import TINY_BERT, data_and_tokenizer
from tests.models.tiny import adamw, tiny_trainer

QUICKSTART = str(Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml")
#: The quickstart's base model on 8 of its test problems, answers of at most 5 tokens.
TINY_PREDICT = ["--data.init_args.train_size", "16", "--data.init_args.val_size", "8", "--data.init_args.test_size",
                "8", "--data.init_args.eval_batch_size", "4", "--trainer.accelerator", "cpu",
                "--trainer.enable_progress_bar", "false"]


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["lit_microopt"])  # LightningCLI reads sys.argv when handed none
    return tmp_path


def test_predict_writes_the_generated_answers_in_the_log_folder(in_tmp_path, caplog):
    assert main(["predict", "--config", QUICKSTART, *TINY_PREDICT]) == 0
    written = in_tmp_path / "runs" / "quickstart" / "csv" / "version_0" / "predictions.jsonl"
    records = read_lines(written)
    assert len(records) == 8 and all(record.keys() == {"prompt", "generated", "answer"} for record in records)
    assert records[0]["prompt"].startswith("What is ") and records[0]["answer"].isdigit()
    assert f"Predictions written to {Path('runs/quickstart/csv/version_0/predictions.jsonl')}" in caplog.text


def test_a_configured_writer_chooses_the_file(in_tmp_path):
    assert main(["predict", "--config", QUICKSTART, *TINY_PREDICT,
                 "--trainer.callbacks+=lit_microopt.callbacks.prediction_writer.JsonLinesPredictionWriter",
                 "--trainer.callbacks.path=out/answers.jsonl"]) == 0
    assert len(read_lines(in_tmp_path / "out" / "answers.jsonl")) == 8
    assert not (in_tmp_path / "runs" / "quickstart" / "csv" / "version_0" / "predictions.jsonl").exists()


def test_a_classifier_writes_one_class_per_example(tmp_path):
    module = SequenceClassifier(adamw(), num_labels=2, config=TINY_BERT)
    writer = JsonLinesPredictionWriter(tmp_path / "classes.jsonl")
    labelled = data_and_tokenizer(tmp_path)  # 32 sentences, in train.jsonl
    sentences = str(tmp_path / "train.jsonl")
    data = TextClassificationDataModule(train_file=sentences, test_file=sentences, num_labels=2, batch_size=8)
    data.tokenizer = labelled.tokenizer
    tiny_trainer(tmp_path, callbacks=[writer]).predict(module, data, return_predictions=False)
    records = read_lines(tmp_path / "classes.jsonl")
    assert len(records) == 32 and {record["prediction"] for record in records} <= {0, 1}

"""A checkpoint of a model fine-tuned from a local folder loads after the folder is gone; a mistyped folder fails fast."""

import shutil
import sys
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from transformers import AutoConfig, AutoModelForSequenceClassification

from lit_microopt.__main__ import main
from lit_microopt.models import SequenceClassifier
from tests.models.test_sequence_classifier import TINY_BERT, data_and_tokenizer
from tests.models.tiny import adamw, tiny_trainer

QUICKSTART = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"


def bert_folder(folder) -> str:
    """A tiny BERT classifier and its tokenizer saved as a Hugging Face folder, in bfloat16."""
    config = dict(TINY_BERT)
    model = AutoModelForSequenceClassification.from_config(
        AutoConfig.for_model(config.pop("model_type"), num_labels=2, **config), dtype=torch.bfloat16
    )
    model.save_pretrained(folder)
    data_and_tokenizer(folder).tokenizer.save_pretrained(folder)
    return str(folder)


def test_a_sequence_classifier_checkpoint_loads_without_its_base_folder(tmp_path):
    base = bert_folder(tmp_path / "base")
    module = SequenceClassifier(adamw(), num_labels=2, pretrained=base)
    saver = ModelCheckpoint(dirpath=tmp_path / "checkpoints", filename="last", monitor=None)
    data = data_and_tokenizer(tmp_path)
    data.tokenizer = None  # the model's own, from the base folder
    tiny_trainer(tmp_path, max_steps=2, enable_checkpointing=True, callbacks=[saver]).fit(module, data)
    shutil.rmtree(base)

    restored = SequenceClassifier.load_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert restored.model.dtype == torch.bfloat16  # the dtype it was trained in, not float32 from the config
    assert restored.tokenizer.get_vocab() == module.tokenizer.get_vocab()
    for (name, trained), loaded in zip(module.model.state_dict().items(), restored.model.state_dict().values()):
        assert torch.equal(trained, loaded), name
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["trained_from"] == {"pretrained": base, "tokenizer": None}


def test_a_mistyped_local_folder_fails_at_once(tmp_path, monkeypatch):
    # "runs/base" has the form of a Hub name ("organisation/name"), but runs/ is a folder here: a missing model
    # folder, which the Hub client would otherwise retry for about a minute without a network.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    started = time.perf_counter()
    with pytest.raises(FileNotFoundError, match=r"pretrained folder 'runs/base' does not exist"):
        SequenceClassifier(adamw(), pretrained="runs/base")
    assert time.perf_counter() - started < 1.0


def test_the_command_line_names_a_mistyped_local_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["lit_microopt"])  # LightningCLI reads sys.argv when handed none
    (tmp_path / "runs").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(QUICKSTART), "--model.init_args.pretrained", "runs/base"])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in error
    assert len([line for line in error.splitlines() if line.startswith("error:")]) == 1
    assert f"pretrained folder 'runs/base' does not exist (relative paths start at {tmp_path})" in error

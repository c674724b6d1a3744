"""The quickstart's base model: shipped as the script makes it, and unable to answer the quickstart's questions."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml

from lit_microopt.data import ArithmeticDataModule
from lit_microopt.models import CausalLM

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "lit_microopt" / "models" / "arithmetic_base"
sys.path.insert(0, str(ROOT / "scripts"))
import pretrain_base  # noqa: E402


def test_the_shipped_folder_has_the_scripts_architecture_and_its_tokenizer():
    config = json.loads((BASE / "config.json").read_text())
    assert {key: config[key] for key in pretrain_base.MODEL_CONFIG} == pretrain_base.MODEL_CONFIG
    module = CausalLM(pretrained="lit_microopt/models/arithmetic_base")  # found inside the package
    assert module.tokenizer("What is 1+1?").input_ids[:3] == [1, 59, 76]


def test_the_base_model_does_not_already_solve_the_quickstart(tmp_path):
    torch.set_num_threads(1)
    data = ArithmeticDataModule(**yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())["data"]["init_args"])
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    result = trainer.validate(CausalLM(pretrained=str(BASE), max_new_tokens=5), data, verbose=False)[0]
    assert result["val_exact_match"] < 0.5


@pytest.mark.slow
def test_the_script_is_deterministic(tmp_path):
    def pretrain(out: Path) -> str:
        command = [sys.executable, str(ROOT / "scripts" / "pretrain_base.py"), "--steps", "3", "--out", str(out)]
        subprocess.run(command, check=True, capture_output=True, cwd=tmp_path, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
        return hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()

    assert pretrain(tmp_path / "first") == pretrain(tmp_path / "second")
    assert CausalLM(pretrained=str(tmp_path / "first")).tokenizer is not None

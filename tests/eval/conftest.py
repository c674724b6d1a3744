"""Shared fixtures of the evaluation tests: small local models, a trained checkpoint, the shipped task folder."""

from pathlib import Path

import pytest
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_microopt.data import ArithmeticDataModule
from lit_microopt.models import CausalLM
from tests.models.tiny import adamw, tiny_trainer

ROOT = Path(__file__).resolve().parents[2]
TASKS = ROOT / "configs" / "tasks"
#: The quickstart's base model, shipped in the package: 0.57M parameters that already add up numbers.
BASE_MODEL = "lit_microopt/models/arithmetic_base"


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test of this folder runs on one torch thread (the fixture of tests/conftest.py)."""


def quickstart_data(**overrides) -> ArithmeticDataModule:
    """The quickstart's problems, few of them (the held-out problems do not depend on the sizes' sum)."""
    arguments = dict(train_size=64, val_size=16, test_size=16, batch_size=16, eval_batch_size=16,
                     prompt_template="What is {question}?")
    return ArithmeticDataModule(**{**arguments, **overrides})


@pytest.fixture(scope="session")
def base_module() -> CausalLM:
    return CausalLM(pretrained=BASE_MODEL).eval()


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    """A Lightning checkpoint of the base model after two fine-tuning steps on the quickstart's questions."""
    folder = tmp_path_factory.mktemp("checkpoint")
    saver = ModelCheckpoint(dirpath=folder, filename="last", save_top_k=1, monitor=None)
    module = CausalLM(adamw(3e-4), pretrained=BASE_MODEL, max_new_tokens=5)
    tiny_trainer(folder, max_steps=2, enable_checkpointing=True, callbacks=[saver], limit_val_batches=0).fit(
        module, quickstart_data()
    )
    return folder / "last.ckpt"

"""A CausalLM fine-tuned from a local folder: after the folder is gone its checkpoint still loads, evaluates, exports."""

import shutil

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from transformers import AutoModelForCausalLM

from lit_microopt.eval import evaluate_checkpoint, export_checkpoint
from lit_microopt.models import CausalLM
from lit_microopt.models.hf_loading import PACKAGE_ROOT
from tests.eval.conftest import TASKS, quickstart_data
from tests.models.tiny import adamw, tiny_trainer


@pytest.fixture(scope="module")
def orphaned_checkpoint(tmp_path_factory):
    """A checkpoint of the quickstart's base model, copied to a folder, fine-tuned 2 steps; the folder then deleted."""
    folder = tmp_path_factory.mktemp("orphaned")
    base = shutil.copytree(PACKAGE_ROOT / "models" / "arithmetic_base", folder / "base")
    module = CausalLM(adamw(3e-4), pretrained=str(base), max_new_tokens=5)
    saver = ModelCheckpoint(dirpath=folder, filename="last", monitor=None)
    tiny_trainer(folder, max_steps=2, enable_checkpointing=True, callbacks=[saver], limit_val_batches=0).fit(
        module, quickstart_data()
    )
    shutil.rmtree(base)
    return folder / "last.ckpt", module


def test_load_from_checkpoint_builds_the_model_from_the_saved_config(orphaned_checkpoint):
    path, trained = orphaned_checkpoint
    restored = CausalLM.load_from_checkpoint(path)
    assert restored.model.config.to_dict() == trained.model.config.to_dict()
    assert restored.model.generation_config.to_dict() == trained.model.generation_config.to_dict()
    assert restored.tokenizer.get_vocab() == trained.tokenizer.get_vocab()
    for (name, weight), loaded in zip(trained.model.state_dict().items(), restored.model.state_dict().values()):
        assert torch.equal(weight, loaded), name


def test_export_and_eval_need_no_base_folder(orphaned_checkpoint, tmp_path):
    path, trained = orphaned_checkpoint
    exported = AutoModelForCausalLM.from_pretrained(export_checkpoint(path, tmp_path / "exported"),
                                                    local_files_only=True)
    for (name, weight), loaded in zip(trained.model.state_dict().items(), exported.state_dict().values()):
        assert torch.equal(weight, loaded), name
    results = evaluate_checkpoint(path, "lit_microopt_arithmetic", str(TASKS), device="cpu", batch_size=4, limit=4,
                                  bootstrap_iters=0)
    assert results["n-samples"]["lit_microopt_arithmetic"]["effective"] == 4

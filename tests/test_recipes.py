"""Every config in configs/ parses and trains a few steps, with the model and data swapped for tiny local ones."""

import importlib
import inspect
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, BertTokenizerFast

from lit_microopt.__main__ import main
from lit_microopt.data import build_char_tokenizer

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RECIPES = sorted(path.name for path in CONFIGS.glob("*.yaml"))
#: The quickstart's variants are overlays of configs/quickstart.yaml, given after it.
BASE = "quickstart.yaml"


def config_files(recipe: str) -> list[Path]:
    """The files a recipe is run with: the base first for an overlay of the quickstart."""
    overlay = recipe.startswith("quickstart_")
    return [CONFIGS / BASE, CONFIGS / recipe] if overlay else [CONFIGS / recipe]


def model_arguments(recipe: str) -> dict:
    """The model's init_args of a recipe. An overlay's optimizer or schedule keeps the base's init_args that it
    does not give, as jsonargparse does when the class changes."""
    arguments: dict = {}
    for path in config_files(recipe):
        for key, value in yaml.safe_load(path.read_text()).get("model", {}).get("init_args", {}).items():
            if isinstance(value, dict) and isinstance(arguments.get(key), dict):
                merged = {**arguments[key], **value}
                merged["init_args"] = {**arguments[key].get("init_args", {}), **value.get("init_args", {})}
                value = merged
            arguments[key] = value
    return arguments
#: Shared by every recipe test: CPU, two optimizer steps, one validation batch.
FEW_STEPS = ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.max_steps", "2",
             "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1"]


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    # LightningCLI reads sys.argv (pytest's here) when handed no arguments, and warns when handed both.
    monkeypatch.setattr(sys, "argv", ["lit_microopt"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_llama_folder(folder: Path) -> str:
    """A 30K-parameter Llama with a character tokenizer that, like Llama-2's, has no padding token."""
    config = AutoConfig.for_model("llama", vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer = build_char_tokenizer()
    tokenizer.pad_token = None
    tokenizer.save_pretrained(folder)
    return str(folder)


def tiny_bert_folder(folder: Path) -> str:
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "cat", "dog", "sat", "ran", "the", "on", "mat"]
    config = AutoConfig.for_model("bert", vocab_size=len(words), hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=1, num_attention_heads=4, num_labels=3)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    BertTokenizerFast(vocab={word: index for index, word in enumerate(words)}).save_pretrained(folder)
    return str(folder)


def write_jsonl(path: Path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return str(path)


def stand_ins(recipe: str, tmp_path: Path) -> list[str]:
    """Command-line overrides that swap a recipe's Hub model and dataset for tiny local ones."""
    data = data_file = None
    if recipe.startswith("quickstart"):
        return ["--data.init_args.train_size", "32", "--data.init_args.val_size", "8", "--data.init_args.test_size", "8"]
    if "gsm8k" in recipe:
        data = [{"question": f"What is {a} plus 2?", "answer": f"{a}+2={a + 2}\n#### {a + 2}"} for a in range(12)]
    if "sft" in recipe:
        data = [{"instruction": "Add two.", "input": str(a), "output": str(a + 2)} for a in range(12)]
    if "mnli" in recipe:
        data = [{"premise": "a cat sat on the mat", "hypothesis": h, "label": label}
                for label, h in enumerate(["a cat sat", "a dog sat", "the cat ran"])] * 4
        data_file = write_jsonl(tmp_path / "mnli.jsonl", data)
        return ["--model.init_args.pretrained", tiny_bert_folder(tmp_path / "bert"), "--data.init_args.dataset", "null",
                "--data.init_args.train_file", data_file, "--data.init_args.val_file", data_file,
                "--data.init_args.test_file", data_file, "--data.init_args.batch_size", "6", "--data.init_args.num_workers", "0"]
    data_file = write_jsonl(tmp_path / "train.jsonl", data)
    return ["--model.init_args.pretrained", tiny_llama_folder(tmp_path / "llama"), "--model.init_args.max_new_tokens", "8",
            "--data.init_args.dataset", "null", "--data.init_args.train_file", data_file,
            "--data.init_args.val_file", data_file, "--data.init_args.batch_size", "2", "--data.init_args.num_workers", "0",
            "--trainer.strategy", "auto"]


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_trains_a_few_steps_with_tiny_stand_ins(recipe, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    configs = [argument for path in config_files(recipe) for argument in ("--config", str(path))]
    main(["fit", *configs, *stand_ins(recipe, tmp_path), *FEW_STEPS])
    [checkpoint] = (tmp_path / "runs").glob("*/checkpoints/last.ckpt")
    assert torch.load(checkpoint, weights_only=False)["global_step"] == 2


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_writes_out_every_optimizer_and_schedule_argument(recipe):
    """jsonargparse fills missing arguments from the class's defaults: a recipe must not depend on them."""
    model = model_arguments(recipe)
    for key in ("optimizer", "lr_scheduler"):
        module, _, name = model[key]["class_path"].rpartition(".")
        parameters = inspect.signature(getattr(importlib.import_module(module), name)).parameters
        expected = {p for p in parameters if p not in ("self", "params", "optimizer", "modules")
                    and parameters[p].kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)}
        assert expected <= set(model[key]["init_args"]), f"{recipe}: {key} lacks {sorted(expected - set(model[key]['init_args']))}"

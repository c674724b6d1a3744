"""Both optimizers under Hugging Face's transformers.Trainer: train, save, resume bit-identically (CPU, no network)."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

from lit_microopt.hf_trainer import AdamMiniForTrainer, MicroAdamForTrainer
from lit_microopt.optim import AdamMini, MicroAdam

STEPS = 6
OPTIMIZERS = {
    "AdamMiniForTrainer": (AdamMiniForTrainer, {"lr": 1e-2, "weight_decay": 0.1}),
    "MicroAdamForTrainer": (MicroAdamForTrainer, {"lr": 1e-2, "m": 4, "density": 0.1}),
    "MicroAdam": (MicroAdam, {"lr": 1e-2, "m": 4, "density": 0.1}),  # the Trainer's own unnamed groups
}


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=48, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16))


def counting_sequences() -> list[dict[str, torch.Tensor]]:
    # 24 sequences that count up from random starts: 6 batches of 4.
    starts = torch.randint(0, 48, (24, 1), generator=torch.Generator().manual_seed(0))
    sequences = (starts + torch.arange(8)) % 48
    return [{"input_ids": sequence, "labels": sequence} for sequence in sequences]


def trainer(folder, optimizer_cls_and_kwargs) -> Trainer:
    arguments = TrainingArguments(
        output_dir=str(folder), max_steps=STEPS, per_device_train_batch_size=4, save_strategy="steps",
        save_steps=STEPS // 2, use_cpu=True, report_to="none", disable_tqdm=True, logging_steps=1, seed=0,
        dataloader_num_workers=0,
    )
    return Trainer(model=tiny_llama(), args=arguments, train_dataset=counting_sequences(),
                   optimizer_cls_and_kwargs=optimizer_cls_and_kwargs)


def assert_same_state(resumed: torch.optim.Optimizer, uninterrupted: torch.optim.Optimizer) -> None:
    for index, (state, expected) in enumerate(zip(resumed.state_dict()["state"].values(),
                                                  uninterrupted.state_dict()["state"].values())):
        assert state.keys() == expected.keys(), index
        for key, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(expected[key])), (index, key)


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_train_save_and_resume_bit_identically(tmp_path, optimizer):
    uninterrupted = trainer(tmp_path / "uninterrupted", OPTIMIZERS[optimizer])
    uninterrupted.train()
    losses = [entry["loss"] for entry in uninterrupted.state.log_history if "loss" in entry]
    assert len(losses) == STEPS and losses[-1] < losses[0]
    assert isinstance(uninterrupted.optimizer.optimizer, (AdamMini, MicroAdam))  # the Trainer wraps it (accelerate)

    # A new process would start from the checkpoint half-way; here, a new Trainer and a new model in this one.
    resumed = trainer(tmp_path / "resumed", OPTIMIZERS[optimizer])
    resumed.train(resume_from_checkpoint=str(tmp_path / "uninterrupted" / f"checkpoint-{STEPS // 2}"))
    assert resumed.state.global_step == STEPS
    for (name, param), expected in zip(resumed.model.named_parameters(), uninterrupted.model.parameters()):
        assert torch.equal(param, expected), name
    assert_same_state(resumed.optimizer.optimizer, uninterrupted.optimizer.optimizer)


def test_adam_mini_given_the_trainers_unnamed_groups_says_what_to_pass(tmp_path):
    with pytest.raises(ValueError, match=r"with transformers\.Trainer, pass optimizer_cls_and_kwargs=\(AdamMiniForTrainer"):
        trainer(tmp_path, (AdamMini, {"lr": 1e-3})).create_optimizer()

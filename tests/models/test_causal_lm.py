"""CausalLM: answer-only training, exact match, tokenizers from folders, data or checkpoints."""

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from transformers import AutoConfig, AutoModelForCausalLM

from lit_microopt.data import ArithmeticDataModule, build_char_tokenizer
from lit_microopt.models import CausalLM
from tests.models.tiny import TINY_LLAMA, adamw, tiny_trainer


def small_data() -> ArithmeticDataModule:
    return ArithmeticDataModule(train_size=256, val_size=32, test_size=32, batch_size=32, eval_batch_size=32)


def save_pretrained_folder(folder, with_tokenizer=True):
    config = dict(TINY_LLAMA)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(config.pop("model_type"), **config))
    model.save_pretrained(folder)
    if with_tokenizer:
        build_char_tokenizer().save_pretrained(folder)
    return str(folder)


def test_training_lowers_the_answer_loss(tmp_path):
    module, data = CausalLM(adamw(), config=TINY_LLAMA, max_new_tokens=4), small_data()
    trainer = tiny_trainer(tmp_path, max_steps=16, limit_val_batches=1)
    before = trainer.validate(module, data, verbose=False)[0]["val_loss"]
    trainer.fit(module, data)
    after = trainer.validate(module, data, verbose=False)[0]
    assert after["val_loss"] < before - 1.0
    assert after["val_perplexity"] == pytest.approx(torch.tensor(after["val_loss"]).exp().item(), rel=1e-4)
    assert 0.0 <= after["val_exact_match"] <= 1.0


def test_exact_match_counts_answers_equal_to_the_reference(tmp_path):
    module, data = CausalLM(adamw(), config=TINY_LLAMA), small_data()
    data.setup("validate")
    references = [example.answer for example in data.datasets["validation"]]
    # A model that answers every second problem right (generation replaced: the metric is under test).
    answers = iter(answer if index % 2 == 0 else "x" for index, answer in enumerate(references))
    module.generate_answers = lambda prompt_ids, mask: [next(answers) for _ in range(len(prompt_ids))]
    result = tiny_trainer(tmp_path).validate(module, data, verbose=False)[0]
    assert result["val_exact_match"] == pytest.approx(0.5)


def test_answer_pattern_compares_final_answers():
    module = CausalLM(adamw(), config=TINY_LLAMA, answer_pattern=r"#### *(-?[0-9.,]+)")
    assert module.extract_answer("5 + 3 = 8\n#### 8") == module.extract_answer(" so 8.\n####8") == "8"
    assert module.extract_answer("no final answer") is None


def test_greedy_answers_stop_at_the_token_limit():
    module = CausalLM(adamw(), config=TINY_LLAMA, max_new_tokens=3)
    module.tokenizer = build_char_tokenizer()
    prompts = module.tokenizer(["1+1=", "22+2="], padding=True, padding_side="left", return_tensors="pt")
    answers = module.generate_answers(prompts.input_ids, prompts.attention_mask)
    assert len(answers) == 2 and all(len(answer) <= 3 for answer in answers)


def test_a_checkpoint_holds_the_tokenizer(tmp_path):
    module, data = CausalLM(adamw(), config=TINY_LLAMA), small_data()
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True)
    tiny_trainer(tmp_path, max_steps=2, enable_checkpointing=True, callbacks=[checkpoint]).fit(module, data)
    restored = CausalLM.load_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert restored.tokenizer.get_vocab() == build_char_tokenizer().get_vocab()
    assert all(torch.equal(a, b) for a, b in zip(restored.model.parameters(), module.model.parameters()))


def test_pretrained_folders_bring_their_tokenizer(tmp_path):
    folder = save_pretrained_folder(tmp_path / "model")
    module = CausalLM(adamw(), pretrained=folder)
    assert module.tokenizer("7").input_ids == [1, 27]
    assert CausalLM(adamw(), pretrained=save_pretrained_folder(tmp_path / "bare", with_tokenizer=False)).tokenizer is None


def test_bad_model_sources_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="pretrained folder .* does not exist"):
        CausalLM(adamw(), pretrained=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="exactly one of pretrained"):
        CausalLM(adamw())
    with pytest.raises(ValueError, match="needs a model_type"):
        CausalLM(adamw(), config={"hidden_size": 8})


def test_a_tokenizer_that_differs_from_the_data_is_refused(tmp_path):
    folder = save_pretrained_folder(tmp_path / "model", with_tokenizer=False)
    from transformers import BertTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "1", "2"]
    BertTokenizerFast(vocab={word: index for index, word in enumerate(words)}).save_pretrained(folder)
    with pytest.raises(ValueError, match="tokenizer differs"):
        tiny_trainer(tmp_path).fit(CausalLM(adamw(), pretrained=folder), small_data())

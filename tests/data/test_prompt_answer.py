"""Tokenizing prompt / answer pairs: truncation, dropped examples, padding, and the epoch-seeded order."""

from lit_microopt.data import PromptAnswer, build_char_tokenizer
from lit_microopt.data.prompt_answer import EpochShuffleSampler, PromptAnswerCollator, tokenize_examples


def test_long_examples_are_cut_and_prompt_only_examples_dropped(caplog):
    tokenizer = build_char_tokenizer()
    examples = [PromptAnswer("12+34=", "46"), PromptAnswer("1234567890=", "1")]
    tokenized = tokenize_examples(tokenizer, examples, max_length=8)
    assert len(tokenized) == 1 and len(tokenized[0].input_ids) == 8  # <bos> 6 prompt chars, then "4" of "46"
    assert "Dropped 1 of 2" in caplog.text


def test_padding_keeps_lengths_and_rounds_up():
    collate = PromptAnswerCollator(pad_token_id=0, pad_to_multiple_of=4)
    tokenized = tokenize_examples(build_char_tokenizer(), [PromptAnswer("1+1=", "2"), PromptAnswer("10+10=", "20")], 32)
    batch = collate(tokenized)
    assert batch["input_ids"].shape == (2, 12) and batch["prompt_ids"].shape == (2, 8)
    assert batch["attention_mask"].sum(1).tolist() == [len(t.input_ids) for t in tokenized]
    assert batch["answers"] == ["2", "20"]


def test_shuffle_order_depends_only_on_seed_and_epoch():
    first, second = EpochShuffleSampler(50, seed=1), EpochShuffleSampler(50, seed=1)
    first.set_epoch(3)
    second.set_epoch(3)
    assert list(first) == list(second)
    second.set_epoch(4)
    assert list(first) != list(second) and sorted(second) == list(range(50))

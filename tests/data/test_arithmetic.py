"""ArithmeticDataModule and its tokenizer: deterministic, disjoint splits; correct answers; answer-only labels."""

import pytest

from lit_microopt.data import ArithmeticDataModule, build_char_tokenizer
from lit_microopt.data.arithmetic import arithmetic_problems
from lit_microopt.data.prompt_answer import IGNORE_INDEX


def small_data(**overrides) -> ArithmeticDataModule:
    arguments = dict(operations=["+", "-"], digits=2, train_size=300, val_size=50, test_size=50, batch_size=8, seed=3)
    return ArithmeticDataModule(**{**arguments, **overrides})


def test_same_seed_same_problems_and_different_seed_different_problems():
    assert small_data().problems("test") == small_data().problems("test")
    assert small_data().problems("test") != small_data(seed=4).problems("test")


def test_splits_are_disjoint_and_answers_are_right():
    data = small_data()
    splits = {split: data.problems(split) for split in ("train", "validation", "test")}
    prompts = [{problem.prompt for problem in problems} for problems in splits.values()]
    assert [len(p) for p in prompts] == [300, 50, 50]  # no repeats inside a split
    assert not (prompts[0] & prompts[1] or prompts[0] & prompts[2] or prompts[1] & prompts[2])
    for problem in splits["train"]:
        assert str(eval(problem.prompt.rstrip("="))) == problem.answer


def test_the_template_writes_the_question():
    [problem] = small_data(prompt_template="What is {question}?", test_size=1).problems("test")
    assert problem.prompt.startswith("What is ") and problem.prompt.endswith("?")
    assert problem.prompt.removeprefix("What is ").removesuffix("?") + "=" == small_data(test_size=1).problems("test")[0].prompt


def test_held_out_problems_do_not_move_when_the_training_set_grows():
    assert small_data(train_size=100).problems("test") == small_data(train_size=1000).problems("test")
    assert small_data(train_size=100).problems("validation") == small_data(train_size=1000).problems("validation")


def test_asking_for_more_problems_than_exist_names_the_fix():
    with pytest.raises(ValueError, match="only 100 exist"):
        arithmetic_problems(["+"], digits=1, count=101, seed=0)
    with pytest.raises(ValueError, match="operations must be"):
        ArithmeticDataModule(operations=["/"])


def test_batches_label_only_the_answer_and_eos():
    data = small_data()
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    tokenizer = data.tokenizer
    for ids, labels, answer in zip(batch["input_ids"], batch["labels"], batch["answers"]):
        learned = [int(token) for token in labels if token != IGNORE_INDEX]
        assert tokenizer.decode(learned[:-1]) == answer and learned[-1] == tokenizer.eos_token_id
    # Prompts are left-padded so that generation continues all of them at the same position.
    assert (batch["prompt_ids"][:, -1] == tokenizer.convert_tokens_to_ids("=")).all()


def test_char_tokenizer_round_trips_and_has_fixed_ids(tmp_path):
    tokenizer = build_char_tokenizer()
    text = "Q: 57+68=?\nA: 125"
    assert tokenizer.decode(tokenizer(text).input_ids, skip_special_tokens=True) == text
    assert tokenizer.convert_tokens_to_ids(["<pad>", "<bos>", "<eos>", "0"]) == [0, 1, 2, 20]
    tokenizer.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(tmp_path)(text).input_ids == tokenizer(text).input_ids

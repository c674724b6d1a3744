"""InstructionDataModule: GSM-8k-style JSON Lines, templates, and errors that name file, line and field."""

import json

import pytest

from lit_microopt.data import DataFormatError, InstructionDataModule, build_char_tokenizer
from lit_microopt.data.prompt_answer import IGNORE_INDEX

GSM8K_LIKE = [
    {"question": "Tom has 3 apples and buys 2. How many?", "answer": "3+2=5\n#### 5"},
    {"question": "What is 7 minus 4?", "answer": "7-4=3\n#### 3"},
]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return str(path)


def test_gsm8k_fields_work_as_they_are(tmp_path):
    data = InstructionDataModule(train_file=write_jsonl(tmp_path / "train.jsonl", GSM8K_LIKE), batch_size=2)
    data.tokenizer = build_char_tokenizer()
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    tokenizer = data.tokenizer
    answers = {tokenizer.decode([t for t in labels if t != IGNORE_INDEX], skip_special_tokens=True) for labels in batch["labels"].tolist()}
    assert answers == {" 3+2=5\n#### 5", " 7-4=3\n#### 3"}
    assert tokenizer.decode(batch["prompt_ids"][0], skip_special_tokens=True).startswith("Question: ")


def test_templates_choose_the_fields(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [{"instruction": "Add", "input": "1 2", "output": "3"}])
    data = InstructionDataModule(train_file=path, prompt_template="{instruction}: {input}\n", answer_template="{output}")
    [example] = data.load_examples("train")
    assert (example.prompt, example.answer) == ("Add: 1 2\n", "3")


def test_a_missing_field_names_file_line_and_field(tmp_path):
    records = [GSM8K_LIKE[0], {}, {"question": "Q?", "solution": "1"}]
    path = write_jsonl(tmp_path / "train.jsonl", records)
    path_text = open(path).read().replace("{}\n", "\n")  # a blank line is skipped, yet counted
    open(path, "w").write(path_text)
    with pytest.raises(DataFormatError, match=r"train\.jsonl, line 3: missing field 'answer' \(fields present: question, solution\)"):
        InstructionDataModule(train_file=path).load_examples("train")


def test_bad_json_and_wrong_types_are_reported_with_their_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"question": "Q", "answer": "A"}\n{"question": "Q", "answer": \n')
    with pytest.raises(DataFormatError, match="line 2: not valid JSON"):
        InstructionDataModule(train_file=str(path)).load_examples("train")
    path.write_text('{"question": ["Q"], "answer": "A"}\n')
    with pytest.raises(DataFormatError, match="line 1: field 'question' must be str or int or float, got list"):
        InstructionDataModule(train_file=str(path)).load_examples("train")


def test_a_file_that_does_not_exist_fails_when_the_module_is_built(tmp_path):
    with pytest.raises(FileNotFoundError, match="train file .*missing.jsonl' does not exist"):
        InstructionDataModule(train_file=str(tmp_path / "missing.jsonl"))

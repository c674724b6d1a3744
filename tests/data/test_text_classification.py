"""TextClassificationDataModule: sentence pairs, label names, and bad labels reported with their line."""

import json

import pytest
from transformers import BertTokenizerFast

from lit_microopt.data import DataFormatError, TextClassificationDataModule

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "cat", "sat", "dog", "ran", "on", "the", "mat"]


def bert_tokenizer():
    return BertTokenizerFast(vocab={word: index for index, word in enumerate(WORDS)})


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return str(path)


def test_sentence_pairs_become_padded_batches(tmp_path):
    records = [
        {"premise": "a cat sat on the mat", "hypothesis": "a cat sat", "label": "entailment"},
        {"premise": "a dog ran", "hypothesis": "the dog sat", "label": "contradiction"},
    ]
    data = TextClassificationDataModule(
        train_file=write_jsonl(tmp_path / "train.jsonl", records), text_field="premise", text_pair_field="hypothesis",
        num_labels=3, label_names=["entailment", "neutral", "contradiction"], batch_size=2,
    )
    data.tokenizer = bert_tokenizer()
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert sorted(batch["labels"].tolist()) == [0, 2]
    assert batch["input_ids"].shape == batch["token_type_ids"].shape == (2, 12)  # [CLS] 6 words [SEP] 3 words [SEP]
    assert batch["token_type_ids"].max() == 1  # the second sentence is marked
    assert data.tokenizer.unk_token_id not in batch["input_ids"]


def test_a_label_out_of_range_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [{"sentence": "a cat", "label": 1}, {"sentence": "a dog", "label": 2}])
    with pytest.raises(DataFormatError, match=r"train\.jsonl, line 2: label 2 is outside \[0, 2\)"):
        TextClassificationDataModule(train_file=path).load_records("train")


def test_a_missing_text_field_names_the_setting_to_change(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [{"text": "a cat", "label": 0}])
    with pytest.raises(DataFormatError, match="line 1: missing field 'sentence'.*set text_field"):
        TextClassificationDataModule(train_file=path).load_records("train")

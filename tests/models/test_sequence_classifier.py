"""SequenceClassifier: a tiny BERT learns a separable task from JSON Lines; labels must agree with the data."""

import json

import pytest
import torch
from transformers import BertTokenizerFast

from lit_microopt.data import TextClassificationDataModule
from lit_microopt.models import SequenceClassifier
from tests.models.tiny import adamw, tiny_trainer

TINY_BERT = dict(model_type="bert", vocab_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                 num_attention_heads=4, max_position_embeddings=32)
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "film", "plot", "a"]


def data_and_tokenizer(tmp_path, num_labels=2):
    tokenizer = BertTokenizerFast(vocab={word: index for index, word in enumerate(WORDS)})
    records = [{"sentence": f"a {word} {noun}", "label": int(word == "good")}
               for word in ("good", "bad") for noun in ("film", "plot")] * 8
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    data = TextClassificationDataModule(train_file=str(path), val_file=str(path), num_labels=num_labels, batch_size=8)
    data.tokenizer = tokenizer
    return data


def test_a_tiny_bert_learns_a_separable_task(tmp_path):
    torch.manual_seed(0)
    module = SequenceClassifier(adamw(3e-3), num_labels=2, config=TINY_BERT)
    trainer = tiny_trainer(tmp_path, max_steps=24)
    data = data_and_tokenizer(tmp_path)
    trainer.fit(module, data)
    result = trainer.validate(module, data, verbose=False)[0]
    assert result["val_accuracy"] == 1.0 and result["val_loss"] < 0.5


def test_label_counts_must_agree(tmp_path):
    module = SequenceClassifier(adamw(), num_labels=3, config=TINY_BERT)
    with pytest.raises(ValueError, match="the data has 2 labels but the model num_labels=3"):
        tiny_trainer(tmp_path).fit(module, data_and_tokenizer(tmp_path))

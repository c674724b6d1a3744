"""LightningDataModules: synthetic arithmetic, instruction (question / answer) data and text classification.

Their tokenizers and Hub datasets are Hugging Face's: this package needs the ``[hf]`` extra.
"""

from lit_microopt._extras import require_extra

require_extra("hf", "transformers")

from lit_microopt.data.arithmetic import ArithmeticDataModule
from lit_microopt.data.char_tokenizer import build_char_tokenizer
from lit_microopt.data.instruction import InstructionDataModule
from lit_microopt.data.prompt_answer import PromptAnswer, PromptAnswerDataModule
from lit_microopt.data.records import DataFormatError
from lit_microopt.data.text_classification import TextClassificationDataModule

__all__ = [
    "ArithmeticDataModule",
    "DataFormatError",
    "InstructionDataModule",
    "PromptAnswer",
    "PromptAnswerDataModule",
    "TextClassificationDataModule",
    "build_char_tokenizer",
]

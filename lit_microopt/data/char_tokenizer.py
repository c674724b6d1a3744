"""A character-level Hugging Face tokenizer built in code: one token per printable ASCII character.

Synthetic data (arithmetic) needs no learned vocabulary, and a fixed one built from code makes every model
trained on it compatible with every other: the same character always has the same id, whatever the problems.
The result is an ordinary ``PreTrainedTokenizerFast``, so it saves with ``save_pretrained`` next to a model and
loads back with ``AutoTokenizer.from_pretrained``.
"""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
#: Printable ASCII (space to tilde) and the newline, after the special tokens: 100 tokens in all.
CHARACTERS = tuple(chr(code) for code in range(32, 127)) + ("\n",)


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """The character-level tokenizer: ids 0-3 are ``<pad> <bos> <eos> <unk>``, then one id per character.

    Encoding adds ``<bos>`` in front (as Llama tokenizers do); decoding joins characters without spaces.

    Returns:
        A ``PreTrainedTokenizerFast`` with ``pad``, ``bos``, ``eos`` and ``unk`` tokens set.

    Example:
        >>> tokenizer = build_char_tokenizer()
        >>> tokenizer("12+7=").input_ids
        [1, 21, 22, 15, 27, 33]
        >>> tokenizer.decode([21, 22, 2], skip_special_tokens=True)
        '12'
    """
    vocabulary = {token: index for index, token in enumerate(SPECIAL_TOKENS + CHARACTERS)}
    tokenizer = Tokenizer(models.WordLevel(vocabulary, unk_token=UNK))
    # Every character is its own pre-token; "[\s\S]" rather than "." so that newlines are kept too.
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocabulary[BOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token=PAD, bos_token=BOS, eos_token=EOS, unk_token=UNK,
        padding_side="right", clean_up_tokenization_spaces=False,
    )

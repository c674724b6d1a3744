"""Pre-train the quickstart's base model and save it as a Hugging Face folder (lit_microopt/models/arithmetic_base).

The base model has read arithmetic the way a language model reads text: sums written as equations
("57+68=125"), differences written as equations ("91-34=57") and asked as questions ("What is 91-34?" -> "57").
It has never seen a sum asked as a question: configs/quickstart.yaml fine-tunes it, with MicroAdam, to answer
those. The sums that the quickstart holds out for validation and test are left out of the corpus too, so they
stay unseen until the quickstart evaluates them.

    python scripts/pretrain_base.py                                # a few minutes on 2 CPU cores
    python scripts/pretrain_base.py --steps 10 --out /tmp/base     # a quick look

It trains with one thread and fixed seeds, so a run on the same machine and PyTorch version reproduces the
shipped weights bit for bit; elsewhere the weights differ by floating-point rounding, and the numbers in the
folder's README.md by a little.
"""

from __future__ import annotations

import argparse
import logging
import random
import time
from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import torch
import yaml

from lit_microopt.data import ArithmeticDataModule, PromptAnswer, PromptAnswerDataModule, build_char_tokenizer
from lit_microopt.models import CausalLM, WarmupDecayLR

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
DEFAULT_OUT = ROOT / "lit_microopt" / "models" / "arithmetic_base"

#: A 0.57M-parameter Llama: 3 layers, 4 query heads sharing 2 key/value heads, tied embeddings.
MODEL_CONFIG = dict(
    model_type="llama", vocab_size=100, hidden_size=128, intermediate_size=352, num_hidden_layers=3,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True,
    bos_token_id=1, eos_token_id=2, pad_token_id=0,
)
#: How many examples of each kind the corpus holds (operands of up to two digits).
CORPUS = {"sum equations": 16_000, "difference equations": 6_000, "difference questions": 6_000}
SEED = 0


def corpus(held_out: set[tuple[int, int]], seed: int) -> list[PromptAnswer]:
    """The pre-training text, shuffled: sums as equations, differences as equations and as questions."""
    rng = random.Random(seed)

    def pairs(count: int, exclude: set[tuple[int, int]]) -> list[tuple[int, int]]:
        chosen = []
        while len(chosen) < count:
            pair = (rng.randrange(100), rng.randrange(100))
            if pair not in exclude:
                chosen.append(pair)
        return chosen

    examples = [PromptAnswer(f"{a}+{b}=", str(a + b)) for a, b in pairs(CORPUS["sum equations"], held_out)]
    # Differences are kept non-negative: the sign is a skill the quickstart does not need.
    examples += [PromptAnswer(f"{max(a, b)}-{min(a, b)}=", str(abs(a - b)))
                 for a, b in pairs(CORPUS["difference equations"], set())]
    examples += [PromptAnswer(f"What is {max(a, b)}-{min(a, b)}?", str(abs(a - b)))
                 for a, b in pairs(CORPUS["difference questions"], set())]
    rng.shuffle(examples)
    return examples


class PretrainingText(PromptAnswerDataModule):
    """The corpus for training; held-out sum equations for validation (a check of the arithmetic learned)."""

    def __init__(self, train: list[PromptAnswer], validation: list[PromptAnswer]) -> None:
        super().__init__(batch_size=64, eval_batch_size=250, max_length=64, seed=SEED)
        self.examples = {"train": train, "validation": validation, "test": None}

    def load_examples(self, split: str) -> list[PromptAnswer] | None:
        return self.examples[split]

    def load_tokenizer(self):
        return build_char_tokenizer()


def quickstart_data() -> ArithmeticDataModule:
    """The data module of configs/quickstart.yaml, built from the file so that both stay in step."""
    return ArithmeticDataModule(**yaml.safe_load(QUICKSTART.read_text())["data"]["init_args"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder to write (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=5000, help="AdamW steps of 64 examples (default: %(default)s)")
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    pl.seed_everything(SEED)

    target = quickstart_data()
    held_out = {(a, b) for split in ("validation", "test") for a, _, b in target.triples(split)}
    validation = [PromptAnswer(f"{a}{op}{b}=", str(a + b)) for a, op, b in target.triples("validation")]
    data = PretrainingText(corpus(held_out, SEED), validation)

    module = CausalLM(
        optimizer=partial(torch.optim.AdamW, lr=3e-3, betas=(0.9, 0.99), weight_decay=0.01),
        lr_scheduler=partial(
            WarmupDecayLR, total_steps=arguments.steps, warmup_steps=arguments.steps // 20, decay="cosine"
        ),
        config=MODEL_CONFIG, max_new_tokens=5,
    )
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=arguments.steps, val_check_interval=min(500, arguments.steps),
        check_val_every_n_epoch=None, logger=False, enable_checkpointing=False, num_sanity_val_steps=0,
        deterministic=True,
    )
    started = time.time()
    trainer.fit(module, data)
    equations = trainer.validate(module, data, verbose=False)[0]["val_exact_match"]
    questions = trainer.validate(module, target, verbose=False)[0]["val_exact_match"]
    minutes = (time.time() - started) / 60

    arguments.out.mkdir(parents=True, exist_ok=True)
    module.model.save_pretrained(arguments.out)
    module.tokenizer.save_pretrained(arguments.out)
    card = CARD.format(steps=arguments.steps, minutes=minutes, equations=equations, questions=questions,
                       parameters=sum(p.numel() for p in module.model.parameters()), torch=torch.__version__,
                       **{key.replace(" ", "_"): value for key, value in CORPUS.items()})
    (arguments.out / "README.md").write_text(card)
    print(card)


CARD = """# arithmetic_base: the quickstart's base model

A {parameters:,}-parameter Llama (3 layers, hidden size 128, 4 query and 2 key/value heads, tied embeddings)
with a character-level tokenizer, made by `python scripts/pretrain_base.py` ({steps} AdamW steps of 64
examples, {minutes:.1f} minutes on the CPU, PyTorch {torch}).

It has read {sum_equations:,} sums written as equations ("57+68=125"), {difference_equations:,} differences
as equations ("91-34=57") and {difference_questions:,} differences asked as questions ("What is 91-34?"),
operands below 100, the quickstart's held-out sums excepted. It has never seen a sum asked as a question.

| held-out sums (exact match of greedy answers)   |                |
| ---                                             | ---            |
| as equations, "57+68="                          | {equations:.3f} |
| as questions, "What is 57+68?" (the quickstart) | {questions:.3f} |

`configs/quickstart.yaml` fine-tunes it with MicroAdam to answer the questions.
"""


if __name__ == "__main__":
    main()

"""``LitMicroOptLM``: a trained :class:`~lit_microopt.models.CausalLM` as a model of EleutherAI's lm-evaluation-harness.

Registered in lm-eval as ``lit_microopt`` when :mod:`lit_microopt` is imported, so that::

    lm_eval.simple_evaluate(model="lit_microopt", model_args="checkpoint=last.ckpt,device=cpu", tasks=[...])

works from Python; ``python -m lit_microopt eval`` is the command-line route.

It scores text the way lm-eval's own ``hf`` model does (the same tokens, the same truncation), so that a
checkpoint scores the same through ``lit_microopt`` and, once exported, through ``--model hf``. One difference:
``loglikelihood_rolling`` scores the text's own tokens after the prefix token, without the ``<bos>`` a tokenizer
may add in front (the ``hf`` model scores that ``<bos>`` too).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lit_microopt._extras import require_extra

require_extra("eval")  # lm-eval and transformers, imported below

from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import normalize_gen_kwargs
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList
from typing_extensions import override

if TYPE_CHECKING:
    from lit_microopt.models import CausalLM

#: ``model_max_length`` of tokenizers that set none (transformers' VERY_LARGE_INTEGER): no limit at all.
UNSET_TOKENIZER_LENGTH = int(1e30)
#: Context length when neither the model's configuration nor its tokenizer gives one (lm-eval's choice too).
DEFAULT_MAX_LENGTH = 2048
#: Where a position-length attribute may be found in a Hugging Face configuration, in order.
CONFIG_LENGTH_ATTRIBUTES = ("n_positions", "max_position_embeddings", "n_ctx")

#: A scoring request: the strings (for the cache; ``None`` for rolling windows), context and continuation tokens.
TokenRequest = tuple[Any, list[int], list[int]]


class StopAtStrings(StoppingCriteria):
    """Stops each generated row once its text, decoded from ``prompt_length`` on, contains a stop string."""

    def __init__(self, tokenizer: Any, stop: Sequence[str], prompt_length: int) -> None:
        self.tokenizer, self.stop, self.prompt_length = tokenizer, [text for text in stop if text], prompt_length

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_length :], skip_special_tokens=True)
        done = [any(stop in text for stop in self.stop) for text in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to the first stop string it contains, which is left out.

    Example:
        >>> cut_at_stop("125\\nWhat is", ["\\n", "What"])
        '125'
    """
    end = min((text.find(word) for word in stop if word and word in text), default=len(text))
    return text[:end]


class LitMicroOptLM(TemplateLM):
    """A trained ``CausalLM`` (from a Lightning checkpoint or in memory) as an lm-eval model.

    Requests are scored in batches of ``batch_size``, longest first. ``loglikelihood`` scores the continuation's
    tokens only; ``generate_until`` decodes greedily (or samples, when a task asks for it) and cuts the text at
    the first of the task's ``until`` strings, within ``max_gen_toks`` tokens. An in-memory module is put in
    evaluation mode for each call and given back in the mode each of its layers had.

    Args:
        checkpoint: a ``.ckpt`` file of a ``CausalLM`` (holding its tokenizer); or give ``module``.
        module: a ``CausalLM`` with a tokenizer, used where it is (its device, its dtype).
        device: where to load ``checkpoint``: ``"cpu"``, ``"cuda"``, ``"cuda:1"``; default CUDA when there is
            one. With ``module``, only its own device is accepted.
        batch_size: requests per forward pass.
        max_batch_size: accepted for lm-eval's command line, which always passes it; unused.
        max_length: longest input in tokens; default: the model's position limit (``max_position_embeddings``).
        max_gen_toks: most generated tokens when a task does not say.
        progress_bar: show a progress bar of the requests.

    Raises:
        ValueError: neither or both of ``checkpoint`` and ``module``; a module without tokenizer; a batch size
            that is not a positive integer; a ``device`` other than the module's.

    Example:
        >>> import lm_eval
        >>> results = lm_eval.simple_evaluate(  # doctest: +SKIP
        ...     model=LitMicroOptLM(checkpoint="runs/quickstart/checkpoints/last.ckpt", device="cpu"),
        ...     tasks=["lit_microopt_arithmetic"], task_manager=lm_eval.tasks.TaskManager(include_path="configs/tasks"))
    """

    def __init__(
        self,
        checkpoint: str | None = None,
        module: CausalLM | None = None,
        device: str | None = None,
        batch_size: int | str = 16,
        max_batch_size: int | None = None,
        max_length: int | None = None,
        max_gen_toks: int = 256,
        progress_bar: bool = True,
    ) -> None:
        super().__init__()
        if (checkpoint is None) == (module is None):
            raise ValueError(
                "LitMicroOptLM needs exactly one of checkpoint (a .ckpt file, e.g. model_args='checkpoint=last.ckpt') "
                "and module (a CausalLM in memory)."
            )
        if module is None:
            from lit_microopt.eval.checkpoints import load_causal_lm

            module = load_causal_lm(checkpoint, device or ("cuda" if torch.cuda.is_available() else "cpu"))
        elif device is not None and torch.device(device) != _device_of(module):
            raise ValueError(
                f"LitMicroOptLM: device {device!r} differs from the module's {str(_device_of(module))!r}; move the "
                "module first (module.to(device)) or leave device unset."
            )
        if getattr(module, "tokenizer", None) is None:
            raise ValueError("LitMicroOptLM: the module has no tokenizer; give a CausalLM that has one (set tokenizer).")
        self.module, self.checkpoint = module, checkpoint
        self.tokenizer = module.tokenizer
        self.batch_size = _positive_int("batch_size", batch_size)
        self._max_length = None if max_length is None else _positive_int("max_length", max_length)
        self._max_gen_toks = _positive_int("max_gen_toks", max_gen_toks)
        self.progress_bar = progress_bar
        self._pad_id = next(
            (token for token in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id) if token is not None), 0
        )

    # -- what lm-eval reads -----------------------------------------------------------------------------

    @property
    def model(self) -> Any:
        """The Hugging Face model inside the module."""
        return self.module.model

    @property
    def device(self) -> torch.device:
        return _device_of(self.module)

    @property
    @override
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    @override
    def prefix_token_id(self) -> int:
        # What an empty context is replaced by: <bos> when the tokenizer has one, as for lm-eval's hf model.
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        """Longest input in tokens: ``max_length`` if given, else the model's, else the tokenizer's, else 2048."""
        if self._max_length is not None:
            return self._max_length
        config = self.model.config
        config = getattr(config, "text_config", None) or config
        for name in CONFIG_LENGTH_ATTRIBUTES:
            if getattr(config, name, None) is not None:
                return int(getattr(config, name))
        length = getattr(self.tokenizer, "model_max_length", None)
        return int(length) if length is not None and length < UNSET_TOKENIZER_LENGTH else DEFAULT_MAX_LENGTH

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    @override
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", "") or type(self.tokenizer).__name__).replace("/", "__")

    def get_model_info(self) -> dict[str, Any]:
        """What lm-eval records about the model in the results' ``config``."""
        return {
            "checkpoint": None if self.checkpoint is None else str(Path(self.checkpoint).resolve()),
            "model_num_parameters": sum(parameter.numel() for parameter in self.model.parameters()),
            "model_dtype": str(next(self.model.parameters()).dtype),
        }

    @override
    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        # Unset: the tokenizer's own special tokens, unless the text already starts with <bos> (few-shot prompts
        # built by a chat template do): lm-eval's hf model decides the same way.
        if add_special_tokens is None:
            bos = self.tokenizer.bos_token
            add_special_tokens = not (bos and string.startswith(bos))
        return self.tokenizer.encode(string, add_special_tokens=add_special_tokens)

    # -- the three request types ------------------------------------------------------------------------

    @override
    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        return super().loglikelihood(requests, disable_tqdm=True)

    @override
    def _loglikelihood_tokens(self, requests: list[TokenRequest], **kwargs: Any) -> list[tuple[float, bool]]:
        """``(log-probability of the continuation, whether greedy decoding gives it)`` for each request."""
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        order = sorted(range(len(requests)), key=lambda index: -len(requests[index][1]) - len(requests[index][2]))
        with self._evaluating(), self._progress(len(requests), "Scoring requests") as progress:
            for batch in _batches(order, self.batch_size):
                rows = []
                for index in batch:
                    _, context, continuation = requests[index]
                    if not continuation or len(continuation) > self.max_length:
                        raise ValueError(
                            f"a continuation of {len(continuation)} tokens cannot be scored with inputs of at most "
                            f"{self.max_length} tokens; use a task with continuations of 1 to {self.max_length} tokens."
                        )
                    # The last token is only predicted; inputs too long lose their oldest tokens, as in lm-eval.
                    rows.append((context + continuation)[-(self.max_length + 1) :][:-1])
                logits = self.model(input_ids=self._right_padded(rows)).logits
                continuations = [requests[index][2] for index in batch]
                # The logits at positions len(row)-n .. len(row)-1 predict a row's n continuation tokens.
                scored = torch.cat([
                    logits[row_index, len(row) - len(continuation) : len(row)]
                    for row_index, (row, continuation) in enumerate(zip(rows, continuations))
                ])
                log_probabilities = torch.log_softmax(scored.float(), dim=-1)
                targets = torch.tensor([token for continuation in continuations for token in continuation])
                targets = targets.to(log_probabilities.device)
                token_scores = log_probabilities.gather(-1, targets[:, None]).squeeze(-1)
                greedy = log_probabilities.argmax(-1) == targets
                lengths = [len(continuation) for continuation in continuations]
                for index, scores, hits in zip(batch, token_scores.split(lengths), greedy.split(lengths)):
                    results[index] = (float(scores.sum()), bool(hits.all()))
                    if requests[index][0] is not None:
                        self.cache_hook.add_partial("loglikelihood", requests[index][0], results[index])
                progress.update(len(batch))
        return results

    @override
    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """The log-probability of each whole text, after the prefix token, in windows of ``max_length`` tokens."""
        windows: list[TokenRequest] = []
        owners: list[int] = []
        for owner, (text,) in enumerate(request.args for request in requests):
            tokens = self.tok_encode(text, add_special_tokens=False)
            for window in get_rolling_token_windows(tokens, self.prefix_token_id, self.max_length, context_len=1):
                context, continuation = make_disjoint_window(window)
                windows.append((None, context, continuation))
                owners.append(owner)
        totals = [0.0] * len(requests)
        for owner, (log_probability, _) in zip(owners, self._loglikelihood_tokens(windows)):
            totals[owner] += log_probability
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    @override
    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """The text generated after each context, cut at the first of its ``until`` strings."""
        results: list[str | None] = [None] * len(requests)
        by_options: dict[str, list[int]] = {}
        for index, request in enumerate(requests):
            key = json.dumps(request.args[1], sort_keys=True, default=str)
            by_options.setdefault(key, []).append(index)
        with self._evaluating(), self._progress(len(requests), "Generating") as progress:
            for indices in by_options.values():
                options = normalize_gen_kwargs(requests[indices[0]].args[1], self.max_gen_toks)
                prompts = {index: self.tok_encode(requests[index].args[0]) for index in indices}
                longest_first = sorted(indices, key=lambda index: -len(prompts[index]))
                for batch in _batches(longest_first, self.batch_size):
                    texts = self._generate([prompts[index] for index in batch], dict(options))
                    for index, text in zip(batch, texts):
                        results[index] = text
                        self.cache_hook.add_partial("generate_until", requests[index].args, text)
                    progress.update(len(batch))
        return results

    # -- helpers ----------------------------------------------------------------------------------------

    def _generate(self, prompts: list[list[int]], options: dict[str, Any]) -> list[str]:
        until, max_gen_toks = list(options.pop("until")), int(options.pop("max_gen_toks"))
        if max_gen_toks >= self.max_length:
            raise ValueError(
                f"max_gen_toks {max_gen_toks} leaves no room for the prompt in the model's {self.max_length} "
                "positions; set a smaller max_gen_toks in the task's generation_kwargs (or in model_args)."
            )
        if not options.get("do_sample"):
            options.pop("temperature", None)  # greedy: a temperature would only make transformers warn
        # Prompts lose their oldest tokens to leave room for the answer, and are padded on the left.
        prompts = [prompt[-(self.max_length - max_gen_toks) :] for prompt in prompts]
        width = max(map(len, prompts))
        input_ids = torch.full((len(prompts), width), self._pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            input_ids[row, width - len(prompt) :] = torch.tensor(prompt)
            attention_mask[row, width - len(prompt) :] = 1
        # A fresh configuration: the model's own (sampling settings saved with it) must not apply here.
        generation = GenerationConfig(
            max_new_tokens=max_gen_toks, num_beams=1, eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self._pad_id, **options,
        )
        stopping = StoppingCriteriaList([StopAtStrings(self.tokenizer, until, width)]) if any(until) else None
        generated = self.model.generate(
            input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device),
            generation_config=generation, stopping_criteria=stopping,
        )
        texts = self.tokenizer.batch_decode(generated[:, width:], skip_special_tokens=True)
        return [cut_at_stop(text, until) for text in texts]

    def _right_padded(self, rows: list[list[int]]) -> torch.Tensor:
        # No attention mask is needed: a causal model's outputs before the padding do not see it.
        width = max(map(len, rows))
        input_ids = torch.full((len(rows), width), self._pad_id, dtype=torch.long)
        for index, row in enumerate(rows):
            input_ids[index, : len(row)] = torch.tensor(row)
        return input_ids.to(self.device)

    def _progress(self, total: int, description: str) -> tqdm:
        return tqdm(total=total, desc=description, disable=not self.progress_bar, leave=False)

    @contextmanager
    def _evaluating(self) -> Iterator[None]:
        """Evaluation mode without gradients; every layer gets its own mode back afterwards."""
        modes = [(layer, layer.training) for layer in self.module.modules()]
        self.module.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            for layer, training in modes:
                layer.training = training


def _device_of(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def _positive_int(name: str, value: int | str) -> int:
    # lm-eval's model_args arrive as strings or numbers ("16", 16); "auto" and other words are refused.
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"LitMicroOptLM: {name} must be a positive integer, got {value!r} (e.g. {name}=16).")
    return value


def _batches(indices: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(indices), size):
        yield indices[start : start + size]

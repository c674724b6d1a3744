"""LitMicroOptLM: its scores are the model's own, its generations stop where lm-eval asks, bad input is named."""

import pytest
import torch
from lm_eval.api.instance import Instance
from lm_eval.api.registry import get_model

from lit_microopt.data import build_char_tokenizer
from lit_microopt.eval import LitMicroOptLM
from lit_microopt.eval.harness_model import StopAtStrings, cut_at_stop
from lit_microopt.models import CausalLM
from tests.models.tiny import TINY_LLAMA


@pytest.fixture(scope="module")
def tiny_module() -> CausalLM:
    torch.manual_seed(0)
    module = CausalLM(config=TINY_LLAMA)
    module.tokenizer = build_char_tokenizer()
    return module.eval()


def request(kind: str, *arguments) -> Instance:
    return Instance(request_type=kind, doc={}, arguments=tuple(arguments), idx=0)


def next_token_log_probabilities(module: CausalLM, ids: list[int]) -> torch.Tensor:
    """Row t: the log-probabilities of the token after ``ids[: t + 1]``, from one plain forward pass."""
    with torch.no_grad():
        return torch.log_softmax(module.model(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)


def direct_loglikelihood(module: CausalLM, context: str, continuation: str) -> tuple[float, bool]:
    tokenizer = module.tokenizer
    # lm-eval's convention: the context's trailing spaces belong to the continuation.
    spaces = len(context) - len(context.rstrip())
    context, continuation = context[: len(context) - spaces], context[len(context) - spaces :] + continuation
    if context:
        whole, context_ids = tokenizer(context + continuation).input_ids, tokenizer(context).input_ids
    else:  # an empty context is the <bos> token alone
        context_ids = [tokenizer.bos_token_id]
        whole = context_ids + tokenizer(continuation, add_special_tokens=False).input_ids
    log_probabilities = next_token_log_probabilities(module, whole)
    positions = range(len(context_ids), len(whole))
    total = sum(float(log_probabilities[position - 1, whole[position]]) for position in positions)
    greedy = all(int(log_probabilities[position - 1].argmax()) == whole[position] for position in positions)
    return total, greedy


def test_the_model_is_registered_in_lm_eval_next_to_its_own():
    assert get_model("lit_microopt") is LitMicroOptLM
    assert get_model("hf").__name__ == "HFLM"  # registering ours did not hide lm-eval's models


def test_loglikelihoods_are_those_of_the_continuation_tokens(tiny_module):
    pairs = [("12+7=", "19"), ("What is 3+4?", "7"), ("", "hello"), ("a much longer context here: ", "xyz"), ("1", "0")]
    lm = LitMicroOptLM(module=tiny_module, batch_size=2)  # three batches of sorted, right-padded rows
    found = lm.loglikelihood([request("loglikelihood", context, continuation) for context, continuation in pairs])
    for (context, continuation), (log_probability, greedy) in zip(pairs, found):
        expected, expected_greedy = direct_loglikelihood(tiny_module, context, continuation)
        assert log_probability == pytest.approx(expected, abs=1e-4), (context, continuation)
        assert greedy == expected_greedy
    # The context is conditioned on, not scored: a longer context changes the score but adds no terms.
    assert found[0][0] != pytest.approx(lm.loglikelihood([request("loglikelihood", "2+7=", "19")])[0][0], abs=1e-6)


def test_greedy_flag_is_true_for_the_models_own_continuation(tiny_module):
    tokenizer = tiny_module.tokenizer
    ids = tokenizer("5+5=").input_ids
    for _ in range(3):  # the three tokens the model itself would write
        ids.append(int(next_token_log_probabilities(tiny_module, ids)[-1].argmax()))
    greedy_text = tokenizer.decode(ids[-3:])
    lm = LitMicroOptLM(module=tiny_module)
    [(_, greedy)] = lm.loglikelihood([request("loglikelihood", "5+5=", greedy_text)])
    assert greedy


def test_rolling_loglikelihood_is_the_sum_over_the_text(tiny_module):
    text = "What is 12+34? It is 46."
    tokens = tiny_module.tokenizer(text, add_special_tokens=False).input_ids
    full = [tiny_module.tokenizer.bos_token_id, *tokens]
    log_probabilities = next_token_log_probabilities(tiny_module, full)
    whole = sum(float(log_probabilities[position, full[position + 1]]) for position in range(len(tokens)))
    lm = LitMicroOptLM(module=tiny_module)
    assert lm.loglikelihood_rolling([request("loglikelihood_rolling", text)])[0] == pytest.approx(whole, abs=1e-4)


def test_rolling_windows_predict_each_token_once(tiny_module):
    text = "0123456789abcdefghij"  # 20 tokens in windows of 8: tokens 0-7, 8-15, then 16-19 after 8 of context
    tokens = tiny_module.tokenizer(text, add_special_tokens=False).input_ids
    full, window = [tiny_module.tokenizer.bos_token_id, *tokens], 8
    expected = 0.0
    for start, end in [(0, 8), (8, 16), (16, 20)]:  # tokens[start:end] read full[end - window : end]
        inputs = full[max(0, end - window) : end]
        log_probabilities = next_token_log_probabilities(tiny_module, inputs)
        predicted = log_probabilities[len(inputs) - (end - start) :]
        expected += sum(float(row[token]) for row, token in zip(predicted, tokens[start:end]))
    lm = LitMicroOptLM(module=tiny_module, max_length=window)
    found = lm.loglikelihood_rolling([request("loglikelihood_rolling", text), request("loglikelihood_rolling", "ab")])
    assert found[0] == pytest.approx(expected, abs=1e-4)
    assert found[1] == pytest.approx(direct_loglikelihood(tiny_module, "", "ab")[0], abs=1e-4)


def generate(lm: LitMicroOptLM, *prompts: str, **options) -> list[str]:
    return lm.generate_until([request("generate_until", prompt, options) for prompt in prompts])


def test_generation_is_greedy_and_cut_at_the_stop_strings(base_module):
    lm = LitMicroOptLM(module=base_module, batch_size=2)
    # The base model writes sums as equations: "12+7=19<eos>", "45+45=90<eos>", "7+8=15<eos>".
    assert generate(lm, "12+7=", "45+45=", "7+8=", until=["\n"], max_gen_toks=8) == ["19", "90", "15"]
    assert generate(lm, "12+7=", "45+45=", until=["9"], max_gen_toks=8) == ["1", ""]
    assert generate(lm, "12+7=", "7+8=", until=["5", "1"], max_gen_toks=8) == ["", ""]
    assert generate(lm, "12+7=", until=["\n"], max_gen_toks=1) == ["1"]


def test_a_batch_generates_what_each_prompt_generates_alone(base_module):
    prompts = ["1+1=", "What is 23+45?", "99+1=", "3+40="]  # prompts of different lengths, left-padded together
    alone = [generate(LitMicroOptLM(module=base_module, batch_size=1), prompt, until=["\n"], max_gen_toks=6)[0]
             for prompt in prompts]
    assert generate(LitMicroOptLM(module=base_module, batch_size=4), *prompts, until=["\n"], max_gen_toks=6) == alone


def test_stop_strings_end_each_row_of_a_batch():
    tokenizer = build_char_tokenizer()
    rows = torch.tensor([tokenizer("ab12\n3").input_ids, tokenizer("ab1234").input_ids])
    criterion = StopAtStrings(tokenizer, ["\n", ""], prompt_length=3)  # the rows generated "12\n3" and "1234"
    assert criterion(rows, scores=None).tolist() == [True, False]
    assert cut_at_stop("12\n3", ["\n"]) == "12" and cut_at_stop("1234", ["\n"]) == "1234"


def test_evaluation_gives_each_layer_its_mode_back(tiny_module):
    tiny_module.train()
    tiny_module.model.model.layers[0].eval()  # a frozen layer kept in eval mode by its owner
    modes = {name: layer.training for name, layer in tiny_module.named_modules()}
    lm = LitMicroOptLM(module=tiny_module)
    lm.loglikelihood([request("loglikelihood", "1+1=", "2")])
    generate(lm, "1+1=", until=["\n"], max_gen_toks=2)
    assert {name: layer.training for name, layer in tiny_module.named_modules()} == modes
    tiny_module.eval()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({}, "exactly one of checkpoint"),
        ({"batch_size": "auto"}, "batch_size must be a positive integer, got 'auto'"),
        ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
        ({"device": "meta"}, "device 'meta' differs from the module's 'cpu'"),
    ],
    ids=["no model", "automatic batch size", "empty batch", "other device"],
)
def test_bad_arguments_are_named(tiny_module, arguments, message):
    if arguments:
        arguments = {"module": tiny_module, **arguments}
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        LitMicroOptLM(**arguments)


def test_a_module_without_tokenizer_is_refused():
    with pytest.raises(ValueError, match="has no tokenizer"):
        LitMicroOptLM(module=CausalLM(config=TINY_LLAMA))


def test_a_generation_longer_than_the_model_reads_is_refused(tiny_module):
    lm = LitMicroOptLM(module=tiny_module)  # 64 positions (TINY_LLAMA's max_position_embeddings)
    with pytest.raises(ValueError, match="max_gen_toks 64 leaves no room for the prompt"):
        generate(lm, "1+1=", until=["\n"], max_gen_toks=64)


def test_few_shot_examples_and_limit_reach_the_model(base_module):
    import lm_eval

    from lit_microopt.eval.tasks import build_task_manager
    from tests.eval.conftest import TASKS

    results = lm_eval.simple_evaluate(
        model=LitMicroOptLM(module=base_module, batch_size=4, progress_bar=False), tasks=["lit_microopt_arithmetic"],
        task_manager=build_task_manager(["lit_microopt_arithmetic"], TASKS), num_fewshot=2, limit=3, log_samples=True,
        bootstrap_iters=0,
    )
    samples = results["samples"]["lit_microopt_arithmetic"]
    assert results["n-shot"]["lit_microopt_arithmetic"] == 2 and len(samples) == 3
    prompt, options = samples[0]["arguments"][0]
    assert prompt.count("What is ") == 3 and prompt.endswith("\nWhat is 63+11?")  # two solved examples, then ours
    assert options["until"] == ["\n"] and options["max_gen_toks"] == 8
    assert all("\n" not in sample["resps"][0][0] for sample in samples)

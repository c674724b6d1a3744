"""AdamMini: parity with adam-mini 1.1.1, closed forms, AdamW equality, state round trips, memory."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torch import nn

from lit_microopt.optim.adam_mini import AdamMini
from lit_microopt.optim.memory import state_bytes_per_parameter
from lit_microopt.optim.partition import BlockLayout
from tests.conftest import requires_cuda

transformers = pytest.importorskip("transformers")


def tiny_causal_lm(family: str = "llama", seed: int = 0, **overrides) -> nn.Module:
    """A Llama or Qwen2 causal LM with grouped-query attention, built from a config (nothing downloaded)."""
    config_class, model_class = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),  # q, k, v projections have biases
    }[family]
    settings = dict(
        vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=False,
    )
    settings.update(overrides)
    torch.manual_seed(seed)
    return model_class(config_class(**settings))


def tokens(step: int, batch: int = 2, length: int = 12, vocab: int = 96) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(1000 + step))


def backward(model: nn.Module, step: int) -> torch.Tensor:
    ids = tokens(step)
    loss = model(ids, labels=ids).loss
    loss.backward()
    return loss.detach()


def snapshot(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[list[torch.Tensor], list[dict]]:
    params = [p.detach().clone() for p in model.parameters()]
    states = [{k: v.clone() for k, v in optimizer.state[p].items()} for p in model.parameters()]
    return params, states


def assert_identical(first, second) -> None:
    """Same tensors, same dtypes, same bits (NaN-safe)."""
    if isinstance(first, torch.Tensor):
        assert first.dtype == second.dtype and first.shape == second.shape and first.device == second.device
        assert torch.equal(first.view(torch.uint8) if first.dim() else first, second.view(torch.uint8) if second.dim() else second)
    elif isinstance(first, dict):
        assert first.keys() == second.keys()
        for key in first:
            assert_identical(first[key], second[key])
    else:
        assert len(first) == len(second)
        for a, b in zip(first, second):
            assert_identical(a, b)


# -- parity with the reference implementation --------------------------------------------------------


def reference_adam_mini(model: nn.Module, **kwargs):
    adam_mini = pytest.importorskip("adam_mini")
    config = model.config
    return adam_mini.Adam_mini(
        model.named_parameters(), dim=config.hidden_size, n_heads=config.num_attention_heads,
        n_kv_heads=config.num_key_value_heads, verbose=False, **kwargs,
    )


def test_parity_with_adam_mini_training_llama():
    """Both optimizers train their own copy of a Llama model for 20 steps; parameters agree to 1e-6."""
    ours_model = tiny_causal_lm("llama")
    theirs_model = copy.deepcopy(ours_model)
    ours = AdamMini.from_model(ours_model, lr=1e-3, weight_decay=0.1)
    theirs = reference_adam_mini(theirs_model, lr=1e-3, weight_decay=0.1)
    for step in range(20):
        for model, optimizer in ((ours_model, ours), (theirs_model, theirs)):
            optimizer.zero_grad()
            backward(model, step)
            optimizer.step()
    for (name, ours_param), theirs_param in zip(ours_model.named_parameters(), theirs_model.parameters()):
        torch.testing.assert_close(ours_param, theirs_param, rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_parity_with_adam_mini_on_the_same_gradients(family):
    """Both optimizers take 20 steps on the same back-propagated gradients; parameters agree to 1e-6.

    Shared gradients, because Qwen2's key bias has an exactly-zero true gradient (softmax ignores a constant
    added to every key): Adam normalises its rounding noise into +-lr steps, so two separately trained copies
    drift apart by far more than 1e-6 whatever the optimizer.
    """
    ours_model = tiny_causal_lm(family)
    theirs_model = copy.deepcopy(ours_model)
    ours = AdamMini.from_model(ours_model, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    theirs = reference_adam_mini(theirs_model, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    assert any(layout.role == "element" for layout in ours.partition.values()) == (family == "qwen2")
    for step in range(20):
        ours.zero_grad()
        backward(ours_model, step)
        for ours_param, theirs_param in zip(ours_model.parameters(), theirs_model.parameters()):
            theirs_param.grad = ours_param.grad.clone()
        ours.step()
        theirs.step()
    for (name, ours_param), theirs_param in zip(ours_model.named_parameters(), theirs_model.parameters()):
        torch.testing.assert_close(ours_param, theirs_param, rtol=0, atol=1e-6, msg=name)


# -- closed forms ------------------------------------------------------------------------------------------


def block_ids(layout: BlockLayout, shape: torch.Size) -> torch.Tensor:
    """The block of every element, built row by row (the oracle of the vectorised block reductions)."""
    row_block, first = [], 0
    for rows, height in zip(layout.segment_rows, layout.rows_per_block):
        row_block += [first + row // height for row in range(rows)]
        first += rows // height
    ids = torch.tensor(row_block, dtype=torch.int64)
    per_row = math.prod(shape) // layout.n_rows
    ids = ids.view(-1, 1).expand(-1, per_row) if layout.block_axis == 0 else ids.view(1, -1).expand(per_row, -1)
    return ids.reshape(shape)


def block_rms(grad: torch.Tensor, layout: BlockLayout) -> torch.Tensor:
    """rms over its block, for every element of ``grad`` (float64)."""
    ids = block_ids(layout, grad.shape).flatten()
    squares = grad.double().flatten().square()
    sums = torch.zeros(layout.n_blocks, dtype=torch.float64).index_add_(0, ids, squares)
    counts = torch.zeros(layout.n_blocks, dtype=torch.float64).index_add_(0, ids, torch.ones_like(squares))
    return (sums / counts).sqrt()[ids].view(grad.shape)


FIRST_STEP_TOLERANCE = {torch.float32: 1e-6, torch.bfloat16: 8e-3, torch.float16: 1e-3}


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_first_step_is_lr_times_g_over_block_rms(family, dtype):
    if family == "gpt2":
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
            vocab_size=50, n_positions=16, n_embd=32, n_layer=1, n_head=4, bos_token_id=0, eos_token_id=0))
    else:
        model = tiny_causal_lm("qwen2", num_hidden_layers=1)
    model.to(dtype)
    lr, eps = 1e-3, 1e-8
    optimizer = AdamMini.from_model(model, lr=lr, eps=eps, weight_decay=0.5)
    generator = torch.Generator().manual_seed(0)
    before = {}
    for name, param in model.named_parameters():
        param.grad = (torch.randn(param.shape, generator=generator) * 1e-2).to(dtype)
        before[name] = param.detach().double().clone()
    optimizer.step()
    for name, param in model.named_parameters():
        layout = optimizer.partition[name]
        grad = param.grad.double()
        decay = 1 - lr * 0.5 if layout.weight_decay else 1.0
        # The decayed parameter is rounded to the parameter's dtype before the update is added.
        decayed = (before[name] * decay).to(dtype).double()
        # m = (1 - beta1) g is stored in the parameter's dtype (float16 rounds tiny values to subnormals):
        # the update reads the stored m, so the closed form does too.
        moment = optimizer.state[param]["exp_avg"].double()
        info = torch.finfo(dtype)
        torch.testing.assert_close(moment, 0.1 * grad, rtol=info.eps, atol=info.smallest_normal * info.eps)
        expected = decayed - lr * (moment / 0.1) / (block_rms(grad, layout) + eps)
        # A few roundings of the parameter and of the update: tolerance relative to both magnitudes.
        scale = before[name].abs() + (expected - decayed).abs()
        assert ((param.double() - expected).abs() <= FIRST_STEP_TOLERANCE[dtype] * scale).all(), name
        assert optimizer.state[param]["exp_avg"].dtype == dtype
        assert optimizer.state[param]["exp_avg_sq"].dtype == torch.float32


@pytest.mark.parametrize("foreach", [False, True])
def test_element_role_and_one_element_blocks_equal_adamw_bit_for_bit(foreach):
    torch.manual_seed(0)
    model = nn.ModuleDict({"narrow": nn.Linear(1, 6), "wide": nn.Linear(5, 4)})  # narrow.weight is [6, 1]
    model.register_parameter("scale", nn.Parameter(torch.tensor(0.7)))
    model.register_parameter("gain", nn.Parameter(torch.ones(1)))
    adamw_model = copy.deepcopy(model)
    hyper = dict(lr=1e-2, betas=(0.8, 0.95), eps=1e-6)
    ours = AdamMini(model.named_parameters(), weight_decay=0.1, rules=[("wide.weight", "element")], **hyper)
    roles = {name: (layout.role, layout.n_blocks) for name, layout in ours.partition.items()}
    assert roles == {"narrow.weight": ("row", 6), "narrow.bias": ("element", 6), "wide.weight": ("element", 20),
                     "wide.bias": ("element", 4), "scale": ("tensor", 1), "gain": ("tensor", 1)}
    named = dict(adamw_model.named_parameters())
    adamw = torch.optim.AdamW(
        [{"params": [named["narrow.weight"]], "weight_decay": 0.1},  # row role: decayed
         {"params": [p for n, p in named.items() if n != "narrow.weight"], "weight_decay": 0.0}],
        foreach=foreach, **hyper,
    )
    generator = torch.Generator().manual_seed(1)
    for _ in range(10):
        for param, twin in zip(model.parameters(), adamw_model.parameters()):
            param.grad = torch.randn(param.shape, generator=generator)
            twin.grad = param.grad.clone()
        ours.step()
        adamw.step()
    for (name, param), twin in zip(model.named_parameters(), adamw_model.parameters()):
        assert torch.equal(param, twin), name
        assert torch.equal(ours.state[param]["exp_avg"], adamw.state[twin]["exp_avg"]), name
        assert torch.equal(ours.state[param]["exp_avg_sq"], adamw.state[twin]["exp_avg_sq"].view(-1)), name


# -- the step: groups, step counts, effective learning rates ---------------------------------------------


def test_per_group_hyperparameters_and_momentum_cycling():
    model = nn.ModuleDict({"a": nn.Linear(4, 4), "b": nn.Linear(4, 4)})
    optimizer = AdamMini([
        {"params": list(model["a"].named_parameters(prefix="a")), "lr": 0.0},
        {"params": list(model["b"].named_parameters(prefix="b")), "betas": (0.5, 0.9), "weight_decay": 0.1},
    ], lr=1e-2)
    assert len(optimizer.param_groups) == 2
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[0.0, 1e-2], total_steps=10)
    frozen = [p.detach().clone() for p in model["a"].parameters()]
    moving = [p.detach().clone() for p in model["b"].parameters()]
    for _ in range(3):
        model["b"](model["a"](torch.randn(2, 4))).square().sum().backward()
        optimizer.step()
        scheduler.step()
    assert all(torch.equal(p, q) for p, q in zip(model["a"].parameters(), frozen))
    assert not any(torch.equal(p, q) for p, q in zip(model["b"].parameters(), moving))
    assert optimizer.param_groups[1]["betas"][0] != 0.5  # OneCycleLR cycles beta1 through the "betas" key


def test_step_counts_advance_only_with_a_gradient():
    model = nn.ModuleDict({"used": nn.Linear(4, 4), "unused": nn.Linear(4, 4)})
    optimizer = AdamMini(model.named_parameters())
    for _ in range(3):
        optimizer.zero_grad()
        model["used"](torch.randn(2, 4)).sum().backward()
        optimizer.step()
    model["unused"](torch.randn(2, 4)).sum().backward()
    optimizer.step()
    step = optimizer.state[model["used"].weight]["step"]
    assert step.dtype == torch.int64 and step.device.type == "cpu" and step.dim() == 0
    assert int(step) == 4 and int(optimizer.state[model["unused"].weight]["step"]) == 1


def test_closure_returns_the_loss():
    model = nn.Linear(4, 1)
    optimizer = AdamMini(model.named_parameters())

    def closure():
        optimizer.zero_grad()
        loss = model(torch.ones(1, 4)).square().sum()
        loss.backward()
        return loss

    assert isinstance(optimizer.step(closure), torch.Tensor)


def test_effective_learning_rates_are_the_factor_on_m():
    model = tiny_causal_lm("llama", num_hidden_layers=1)
    optimizer = AdamMini.from_model(model, lr=1e-3, betas=(0.9, 0.99))
    assert optimizer.effective_learning_rates() == {}
    for step in range(3):
        optimizer.zero_grad()
        backward(model, step)
        before = {name: p.detach().clone() for name, p in model.named_parameters()}
        optimizer.step()
    rates = optimizer.effective_learning_rates()
    assert rates.keys() == optimizer.partition.keys()
    for name, param in model.named_parameters():
        layout = optimizer.partition[name]
        assert rates[name].shape == (layout.n_blocks,) and rates[name].dtype == torch.float32
        # p_t - p_{t-1} = -rate_b * m_t (no weight decay here)
        per_element = rates[name][block_ids(layout, param.shape)]
        expected = before[name] - per_element * optimizer.state[param]["exp_avg"]
        torch.testing.assert_close(param, expected, rtol=1e-6, atol=1e-9, msg=name)
    state = optimizer.state[model.model.norm.weight]
    manual = 1e-3 / (1 - 0.9**3) / ((state["exp_avg_sq"] / (1 - 0.99**3)).sqrt() + 1e-8)
    torch.testing.assert_close(rates["model.norm.weight"], manual)


# -- non-finite gradients, saving and loading -------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("where", ["model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.bias"])
@pytest.mark.parametrize("after_steps", [0, 2])
def test_non_finite_gradients_change_nothing(bad, where, after_steps):
    model = tiny_causal_lm("qwen2", num_hidden_layers=1)
    optimizer = AdamMini.from_model(model, lr=1e-3, weight_decay=0.1, state_dtype=torch.bfloat16)
    for step in range(after_steps):
        optimizer.zero_grad()
        backward(model, step)
        optimizer.step()
    optimizer.zero_grad()
    backward(model, after_steps)
    dict(model.named_parameters())[where].grad.view(-1)[3] = bad
    params, states = snapshot(model, optimizer)
    with pytest.raises(FloatingPointError, match=where.replace(".", r"\.") + r"; nothing was updated"):
        optimizer.step()
    assert_identical(snapshot(model, optimizer), (params, states))


def test_huge_finite_gradients_are_not_reported_and_check_can_be_disabled():
    model = nn.Linear(4, 4)
    optimizer = AdamMini(model.named_parameters())
    model.weight.grad = torch.full((4, 4), 1e30)  # its squares overflow float32, it is still finite
    model.bias.grad = torch.ones(4)
    optimizer.step()
    assert torch.isfinite(model.weight).all()
    unchecked = AdamMini(model.named_parameters(), check_finite=False)
    model.weight.grad = torch.full((4, 4), float("nan"))
    unchecked.step()
    assert torch.isnan(model.weight).all()


@pytest.mark.parametrize("state_dtype", [None, torch.bfloat16])
def test_save_reload_continue_is_bit_identical(state_dtype):
    def train(model, optimizer, steps):
        for step in steps:
            optimizer.zero_grad()
            backward(model, step)
            optimizer.step()

    kwargs = dict(lr=3e-3, weight_decay=0.1, state_dtype=state_dtype)
    uninterrupted = tiny_causal_lm("qwen2")
    optimizer = AdamMini.from_model(uninterrupted, **kwargs)
    train(uninterrupted, optimizer, range(6))

    first_half = tiny_causal_lm("qwen2")
    first_optimizer = AdamMini.from_model(first_half, **kwargs)
    train(first_half, first_optimizer, range(3))
    buffer = io.BytesIO()
    torch.save({"model": first_half.state_dict(), "optimizer": first_optimizer.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)

    resumed = tiny_causal_lm("qwen2", seed=123)  # other initial values: everything must come from the checkpoint
    resumed.load_state_dict(checkpoint["model"])
    resumed_optimizer = AdamMini.from_model(resumed, **kwargs)
    resumed_optimizer.load_state_dict(checkpoint["optimizer"])
    for param in resumed.parameters():
        state = resumed_optimizer.state[param]
        assert state["exp_avg"].dtype == (state_dtype or torch.float32)
        assert state["step"].device.type == "cpu" and state["step"].dtype == torch.int64
        assert ("rounding_seed" in state) == (state_dtype is not None)
    train(resumed, resumed_optimizer, range(3, 6))

    assert_identical(snapshot(resumed, resumed_optimizer), snapshot(uninterrupted, optimizer))


def _mixed_model(kind: str, seed: int = 0) -> nn.Module:
    if kind == "qwen2":  # heads, rows, norm scales, and biases (element blocks, stepped one by one)
        return tiny_causal_lm("qwen2", seed=seed)
    torch.manual_seed(seed)  # a fused [q; k; v] weight of three segments, biases, norms
    return nn.TransformerEncoderLayer(d_model=32, nhead=4, dim_feedforward=48, dropout=0.0)


def _mixed_backward(model: nn.Module, step: int) -> None:
    if isinstance(model, nn.TransformerEncoderLayer):
        generator = torch.Generator().manual_seed(2000 + step)
        inputs = torch.randn(5, 2, 32, generator=generator).to(model.linear1.weight.dtype)
        model(inputs).square().mean().backward()
    else:
        backward(model, step)


@pytest.mark.parametrize("kind", ["qwen2", "fused-qkv"])
@pytest.mark.parametrize(
    "settings", [dict(), dict(state_dtype=torch.bfloat16), dict(dtype=torch.bfloat16, param_rounding="stochastic")],
    ids=["float32", "m-bf16", "bf16-stochastic"],
)
def test_multi_tensor_path_equals_the_per_tensor_path_through_a_checkpoint(kind, settings, monkeypatch):
    """The step batched into one op call per param group and step count gives the per-tensor path's bits, parameters
    and every state tensor, over steps where one parameter skips a step (two step counts, two calls), through a
    save, a reload and more steps."""
    settings = dict(settings)
    dtype = settings.pop("dtype", torch.float32)
    calls = []
    from lit_microopt.optim import adam_mini as adam_mini_module

    counted = adam_mini_module.multi_adam_mini_update_
    monkeypatch.setattr(adam_mini_module, "multi_adam_mini_update_",
                        lambda *a, **k: (calls.append(len(a[1])), counted(*a, **k)))

    def build(multi_tensor: bool, seed: int = 0):
        model = _mixed_model(kind, seed).to(dtype)
        named = list(model.named_parameters())
        groups = [{"params": named[: len(named) // 2]}, {"params": named[len(named) // 2 :], "lr": 2e-3}]
        optimizer = AdamMini(groups, lr=3e-3, weight_decay=0.1, n_heads=4, modules=dict(model.named_modules()),
                             **settings)
        optimizer._multi_tensor = multi_tensor
        return model, optimizer

    def train(model, optimizer, steps):
        for step in steps:
            optimizer.zero_grad()
            _mixed_backward(model, step)
            if step == 1:
                next(model.parameters()).grad = None  # this parameter's step count falls behind the others'
            optimizer.step()

    batched_model, batched = build(True)
    train(batched_model, batched, range(6))
    assert calls and max(calls) > 1  # tensors were batched: one call for several of them
    assert len(calls) <= 6 * 4  # at most one call per group and step count, whatever the number of tensors

    model, per_tensor = build(False)
    train(model, per_tensor, range(3))
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": per_tensor.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    calls.clear()
    resumed_model, resumed = build(True, seed=123)
    resumed_model.load_state_dict(checkpoint["model"])
    resumed.load_state_dict(checkpoint["optimizer"])
    train(resumed_model, resumed, range(3, 6))
    assert calls
    assert_identical(snapshot(resumed_model, resumed), snapshot(batched_model, batched))
    train(model, per_tensor, range(3, 6))
    assert_identical(snapshot(model, per_tensor), snapshot(batched_model, batched))


def trained_state(**kwargs) -> dict:
    model = nn.ModuleDict({"q_proj": nn.Linear(8, 8), "norm": nn.LayerNorm(8)})
    optimizer = AdamMini(model.named_parameters(), **kwargs)
    model["norm"](model["q_proj"](torch.randn(2, 8))).sum().backward()
    optimizer.step()
    return optimizer.state_dict()


@pytest.mark.parametrize(
    ("saved", "loading", "pattern"),
    [
        (dict(n_heads=4), dict(n_heads=2), r"saved exp_avg_sq of q_proj.weight is torch.float32 \(4,\).*\(2,\).*n_heads"),
        pytest.param(dict(n_heads=4), dict(n_heads=4, rules=[("q_proj.weight", "row")]), r"exp_avg_sq of q_proj.weight",
                     # the rule leaves no head blocks, which AdamMini rightly warns about
                     marks=pytest.mark.filterwarnings("ignore:AdamMini. n_heads=4 was given")),
        (dict(n_heads=4), dict(n_heads=4, state_dtype=torch.bfloat16), r"state of q_proj.weight has entries"),
        (dict(n_heads=4, state_dtype=torch.float16), dict(n_heads=4), r"state of q_proj.weight has entries"),
        (dict(n_heads=4, state_dtype=torch.float32), dict(n_heads=4, state_dtype=torch.bfloat16),
         r"state of q_proj.weight has entries"),
        (dict(n_heads=4, state_dtype=torch.float16), dict(n_heads=4, state_dtype=torch.bfloat16),
         r"saved exp_avg of q_proj.weight is torch.float16 \(8, 8\), but this optimizer needs torch.bfloat16"),
    ],
)
def test_a_state_dict_from_a_different_config_is_refused(saved, loading, pattern):
    state_dict = trained_state(**saved)
    model = nn.ModuleDict({"q_proj": nn.Linear(8, 8), "norm": nn.LayerNorm(8)})
    optimizer = AdamMini(model.named_parameters(), **loading)
    with pytest.raises(ValueError, match=pattern):
        optimizer.load_state_dict(state_dict)
    assert not optimizer.state  # nothing was loaded


def test_a_state_dict_for_other_shapes_is_refused():
    state_dict = trained_state(n_heads=4)
    model = nn.ModuleDict({"q_proj": nn.Linear(8, 16), "norm": nn.LayerNorm(16)})
    with pytest.raises(ValueError, match=r"saved exp_avg of q_proj.weight is torch.float32 \(8, 8\)"):
        AdamMini(model.named_parameters(), n_heads=4).load_state_dict(state_dict)


# -- narrow state and memory ------------------------------------------------------------------------------


def test_bfloat16_state_trains_within_margin_of_float32():
    """A tiny Llama memorises a batch for 40 steps: the final loss with bfloat16 ``m`` is within 5% of float32's."""
    torch.manual_seed(0)
    base = tiny_causal_lm("llama", vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1)
    data = torch.randint(0, 64, (8, 16), generator=torch.Generator().manual_seed(0))
    losses = {}
    for state_dtype in (None, torch.bfloat16):
        model = copy.deepcopy(base)
        optimizer = AdamMini.from_model(model, lr=1e-2, state_dtype=state_dtype)
        for _ in range(40):
            optimizer.zero_grad()
            loss = model(data, labels=data).loss
            loss.backward()
            optimizer.step()
        losses[state_dtype] = loss.item()
        first = {p.dtype for p in model.parameters()}, {optimizer.state[p]["exp_avg"].dtype for p in model.parameters()}
        assert first == ({torch.float32}, {state_dtype or torch.float32})
    assert losses[None] < 0.5 * math.log(64)  # it did learn
    assert abs(losses[torch.bfloat16] - losses[None]) <= 0.05 * losses[None]


@pytest.mark.parametrize(("state_dtype", "bound"), [(None, 4.01), (torch.bfloat16, 2.01)])
def test_state_bytes_per_parameter(state_dtype, bound):
    model = tiny_causal_lm("llama", vocab_size=512, hidden_size=512, intermediate_size=1376, num_hidden_layers=1,
                           num_attention_heads=8, num_key_value_heads=4)
    optimizer = AdamMini.from_model(model, state_dtype=state_dtype)
    for param in model.parameters():
        param.grad = torch.full_like(param, 1e-3)
    optimizer.step()
    assert bound - 0.01 < state_bytes_per_parameter(optimizer) <= bound


# -- CUDA -----------------------------------------------------------------------------------------------------


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("state_dtype", [None, torch.bfloat16])
def test_cuda_matches_cpu(state_dtype):
    cpu_model = tiny_causal_lm("qwen2")
    cuda_model = copy.deepcopy(cpu_model).cuda()
    cpu_optimizer = AdamMini.from_model(cpu_model, lr=1e-3, weight_decay=0.1, state_dtype=state_dtype)
    cuda_optimizer = AdamMini.from_model(cuda_model, lr=1e-3, weight_decay=0.1, state_dtype=state_dtype)
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        for cpu_param, cuda_param in zip(cpu_model.parameters(), cuda_model.parameters()):
            cpu_param.grad = torch.randn(cpu_param.shape, generator=generator) * 1e-2
            cuda_param.grad = cpu_param.grad.cuda()
        cpu_optimizer.step()
        cuda_optimizer.step()
    for (name, cpu_param), cuda_param in zip(cpu_model.named_parameters(), cuda_model.parameters()):
        torch.testing.assert_close(cuda_param.cpu(), cpu_param, rtol=0, atol=1e-6, msg=name)
        assert cuda_optimizer.state[cuda_param]["step"].device.type == "cpu"


@pytest.mark.cuda
@requires_cuda
def test_cuda_non_finite_gradient_changes_nothing():
    model = tiny_causal_lm("qwen2", num_hidden_layers=1).cuda()
    optimizer = AdamMini.from_model(model, lr=1e-3, state_dtype=torch.bfloat16)
    for param in model.parameters():
        param.grad = torch.ones_like(param)
    optimizer.step()
    model.model.layers[0].self_attn.v_proj.weight.grad[1, 2] = float("nan")
    params, states = snapshot(model, optimizer)
    with pytest.raises(FloatingPointError, match=r"v_proj\.weight"):
        optimizer.step()
    assert_identical(snapshot(model, optimizer), (params, states))

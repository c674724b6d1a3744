"""MicroAdam: the consequences of docs/microadam.md, state layout, saving and loading, bad inputs, telemetry, training."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch

from lit_microopt import MicroAdam
from lit_microopt.optim.memory import state_bytes_per_parameter


def clone_state(optimizer: torch.optim.Optimizer) -> dict:
    return {id(p): {k: v.clone() for k, v in s.items()} for p, s in optimizer.state.items()}


def assert_same_state(before: dict, optimizer: torch.optim.Optimizer) -> None:
    after = clone_state(optimizer)
    assert before.keys() == after.keys()
    for key in before:
        for name, value in before[key].items():
            assert value.dtype == after[key][name].dtype
            assert torch.equal(value, after[key][name]), name


# -- the consequences of docs/microadam.md ----------------------------------------------------------------------


@pytest.mark.parametrize("ef_rounding", ["nearest", "stochastic"])
def test_one_element_sequence(device, ef_rounding):
    """Constant gradient 1, lr 1, eps 0: 1.0 up to t=10, then 0.995, 1.046 at t=20 and 2.014 at t=100."""
    param = torch.nn.Parameter(torch.zeros(1, device=device))
    optimizer = MicroAdam([param], lr=1.0, eps=0.0, ef_rounding=ef_rounding)
    changes = {}
    for t in range(1, 101):
        before = param.detach().clone()
        param.grad = torch.ones(1, device=device)
        optimizer.step()
        changes[t] = float(before - param.detach())
        assert int(optimizer.state[param]["error_feedback"][0]) == 0  # 1.0 is exact in bfloat16
    assert all(changes[t] == pytest.approx(1.0, abs=1e-6) for t in range(1, 11))
    assert changes[11] == pytest.approx(0.995, abs=5e-4)
    assert changes[20] == pytest.approx(1.046, abs=5e-4)
    assert changes[100] == pytest.approx(2.014, abs=5e-4)


def test_equals_adamw_with_full_density_and_long_window(device, dtype):
    """Up to the bf16 rounding of the window (avoided here with bf16-exact gradients) and the rounding of the
    parameters to their dtype, MicroAdam with density 1 and m >= steps is AdamW. AdamW runs in float32 on a
    float32 copy that is reset to our parameters before each step, so that rounding does not accumulate."""
    torch.manual_seed(0)
    shapes = [(1,), (37,), (100, 33), (2 * 1024 + 5,)]
    ours = [torch.nn.Parameter(torch.randn(s, device=device, dtype=dtype)) for s in shapes]
    theirs = [torch.nn.Parameter(p.detach().float()) for p in ours]
    steps = 15
    micro = MicroAdam(ours, lr=1e-2, density=1.0, m=steps, weight_decay=0.1, block_size=1024)
    adamw = torch.optim.AdamW(theirs, lr=1e-2, weight_decay=0.1)
    # Low precision: the decayed and the updated parameter are each rounded once to the dtype (half an ulp
    # of the old and of the new value); float32: arithmetic order only.
    half_ulp = {torch.float32: 1e-6, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}[dtype]
    for _ in range(steps):
        for a, b in zip(ours, theirs):
            gradient = torch.randn(a.shape, device=device).to(torch.bfloat16).to(dtype)
            a.grad, b.grad = gradient.clone(), gradient.float()
            b.data.copy_(a.detach().float())
        old = [b.detach().clone() for b in theirs]
        micro.step()
        adamw.step()
        for a, b, before in zip(ours, theirs, old):
            bound = half_ulp * (before.abs() + b.detach().abs()) * 1.01 + 1e-7
            assert torch.all((a.float() - b.detach()).abs() <= bound)


def test_error_feedback_within_half_a_step():
    from lit_microopt import ops

    torch.manual_seed(1)
    param = torch.nn.Parameter(torch.zeros(1000))
    optimizer = MicroAdam([param], density=0.05, block_size=256, quant_bucket_size=64)
    gradient = torch.randn(1000)
    param.grad = gradient.clone()
    optimizer.step()
    state = optimizer.state[param]
    # At the first step a = g (the error feedback starts at zero); the kept entries leave their bf16 rounding.
    kept = ops.window_positions(state["window_indices"][0], optimizer.layout(1000, optimizer.param_groups[0]))
    remainder = gradient.clone()
    remainder[kept] = gradient[kept] - gradient[kept].to(torch.bfloat16).float()
    decoded = ops.dequantize(state["error_feedback"], state["bucket_min"], state["bucket_max"], 64, 0, 1000)
    unit = (state["bucket_max"].float() - state["bucket_min"].float()) / 15
    half_unit = unit.repeat_interleave(64)[:1000] / 2
    assert torch.all((decoded - remainder).abs() <= half_unit * (1 + 1e-6))
    buckets = torch.nn.functional.pad(remainder, (0, 24), value=float(remainder[-1])).view(16, 64)
    assert torch.all(state["bucket_min"].float() <= buckets.amin(1))
    assert torch.all(state["bucket_max"].float() >= buckets.amax(1))
    assert state["bucket_min"].dtype == torch.bfloat16


# -- state layout ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "numel", [1, 7, 63, 64, 65, 127, 128, 129, 255, 256, 257, 1001], ids=lambda n: f"numel{n}"
)
def test_state_shapes_and_dtypes(device, numel):
    block_size, bucket_size, density, m = 128, 64, 0.1, 3
    param = torch.nn.Parameter(torch.zeros(numel, device=device))
    optimizer = MicroAdam([param], m=m, density=density, block_size=block_size, quant_bucket_size=bucket_size)
    param.grad = torch.randn(numel, device=device)
    optimizer.step()
    state = optimizer.state[param]
    full, last = divmod(numel, block_size)
    k = full * math.ceil(block_size * density) + (math.ceil(last * density) if last else 0)
    expected = {
        "step": ((), torch.int64, "cpu"),
        "rounding_seed": ((), torch.int64, "cpu"),
        "window_indices": ((m, k), torch.int16, device),
        "window_values": ((m, k), torch.bfloat16, device),
        "error_feedback": ((math.ceil(numel / 2),), torch.uint8, device),
        "bucket_min": ((math.ceil(numel / bucket_size),), torch.bfloat16, device),
        "bucket_max": ((math.ceil(numel / bucket_size),), torch.bfloat16, device),
    }
    assert set(state) == set(expected)
    for key, (shape, dtype, where) in expected.items():
        assert tuple(state[key].shape) == shape, key
        assert state[key].dtype == dtype, key
        assert state[key].device.type == where, key


def test_zero_size_parameters_are_skipped():
    empty = torch.nn.Parameter(torch.zeros(0, 5))
    other = torch.nn.Parameter(torch.zeros(3))
    optimizer = MicroAdam([empty, other])
    empty.grad, other.grad = torch.zeros(0, 5), torch.ones(3)
    optimizer.step()
    assert empty not in optimizer.state
    assert int(optimizer.state[other]["step"]) == 1


def test_parameters_without_gradient_are_skipped():
    used, unused = torch.nn.Parameter(torch.zeros(4)), torch.nn.Parameter(torch.ones(4))
    optimizer = MicroAdam([used, unused])
    used.grad = torch.ones(4)
    optimizer.step()
    used.grad = torch.ones(4)
    unused.grad = torch.ones(4)
    optimizer.step()
    assert int(optimizer.state[used]["step"]) == 2
    assert int(optimizer.state[unused]["step"]) == 1


def test_memory_matches_the_formula():
    model = torch.nn.Sequential(torch.nn.Linear(1024, 2048), torch.nn.Linear(2048, 1024))  # ~4.2M parameters
    for bucket_size, expected in [(64, 0.9625), (100_000, 0.90)]:
        optimizer = MicroAdam(model.parameters(), quant_bucket_size=bucket_size)
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        optimizer.step()
        assert state_bytes_per_parameter(optimizer) == pytest.approx(expected, rel=0.02)
        assert optimizer.bytes_per_element() == pytest.approx(expected, rel=1e-3)


def test_non_contiguous_parameter_and_gradient():
    base = torch.randn(64, 32)
    param = torch.nn.Parameter(base.t())  # a non-contiguous parameter
    reference = torch.nn.Parameter(base.t().contiguous())
    ours, theirs = MicroAdam([param], density=0.5, block_size=16), MicroAdam([reference], density=0.5, block_size=16)
    for _ in range(3):
        gradient = torch.randn(32, 64)
        param.grad = gradient.t().contiguous().t()  # the values of `gradient`, strided
        reference.grad = gradient.clone()
        assert not param.grad.is_contiguous()
        ours.step()
        theirs.step()
    torch.testing.assert_close(param.detach(), reference.detach(), rtol=0, atol=0)


# -- saving, loading, continuing -------------------------------------------------------------------------


def _train(model, optimizer, steps, seed):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        inputs = torch.randn(16, 20, generator=generator)
        targets = torch.randn(16, 4, generator=generator)
        loss = torch.nn.functional.mse_loss(model(inputs.to(model[0].weight.dtype)).float(), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@pytest.mark.parametrize("ef_rounding", ["nearest", "stochastic"])
def test_save_reload_continue_is_bit_identical(dtype, ef_rounding):
    torch.manual_seed(0)
    kwargs = dict(lr=1e-2, m=3, density=0.2, block_size=32, quant_bucket_size=16, ef_rounding=ef_rounding,
                  weight_decay=0.01)

    def make():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(20, 30), torch.nn.Tanh(), torch.nn.Linear(30, 4)).to(dtype)

    uninterrupted = make()
    optimizer = MicroAdam(uninterrupted.named_parameters(), **kwargs)
    _train(uninterrupted, optimizer, 5, seed=1)
    _train(uninterrupted, optimizer, 5, seed=2)

    interrupted = make()
    first = MicroAdam(interrupted.named_parameters(), **kwargs)
    _train(interrupted, first, 5, seed=1)
    buffer = io.BytesIO()
    torch.save({"model": interrupted.state_dict(), "optimizer": first.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    resumed = make()
    resumed.load_state_dict(saved["model"])
    second = MicroAdam(resumed.named_parameters(), **kwargs)
    second.load_state_dict(saved["optimizer"])
    for param in resumed.parameters():
        for key, value in second.state[param].items():
            assert value.dtype == first.state[dict(zip(resumed.parameters(), interrupted.parameters()))[param]][key].dtype
    _train(resumed, second, 5, seed=2)
    for a, b in zip(uninterrupted.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_load_keeps_integer_and_bfloat16_state_dtypes_for_half_parameters():
    param = torch.nn.Parameter(torch.randn(100, dtype=torch.float16))
    optimizer = MicroAdam([param], density=0.1, block_size=50)
    param.grad = torch.randn(100, dtype=torch.float16) * 1e3
    optimizer.step()
    saved = copy.deepcopy(optimizer.state_dict())
    fresh = MicroAdam([param], density=0.1, block_size=50)
    fresh.load_state_dict(saved)
    for key, value in optimizer.state[param].items():
        assert fresh.state[param][key].dtype == value.dtype
        assert torch.equal(fresh.state[param][key], value)


@pytest.mark.parametrize(
    "change, message",
    [(dict(m=5), "m=3"), (dict(density=0.5), "density=0.2"), (dict(block_size=64), "block_size=32"),
     (dict(quant_bucket_size=8), "quant_bucket_size=16")],
)
def test_loading_a_differently_configured_state_raises(change, message):
    kwargs = dict(m=3, density=0.2, block_size=32, quant_bucket_size=16)
    param = torch.nn.Parameter(torch.randn(100))
    optimizer = MicroAdam([param], **kwargs)
    param.grad = torch.randn(100)
    optimizer.step()
    other = MicroAdam([torch.nn.Parameter(torch.randn(100))], **{**kwargs, **change})
    with pytest.raises(ValueError, match=message):
        other.load_state_dict(optimizer.state_dict())
    assert not other.state


def test_loading_state_of_another_shape_names_the_parameter():
    model = torch.nn.Linear(10, 10)
    optimizer = MicroAdam(model.named_parameters(), block_size=16, density=0.5)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    optimizer.step()
    other_model = torch.nn.Linear(10, 12)
    other = MicroAdam(other_model.named_parameters(), block_size=16, density=0.5)
    with pytest.raises(ValueError, match="weight"):
        other.load_state_dict(optimizer.state_dict())


# -- bad inputs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(lr=-1.0), "lr"), (dict(betas=(1.0, 0.999)), r"betas\[0\]"), (dict(betas=(0.9, -0.1)), r"betas\[1\]"),
        (dict(betas=(0.9,)), "betas"), (dict(eps=-1e-8), "eps"), (dict(weight_decay=-0.1), "weight_decay"),
        (dict(m=0), "m"), (dict(m=2.5), "m"), (dict(density=0.0), "density"), (dict(density=1.5), "density"),
        (dict(block_size=0), "block_size"), (dict(block_size=32769), "block_size"),
        (dict(quant_bucket_size=1), "quant_bucket_size"), (dict(quant_bucket_size=63), "quant_bucket_size"),
        (dict(ef_rounding="up"), "ef_rounding"),
    ],
)
def test_invalid_arguments_raise_value_error(kwargs, name):
    with pytest.raises(ValueError, match=name):
        MicroAdam([torch.nn.Parameter(torch.zeros(3))], **kwargs)


def test_invalid_param_group_value_is_rejected():
    optimizer = MicroAdam([torch.nn.Parameter(torch.zeros(3))])
    with pytest.raises(ValueError, match="density in param group 1"):
        optimizer.add_param_group({"params": [torch.nn.Parameter(torch.zeros(3))], "density": 2.0})
    assert len(optimizer.param_groups) == 1


def test_unsupported_dtype_sparse_and_complex_raise_type_error():
    with pytest.raises(TypeError, match="float64"):
        MicroAdam([torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))])
    param = torch.nn.Parameter(torch.zeros(4, 2))
    optimizer = MicroAdam([param])
    param.grad = torch.sparse_coo_tensor([[0]], torch.ones(1, 2), (4, 2), check_invariants=True)
    with pytest.raises(TypeError, match="sparse"):
        optimizer.step()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_gradient_changes_nothing(device, bad):
    model = torch.nn.Linear(8, 8).to(device)
    optimizer = MicroAdam(model.named_parameters(), density=0.5, block_size=16)
    for _ in range(2):
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        optimizer.step()
    params_before = [p.detach().clone() for p in model.parameters()]
    state_before = clone_state(optimizer)
    model.weight.grad = torch.randn_like(model.weight)
    model.weight.grad[3, 4] = bad
    model.bias.grad = torch.randn_like(model.bias)
    with pytest.raises(FloatingPointError, match="weight"):
        optimizer.step()
    for before, after in zip(params_before, model.parameters()):
        assert torch.equal(before, after)
    assert_same_state(state_before, optimizer)


# -- schedulers, telemetry -------------------------------------------------------------------------------


def test_one_cycle_scheduler_cycles_lr_and_betas():
    param = torch.nn.Parameter(torch.zeros(10))
    optimizer = MicroAdam([param], lr=1e-3)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-2, total_steps=10)
    seen = set()
    for _ in range(5):
        param.grad = torch.randn(10)
        optimizer.step()
        scheduler.step()
        seen.add((optimizer.param_groups[0]["lr"], optimizer.param_groups[0]["betas"][0]))
    assert len(seen) == 5


def test_telemetry_only_when_requested():
    torch.manual_seed(0)
    model = torch.nn.Linear(64, 32)
    optimizer = MicroAdam(model.named_parameters(), m=4, density=0.1, block_size=128)
    for step in range(1, 7):
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        if step in (2, 6):
            optimizer.request_telemetry()
        optimizer.step()
        if step == 1:
            assert optimizer.telemetry is None
        if step == 2:
            early = optimizer.telemetry
    late = optimizer.telemetry
    assert early is not late
    assert set(late.per_parameter) == {"weight", "bias"}
    total = late.total
    assert 0 < total.compression_error < 1
    assert 0 < total.quantization_error < 1
    assert total.ef_norm > 0
    assert early.total.window_occupancy == pytest.approx(0.5)
    assert total.window_occupancy == pytest.approx(1.0)
    assert early.total.window_support < total.window_support <= 1


def test_full_density_telemetry_has_no_compression_error():
    param = torch.nn.Parameter(torch.zeros(50))
    optimizer = MicroAdam([param], density=1.0, block_size=64)
    param.grad = torch.randn(50).bfloat16().float()
    optimizer.request_telemetry()
    optimizer.step()
    statistics = optimizer.telemetry.total
    assert statistics.compression_error == pytest.approx(0.0, abs=1e-6)
    assert statistics.window_support == 1.0
    assert statistics.ef_norm == 0.0


# -- training --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_fine_tunes_a_pretrained_model_about_as_well_as_adamw():
    """MicroAdam is for fine-tuning: from a model AdamW pre-trained a little, it gets within 50% of AdamW's
    loss at the same budget on a related task (measured: 1.22x). A window entry alone moves its coordinate by
    up to (1 - beta1) / sqrt(1 - beta2) = 3.2 learning rates, so MicroAdam runs at a third of AdamW's rate."""
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Linear(32, 128), torch.nn.Tanh(), torch.nn.Linear(128, 8))
    shift = torch.nn.Linear(32, 8)  # the fine-tuning task: the teacher's targets plus a small linear change

    def batch(generator, fine_tune):
        inputs = torch.randn(64, 32, generator=generator)
        with torch.no_grad():
            targets = teacher(inputs) + (0.3 * shift(inputs) if fine_tune else 0)
        return inputs, targets

    model = torch.nn.Sequential(torch.nn.Linear(32, 256), torch.nn.Tanh(), torch.nn.Linear(256, 8))
    pretrain = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(1)
    for _ in range(300):
        inputs, targets = batch(generator, fine_tune=False)
        pretrain.zero_grad()
        torch.nn.functional.mse_loss(model(inputs), targets).backward()
        pretrain.step()

    final = {}
    for name in ("adamw", "microadam"):
        tuned = copy.deepcopy(model)
        if name == "adamw":
            optimizer = torch.optim.AdamW(tuned.parameters(), lr=1e-3)
        else:
            optimizer = MicroAdam(tuned.parameters(), lr=3e-4, density=0.05, block_size=1024)
        generator = torch.Generator().manual_seed(2)
        losses = []
        for _ in range(400):
            inputs, targets = batch(generator, fine_tune=True)
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(tuned(inputs), targets)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        final[name] = sum(losses[-50:]) / 50
        assert final[name] < 0.5 * sum(losses[:10]) / 10  # it learns
    assert final["microadam"] <= 1.5 * final["adamw"]

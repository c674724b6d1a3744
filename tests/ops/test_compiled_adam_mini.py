"""Adam-mini's compiled element-wise kernel against the reference, and torch.compile over the custom ops."""

from __future__ import annotations

import pytest
import torch

from lit_microopt import AdamMini, MicroAdam, ops
from lit_microopt.ops import dispatch
from lit_microopt.ops.reference import adam_mini as reference
from lit_microopt.ops.reference.random import stream_key

compiled = torch.ops.lit_microopt
# The kernels compute m's update with two roundings where PyTorch's vectorised lerp_ fuses it into one:
# results agree to a few ulps of the parameter's dtype per step.
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}


def require_kernel(device: str) -> None:
    if not dispatch.compiled_available(device, dispatch.ADAM_MINI_OPS):
        pytest.fail(f"the {device} kernel of adam_mini_update_ is not built: {dispatch.kernels_report()}")


@pytest.mark.parametrize("block_axis", [0, 1])
@pytest.mark.parametrize("moment_dtype", [None, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_element_wise_pass_matches_the_reference(target, dtype, block_axis, moment_dtype, weight_decay):
    """Against the reference on CPU copies of the inputs, on the CPU kernel, the emulated CUDA kernel and a GPU."""
    if not target.emulated:
        require_kernel(target.device)
    generator = torch.Generator().manual_seed(0)
    shape, rows = (12, 10), 12 if block_axis == 0 else 10
    param = torch.randn(shape, generator=generator).to(dtype)
    grad = torch.randn(shape, generator=generator).to(dtype)
    exp_avg = (0.1 * torch.randn(shape, generator=generator)).to(moment_dtype or dtype)
    row_denominator = 0.5 + torch.rand(rows, generator=generator)
    narrower = exp_avg.element_size() < param.element_size()
    key = stream_key(5, 3) if narrower else None
    expected = [param.clone(), exp_avg.clone()]
    reference.apply_moments_(expected[0], grad, expected[1], row_denominator, block_axis=block_axis, step_size=1e-2,
                             beta1=0.9, lr=1e-2, weight_decay=weight_decay, stochastic_key=key)
    actual = [param.to(target.device), exp_avg.to(target.device)]
    target.ops.adam_mini_update_(actual[0], grad.to(target.device), actual[1], row_denominator.to(target.device),
                                 block_axis, 1e-2, 0.9, 1e-2, weight_decay, key is not None, key or 0)
    tolerance = TOLERANCE[dtype]
    torch.testing.assert_close(actual[0].cpu(), expected[0], rtol=tolerance, atol=tolerance)
    # A stochastically rounded m may land on the other neighbour: one ulp of m's dtype.
    torch.testing.assert_close(actual[1].float().cpu(), expected[1].float(), rtol=1e-2 if narrower else tolerance,
                               atol=1e-3 if narrower else tolerance)


def _assert_the_emulated_cuda_kernel_equals_the_cpu_kernel(dtype, seed, param_offset, *arguments):
    """Both kernels on the same inputs (both block axes), ``arguments`` those after ``block_axis``: the same bits."""
    from tests.cuda_emulation import GuardedOps

    require_kernel("cpu")
    generator = torch.Generator().manual_seed(seed)
    for block_axis, shape in ((0, (64, 48)), (1, (48, 64))):
        param = (param_offset + torch.randn(shape, generator=generator)).to(dtype)
        grad = torch.randn(shape, generator=generator).to(dtype)
        exp_avg = (0.1 * torch.randn(shape, generator=generator)).to(dtype)
        row_denominator = 0.5 + torch.rand(64, generator=generator)
        results = []
        for kernels in (torch.ops.lit_microopt, GuardedOps()):
            state = [param.clone(), exp_avg.clone()]
            kernels.adam_mini_update_(state[0], grad, state[1], row_denominator, block_axis, *arguments)
            results.append(state)
        for cpu_result, emulated_result in zip(*results):
            assert torch.equal(emulated_result, cpu_result)


def test_emulated_cuda_kernel_equals_the_cpu_kernel(dtype):
    """The CUDA and the CPU kernel share their formulas (adam_mini_math.h): the same bits, many grid blocks."""
    _assert_the_emulated_cuda_kernel_equals_the_cpu_kernel(dtype, 1, 0, 1e-2, 0.9, 1e-2, 0.1, False, 0)


def _llama(device, dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    return LlamaForCausalLM(config).to(device, dtype)


def _trajectory(backend, device, dtype, state_dtype, monkeypatch, steps=50):
    monkeypatch.setenv(dispatch.BACKEND_VARIABLE, backend)
    model = _llama(device, dtype)
    optimizer = AdamMini.from_model(model, lr=1e-3, weight_decay=0.1, state_dtype=state_dtype)
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        tokens = torch.randint(0, 64, (4, 12), generator=generator).to(device)
        loss = model(input_ids=tokens, labels=tokens).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return [p.detach().float().clone() for p in model.parameters()]


@pytest.mark.parametrize("state_dtype", [None, torch.bfloat16], ids=["m-like-param", "m-bf16"])
def test_fifty_step_trajectories_agree(optimizer_target, state_dtype, monkeypatch, request):
    device = optimizer_target.device
    require_kernel(device)
    if optimizer_target.emulated:
        request.getfixturevalue("emulated_kernels_on_cpu")  # the optimizer's ops now run the CUDA source
    expected = _trajectory("reference", device, torch.float32, state_dtype, monkeypatch)
    actual = _trajectory("compiled", device, torch.float32, state_dtype, monkeypatch)
    # A stochastically rounded m flips to its other neighbour where the two float32 values of m differ by an
    # ulp: a few percent of one step (lr = 1e-3) on a handful of elements.
    atol = 1e-5 if state_dtype is None else 1e-4
    for a, b in zip(actual, expected):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=atol)


def test_torch_compile_traces_through_every_custom_op(device):
    """With fullgraph=True, a missing or wrong fake implementation is an error, not a graph break."""
    require_kernel(device)
    layout = ops.TopKLayout.of(300, 64, 0.1)

    def microadam_ops(accumulator, codes, low, high, indices, values, param, weights):
        compiled.ef_dequant_add_(accumulator, codes, low, high, 16)
        compiled.block_topk(accumulator, indices, values, 64, layout.k_block, layout.k_last)
        compiled.ef_quantize_(accumulator, indices, codes, low, high, 16, 64, layout.k_block, False, 0)
        compiled.window_adam_update_(param, indices[None], values[None], weights, weights, 64, layout.k_block,
                                     0.1, 0.001, 1e-8, 1e-2, 0.0)
        return param

    def arguments():
        generator = torch.Generator().manual_seed(0)
        return (torch.randn(300, generator=generator).to(device), torch.zeros(150, dtype=torch.uint8, device=device),
                torch.zeros(19, dtype=torch.bfloat16, device=device), torch.zeros(19, dtype=torch.bfloat16, device=device),
                torch.zeros(layout.k, dtype=torch.int16, device=device),
                torch.zeros(layout.k, dtype=torch.bfloat16, device=device), torch.ones(300, device=device),
                torch.ones(1, device=device))

    eager = microadam_ops(*arguments())
    traced = torch.compile(microadam_ops, backend="aot_eager", fullgraph=True)(*arguments())
    assert torch.equal(eager, traced)

    def adam_mini_op(param, grad, moment, denominator):
        compiled.adam_mini_update_(param, grad, moment, denominator, 0, 1e-2, 0.9, 1e-2, 0.0, False, 0)
        return param, moment

    inputs = lambda: (torch.ones(8, 4, device=device), torch.full((8, 4), 0.5, device=device),
                      torch.zeros(8, 4, device=device), torch.ones(8, device=device))
    for a, b in zip(adam_mini_op(*inputs()), torch.compile(adam_mini_op, backend="aot_eager", fullgraph=True)(*inputs())):
        assert torch.equal(a, b)


@pytest.mark.parametrize("optimizer_class", [MicroAdam, AdamMini])
def test_torch_compile_of_a_training_step(optimizer_class):
    """A compiled model trains with either optimizer (the step itself runs eagerly around the custom ops)."""
    model = _llama("cpu", torch.float32)
    if optimizer_class is AdamMini:
        optimizer = AdamMini.from_model(model, lr=1e-3)
    else:
        optimizer = MicroAdam(model.named_parameters(), lr=1e-3, block_size=256, density=0.1)
    compiled_model = torch.compile(model, backend="aot_eager")
    tokens = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    losses = []
    for _ in range(5):
        loss = compiled_model(input_ids=tokens, labels=tokens).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("block_axis", [0, 1])
@pytest.mark.parametrize("moment_dtype", [None, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_stochastic_param_rounding_matches_the_reference_bit_for_bit(target, dtype, block_axis, moment_dtype,
                                                                     weight_decay):
    """param_rounding="stochastic": the reference and every kernel round a 16-bit parameter from the same streams,
    to the same bits. beta1 = 0 makes m's update exact in both (the kernels' lerp and PyTorch's fused one agree
    there), so that the float32 value before rounding is the same and only the rounding is under test."""
    if not target.emulated:
        require_kernel(target.device)
    generator = torch.Generator().manual_seed(0)
    shape, rows = (12, 10), 12 if block_axis == 0 else 10
    param = (1 + torch.randn(shape, generator=generator)).to(dtype)
    grad = torch.randn(shape, generator=generator).to(dtype)
    exp_avg = (0.1 * torch.randn(shape, generator=generator)).to(moment_dtype or dtype)
    row_denominator = 0.5 + torch.rand(rows, generator=generator)
    narrower = exp_avg.element_size() < param.element_size()
    key = stream_key(5, 3) if narrower else None
    keys = ops.param_rounding_keys(5, 3)
    arguments = dict(block_axis=block_axis, step_size=1e-3, beta1=0.0, lr=1e-3, weight_decay=weight_decay,
                     stochastic_key=key)
    expected = [param.clone(), exp_avg.clone()]
    reference.apply_moments_(expected[0], grad, expected[1], row_denominator, **arguments, param_keys=keys)
    actual = [param.clone().to(target.device), exp_avg.clone().to(target.device)]
    target.ops.adam_mini_update_(actual[0], grad.to(target.device), actual[1], row_denominator.to(target.device),
                                 block_axis, 1e-3, 0.0, 1e-3, weight_decay, key is not None, key or 0, True, *keys)
    assert torch.equal(actual[0].cpu(), expected[0])
    assert torch.equal(actual[1].cpu(), expected[1])
    nearest = param.clone()
    reference.apply_moments_(nearest, grad, exp_avg.clone(), row_denominator, **arguments)
    if dtype == torch.float32:
        assert torch.equal(expected[0], nearest)  # nothing to round
    else:
        assert not torch.equal(expected[0], nearest)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_emulated_cuda_kernel_equals_the_cpu_kernel_with_stochastic_param_rounding(dtype, weight_decay):
    """With m's update as the kernels compute it (beta1 = 0.9, not exact), the CPU and CUDA kernels still give the
    same bits: they share every formula, the stochastic rounding included."""
    keys = ops.param_rounding_keys(9, 4)
    _assert_the_emulated_cuda_kernel_equals_the_cpu_kernel(dtype, 2, 1, 1e-3, 0.9, 1e-3, weight_decay, False, 0, True,
                                                            *keys)
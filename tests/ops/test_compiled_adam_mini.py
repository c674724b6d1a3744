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

# -- the multi-tensor ops: one call per param group ------------------------------------------------------------

#: Tensors of every layout in one call: (shape, block_axis, segment_rows, rows_per_block, decayed). Rows, heads,
#: a fused [q; k; v] weight with three segments, Conv1D columns (block axis 1), a 1-D tensor block, a 3-D weight
#: and one of more than 16384 elements (several chunks of the CPU kernel's parallel loop).
MIXED_LAYOUTS = [
    ((12, 10), 0, (12,), (1,), True),
    ((16, 6), 0, (16,), (4,), True),
    ((24, 5), 0, (8, 4, 12), (4, 2, 1), True),
    ((7, 9), 1, (9,), (1,), True),
    ((20,), 0, (1,), (1,), False),
    ((6, 2, 3), 0, (6,), (1,), True),
    ((40, 600), 0, (40,), (8,), True),
]
#: Seeds and a step with their high 32 bits set: the kernels' stream_key (numerics.h) must read all 64 bits as
#: Python's does, or the stochastic roundings below draw other numbers.
HIGH_SEED, HIGH_STEP = 2**40 + 12345, 2**33 + 3


def _multi_inputs(device, dtype, moment_dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    tensors = []
    for shape, block_axis, segment_rows, rows_per_block, decayed in MIXED_LAYOUTS:
        n_blocks = sum(rows // height for rows, height in zip(segment_rows, rows_per_block))
        tensors.append(dict(
            param=(1 + torch.randn(shape, generator=generator)).to(dtype).to(device),
            grad=torch.randn(shape, generator=generator).to(dtype).to(device),
            exp_avg=(0.1 * torch.randn(shape, generator=generator)).to(moment_dtype or dtype).to(device),
            exp_avg_sq=(0.01 * torch.rand(n_blocks, generator=generator)).to(device),
            layout=(block_axis, segment_rows, rows_per_block), decayed=decayed,
        ))
    return tensors


def _layout_lists(tensors):
    return dict(block_axes=[t["layout"][0] for t in tensors], segment_counts=[len(t["layout"][1]) for t in tensors],
                segment_rows=[r for t in tensors for r in t["layout"][1]],
                rows_per_block=[h for t in tensors for h in t["layout"][2]])


def _per_tensor_path(kernels, tensors, step, weight_decay, stochastic_param):
    """What the optimizer did before the multi-tensor ops: the reference's statistics and v, ``kernels``' element-wise
    op, tensor by tensor."""

    def apply(param, grad, exp_avg, row_denominator, *, block_axis, step_size, beta1, lr, weight_decay,
              stochastic_key, param_keys=None):
        update_key, decay_key = param_keys or (0, 0)
        kernels.adam_mini_update_(param, grad, exp_avg, row_denominator, block_axis, step_size, beta1, lr,
                                  weight_decay, stochastic_key is not None, stochastic_key or 0,
                                  param_keys is not None, update_key, decay_key)

    statistics = []
    for index, t in enumerate(tensors):
        block_axis, segment_rows, rows_per_block = t["layout"]
        statistic = reference.block_mean_squares(t["grad"], block_axis=block_axis, segment_rows=segment_rows,
                                                 rows_per_block=rows_per_block)
        statistics.append(statistic.clone())
        reference.adam_mini_update_(
            t["param"], t["grad"], t["exp_avg"], t["exp_avg_sq"], block_axis=block_axis, segment_rows=segment_rows,
            rows_per_block=rows_per_block, step=step, lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-8,
            weight_decay=weight_decay if t["decayed"] else 0.0, rounding_seed=HIGH_SEED + 7 * index,
            block_mean_sq=statistic, apply=apply, stochastic_param=stochastic_param,
        )
    return torch.cat(statistics)


def _multi_path(kernels, tensors, step, weight_decay, stochastic_param):
    lists = _layout_lists(tensors)
    device = tensors[0]["param"].device
    statistics = torch.full((sum(t["exp_avg_sq"].numel() for t in tensors),), float("nan"), device=device)
    kernels.multi_block_mean_squares_(statistics, [t["grad"] for t in tensors], *lists.values())
    kernels.multi_adam_mini_update_(
        statistics, [t["param"] for t in tensors], [t["grad"] for t in tensors], [t["exp_avg"] for t in tensors],
        [t["exp_avg_sq"] for t in tensors], *lists.values(),
        [weight_decay if t["decayed"] else 0.0 for t in tensors], [HIGH_SEED + 7 * i for i in range(len(tensors))],
        step, 1e-2, 0.9, 0.99, 1e-8, stochastic_param)
    return statistics


@pytest.mark.parametrize("moment_dtype", [None, torch.bfloat16], ids=["m-like-param", "m-bf16"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("stochastic_param", [False, True], ids=["nearest", "stochastic"])
def test_multi_tensor_ops_equal_the_per_tensor_path_bit_for_bit(target, dtype, moment_dtype, weight_decay,
                                                                stochastic_param):
    """Mixed layouts in one call give the bits of the per-tensor path (the reference's statistics and v, the same
    target's element-wise op), on every target; the statistics are the reference's."""
    if not target.emulated:
        require_kernel(target.device)
    per_tensor_kernels = target.ops if target.emulated else compiled
    expected = _multi_inputs(target.device, dtype, moment_dtype)
    actual = _multi_inputs(target.device, dtype, moment_dtype)
    for step in (1, 2, HIGH_STEP):  # the state carries over between steps, as in training
        expected_statistics = _per_tensor_path(per_tensor_kernels, expected, step, weight_decay, stochastic_param)
        actual_statistics = _multi_path(target.ops, actual, step, weight_decay, stochastic_param)
        assert torch.equal(actual_statistics, expected_statistics)
        for a, e in zip(actual, expected):
            for key in ("param", "exp_avg", "exp_avg_sq"):
                assert torch.equal(a[key], e[key]), (step, a["layout"], key)
    # The element-wise pass ran, and with stochastic rounding drew from the right streams: far from the start.
    start = _multi_inputs(target.device, dtype, moment_dtype)
    assert all(not torch.equal(a["param"], s["param"]) for a, s in zip(actual, start))


def test_multi_tensor_ops_match_the_reference_adapter(dtype):
    """The reference of the multi-tensor ops (a loop over the per-tensor reference) within the element-wise pass's
    tolerance of the CPU kernels, and with the same statistics."""
    require_kernel("cpu")
    expected = _multi_inputs("cpu", dtype, None)
    actual = _multi_inputs("cpu", dtype, None)
    from lit_microopt.ops.library import OPS

    class ReferenceOps:
        def __getattr__(self, name):
            return OPS[name].reference

    expected_statistics = _multi_path(ReferenceOps(), expected, 1, 0.1, False)
    actual_statistics = _multi_path(compiled, actual, 1, 0.1, False)
    assert torch.equal(actual_statistics, expected_statistics)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a["param"], e["param"], rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype])
        assert torch.equal(a["exp_avg_sq"], e["exp_avg_sq"])


def _bad_calls(device):
    """(what is wrong, arguments of multi_adam_mini_update_, the error's pattern): each refused before any change."""
    tensors = _multi_inputs(device, torch.float32, None)[:3]

    def arguments(**changes):
        lists = _layout_lists(tensors)
        values = dict(
            block_mean_sqs=torch.ones(sum(t["exp_avg_sq"].numel() for t in tensors), device=device),
            params=[t["param"] for t in tensors], grads=[t["grad"] for t in tensors],
            exp_avgs=[t["exp_avg"] for t in tensors], exp_avg_sqs=[t["exp_avg_sq"] for t in tensors], **lists,
            weight_decays=[0.1] * 3, rounding_seeds=[0] * 3, step=1, lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-8,
            stochastic_param=False)
        values.update(changes)
        return tensors, list(values.values())

    half = torch.zeros(12, 10, dtype=torch.float16, device=device)
    return [
        ("fewer grads", arguments(grads=[t["grad"] for t in tensors[:2]]), r"got 3 params but 2 grads; pass one entry"),
        ("fewer seeds", arguments(rounding_seeds=[0, 0]), r"got 3 params but 2 rounding_seeds"),
        ("segments", arguments(segment_rows=[12, 16, 8, 4]), r"segment_counts add up to 5 segments but segment_rows"),
        ("statistics size", arguments(block_mean_sqs=torch.ones(3, device=device)), r"block_mean_sqs has 3 entries"),
        ("statistics dtype", arguments(block_mean_sqs=torch.ones(24, dtype=torch.float64, device=device)),
         r"block_mean_sqs must be a contiguous float32 tensor"),
        ("mixed dtypes", arguments(params=[half] + [t["param"] for t in tensors[1:]],
                                   grads=[half] + [t["grad"] for t in tensors[1:]]),
         r"params\[1\] or exp_avgs\[1\] has another dtype than entry 0.*once per parameter dtype"),
        ("grad dtype", arguments(grads=[half] + [t["grad"] for t in tensors[1:]]),
         r"grads\[0\] is Half but its parameter is Float"),
        # A CPU tensor in a CUDA call (on CPU targets another device would be the meta device, whose kernel is
        # the fake one: the dispatcher never reaches the checks).
        *([("device", arguments(grads=[tensors[0]["grad"].cpu()] + [t["grad"] for t in tensors[1:]]),
            r"grads\[0\] is on cpu but block_mean_sqs is on cuda:0; call the op once per device")]
          if device == "cuda" else []),
        ("non-contiguous",
         arguments(params=[torch.zeros(10, 12, device=device).t()] + [t["param"] for t in tensors[1:]]),
         r"params\[0\], exp_avgs\[0\] and exp_avg_sqs\[0\] must be contiguous"),
        ("v size", arguments(exp_avg_sqs=[torch.zeros(5, device=device)] + [t["exp_avg_sq"] for t in tensors[1:]]),
         r"tensor 0 has 120 elements.*exp_avg_sq 5 for 12 blocks"),
        ("element blocks", arguments(segment_rows=[120, 16, 8, 4, 12], rows_per_block=[1, 4, 4, 2, 1],
                                     exp_avg_sqs=[torch.zeros(120, device=device)]
                                     + [t["exp_avg_sq"] for t in tensors[1:]],
                                     block_mean_sqs=torch.ones(140, device=device)),
         r"tensor 0 has one block per element, which takes AdamW's arithmetic; step it with adam_mini_update_"),
        ("block axis", arguments(block_axes=[2, 0, 0]), r"block_axes\[0\] must be 0 or 1, got 2"),
    ]


def test_multi_tensor_update_refuses_bad_inputs_and_changes_nothing(target):
    if not target.emulated:
        require_kernel(target.device)
    for what, (tensors, arguments), pattern in _bad_calls(target.device):
        before = [{key: t[key].clone() for key in ("param", "exp_avg", "exp_avg_sq")} for t in tensors]
        with pytest.raises((ValueError, RuntimeError), match=pattern):
            target.ops.multi_adam_mini_update_(*arguments)
        for t, saved in zip(tensors, before):
            assert all(torch.equal(t[key], value) for key, value in saved.items()), what


def test_multi_block_mean_squares_refuses_bad_inputs(target):
    if not target.emulated:
        require_kernel(target.device)
    tensors = _multi_inputs(target.device, torch.float32, None)[:2]
    lists = _layout_lists(tensors)
    grads = [t["grad"] for t in tensors]
    out = torch.zeros(17, device=target.device)
    with pytest.raises(ValueError, match=r"got 2 grads but 1 block_axes"):
        target.ops.multi_block_mean_squares_(out, grads, [0], *list(lists.values())[1:])
    with pytest.raises(ValueError, match=r"block_mean_sqs has 17 entries but the tensors have 16 blocks"):
        target.ops.multi_block_mean_squares_(out, grads, *lists.values())
    assert torch.equal(out.cpu(), torch.zeros(17))


@pytest.mark.parametrize("state_dtype", [None, torch.bfloat16], ids=["m-like-param", "m-bf16"])
def test_optimizer_steps_batched_equal_steps_one_by_one(optimizer_target, state_dtype, request):
    """The optimizer's multi-tensor path (two op calls a step for the whole model) and its per-tensor path give the
    same bits on every target: on the emulated GPU the optimizer steps through the CUDA source of both."""
    device = optimizer_target.device
    require_kernel(device)
    if optimizer_target.emulated:
        request.getfixturevalue("emulated_kernels_on_cpu")
        from tests import cuda_emulation

        before = cuda_emulation.calls.get("multi_adam_mini_update_", 0)
    results = []
    for multi_tensor in (True, False):
        model = _llama(device, torch.float32)
        optimizer = AdamMini.from_model(model, lr=1e-3, weight_decay=0.1, state_dtype=state_dtype)
        optimizer._multi_tensor = multi_tensor
        generator = torch.Generator().manual_seed(1)
        for _ in range(5):
            tokens = torch.randint(0, 64, (4, 12), generator=generator).to(device)
            optimizer.zero_grad()
            model(input_ids=tokens, labels=tokens).loss.backward()
            optimizer.step()
        results.append([p.detach().clone() for p in model.parameters()]
                       + [value.clone() for p in model.parameters() for value in optimizer.state[p].values()])
    if optimizer_target.emulated:
        assert cuda_emulation.calls["multi_adam_mini_update_"] == before + 5
    for batched, one_by_one in zip(*results):
        assert torch.equal(batched, one_by_one)

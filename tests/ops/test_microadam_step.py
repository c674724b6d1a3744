"""The op ``microadam_step_``, MicroAdam's whole step for a list of tensors, against the reference tensor by tensor.

Every test runs on each target of ``tests/ops/conftest.py`` (the CPU kernel, the CUDA glue and kernels on the
emulated GPU, a real GPU where there is one); the expected result is the reference's ``microadam_step_`` on CPU
copies, which takes the tensors one after the other through the per-tensor ops' reference.
"""

from __future__ import annotations

import pytest
import torch

from lit_microopt import ops
from lit_microopt.ops.reference import microadam as reference
from tests.ops.test_compiled_microadam import error_feedback_state, require_kernels

M = 3
#: Tensor sizes of one list: single elements, a partial block, whole blocks, blocks and a short last block.
NUMELS = [1, 7, 16, 33, 100, 517]
SHAPES = {100: (10, 10), 517: (11, 47), 3000: (30, 100)}


def tensor_lists(numels, dtype, block_size, density, bucket_size, generator, steps=None, seeds=None, dtypes=None):
    """A list of tensors and their states as the optimizer keeps them: random parameters, gradients, error feedback
    and window contents, each tensor at its own step count; parameters and gradients of ``dtype``, or of tensor
    ``i``'s pair ``dtypes[i] = (param dtype, grad dtype)``."""
    k_block = ops.TopKLayout.of(block_size, block_size, density).k_block
    lists = {key: [] for key in ("params", "grads", "window_indices", "window_values", "error_feedback",
                                 "bucket_min", "bucket_max", "steps", "seeds")}
    for index, numel in enumerate(numels):
        layout = ops.TopKLayout.of(numel, block_size, density)
        shape = SHAPES.get(numel, (numel,))  # any shape: the op reads a tensor's elements in order
        param_dtype, grad_dtype = dtypes[index] if dtypes else (dtype, dtype)
        lists["params"].append(torch.randn(shape, generator=generator).to(param_dtype))
        lists["grads"].append(torch.randn(shape, generator=generator).to(grad_dtype))
        window_indices = torch.zeros(M, layout.k, dtype=torch.int16)
        window_values = torch.zeros(M, layout.k, dtype=torch.bfloat16)
        for row in range(M):
            reference.block_topk(torch.randn(numel, generator=generator), window_indices[row], window_values[row],
                                 layout)
        lists["window_indices"].append(window_indices)
        lists["window_values"].append(window_values)
        for key, value in zip(("error_feedback", "bucket_min", "bucket_max"),
                              error_feedback_state(numel, bucket_size, generator)):
            lists[key].append(value)
        lists["steps"].append(torch.tensor(steps[index] if steps else index, dtype=torch.int64))
        lists["seeds"].append(torch.tensor(seeds[index] if seeds else 1000 + index, dtype=torch.int64))
    return lists, k_block


def on(device, lists):
    """The lists with every device tensor moved to ``device`` (step counts and seeds stay on the host)."""
    return {key: [t if key in ("steps", "seeds") else t.to(device) for t in tensors] for key, tensors in lists.items()}


def clone(lists):
    return {key: [t.clone() for t in tensors] for key, tensors in lists.items()}


def settings(k_block, block_size, bucket_size, *, weight_decay=0.1, stochastic=False, stochastic_param=False):
    """The op's arguments after the lists, by name and in the schema's order."""
    return dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=weight_decay, m=M, block_size=block_size,
                k_block=k_block, bucket_size=bucket_size, stochastic=stochastic, stochastic_param=stochastic_param)


def run_op(target, lists, options):
    target.ops.microadam_step_(*lists.values(), *options.values())


def assert_lists_equal(actual, expected, skip=("grads",)):
    """Every tensor bit for bit, but the gradients: the step's working buffers, unspecified afterwards."""
    for key in expected:
        if key in skip:
            continue
        for index, (a, b) in enumerate(zip(actual[key], expected[key], strict=True)):
            assert torch.equal(a.cpu(), b), f"{key}[{index}] differs"


@pytest.mark.parametrize("bucket_size", [16, 6], ids=["blocks-of-whole-buckets", "straddling"])
@pytest.mark.parametrize("stochastic", [False, True], ids=["nearest", "stochastic"])
@pytest.mark.parametrize("stochastic_param", [False, True], ids=["param-nearest", "param-stochastic"])
def test_a_list_steps_as_the_reference_steps_each_tensor(target, dtype, bucket_size, stochastic, stochastic_param):
    """Tensors of every shape of layout at different step counts (the window filling, full, wrapping around), with
    seeds that use all 64 bits, over several steps: every parameter and state tensor equal bit for bit."""
    require_kernels(target)
    generator = torch.Generator().manual_seed(bucket_size + 2 * stochastic + 4 * stochastic_param)
    steps = [0, 1, 2, 3, 7, 0]
    seeds = [0, 5, -1, 2**40 + 3, 2**63 - 1, 77]
    lists, k_block = tensor_lists(NUMELS, dtype, 16, 0.25, bucket_size, generator, steps, seeds)
    options = settings(k_block, 16, bucket_size, stochastic=stochastic, stochastic_param=stochastic_param)
    actual = assert_steps_as_the_reference(target, lists, options, generator)
    assert [int(step) for step in actual["steps"]] == [step + 4 for step in steps]


def assert_steps_as_the_reference(target, lists, options, generator, count=4):
    """``count`` steps of the op on ``target`` and of the reference on CPU copies, each with new random gradients:
    every parameter and state tensor equal bit for bit after each step. Returns the target's lists."""
    expected, actual = clone(lists), on(target.device, lists)
    for _ in range(count):
        gradients = [torch.randn(g.shape, generator=generator).to(g.dtype) for g in lists["grads"]]
        for grad, expected_grad, new in zip(actual["grads"], expected["grads"], gradients):
            grad.copy_(new)
            expected_grad.copy_(new)
        reference.microadam_step_(*expected.values(), **options)
        run_op(target, actual, options)
        assert_lists_equal(actual, expected)
    return actual


#: Many tensors, more than the emulated GPU's 3 blocks a launch and with more Top-K blocks in all than any one:
#: single elements, partial, whole and several blocks, an empty tensor, and two tensors larger than the emulated
#: GPU's float32 scratch for 16-bit gradients (so the CUDA glue cuts them into chunks over several passes).
MANY_NUMELS = [1, 300, 1, 2, 15, 16, 17, 0, 47, 48, 49, 1, 96, 100, 131, 1, 700, 5, 33, 64, 1, 250, 3, 517]


@pytest.mark.parametrize("bucket_size", [16, 6], ids=["blocks-of-whole-buckets", "straddling"])
@pytest.mark.parametrize("grad_dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_many_tensors_of_mixed_sizes_step_as_the_reference(target, grad_dtype, bucket_size):
    """A long list of tensors of every size, both bucket layouts (block_size a multiple of bucket_size, and not),
    float32, bfloat16 and float16 gradients (the accumulator float32 whatever the gradient's dtype), each tensor at
    its own step count with stochastic roundings: equal to the reference bit for bit."""
    require_kernels(target)
    generator = torch.Generator().manual_seed(bucket_size + len(str(grad_dtype)))
    steps = [index % 5 for index in range(len(MANY_NUMELS))]
    param_dtype = torch.float32 if grad_dtype == torch.float32 else torch.bfloat16
    lists, k_block = tensor_lists(MANY_NUMELS, None, 16, 0.25, bucket_size, generator, steps,
                                  dtypes=[(param_dtype, grad_dtype)] * len(MANY_NUMELS))
    options = settings(k_block, 16, bucket_size, stochastic=True, stochastic_param=True)
    assert_steps_as_the_reference(target, lists, options, generator, count=3)


def test_a_list_of_mixed_dtypes_steps_as_the_reference(target):
    """Parameters and gradients of every dtype pair within one list (the op allows it; the CUDA kernels choose each
    tensor's element type as they reach it, in one launch)."""
    require_kernels(target)
    generator = torch.Generator().manual_seed(11)
    all_dtypes = [torch.float32, torch.bfloat16, torch.float16]
    pairs = [(param, grad) for param in all_dtypes for grad in all_dtypes]
    numels = [1, 40, 17, 100, 3, 64, 33, 200, 9]
    lists, k_block = tensor_lists(numels, None, 16, 0.25, 6, generator, [2] * len(numels), dtypes=pairs)
    options = settings(k_block, 16, 6, stochastic=True, stochastic_param=True)
    assert_steps_as_the_reference(target, lists, options, generator, count=2)


def emulated_launches(target, lists, options) -> int:
    """The kernel launches of one call of the op on the emulated GPU."""
    from tests import cuda_emulation

    before = cuda_emulation.launches()
    run_op(target, lists, options)
    return cuda_emulation.launches() - before


@pytest.mark.parametrize("grad_dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("weight_decay", [0.1, 0.0], ids=["decay", "no-decay"])
def test_the_cuda_glue_launches_each_kernel_once_per_call(target, grad_dtype, weight_decay):
    """On the emulated GPU, a call launches its kernels once for the whole list, however many tensors it holds:
    four for steps 2 to 5, and the window update (with the decay's kernel before it when weight_decay > 0)."""
    if not target.emulated:
        pytest.skip("the emulated GPU counts launches")
    from tests import cuda_emulation

    generator = torch.Generator().manual_seed(3)
    expected = 4 + (2 if weight_decay > 0 else 1)
    for numels in ([33], [1, 7, 16, 33, 1, 5, 2, 9, 30, 1, 12, 40, 3, 1, 8, 19, 1, 2, 6, 20]):
        assert sum(numels) <= cuda_emulation.STEP_SCRATCH_ELEMENTS  # one pass of the scratch for 16-bit gradients
        lists, k_block = tensor_lists(numels, grad_dtype, 16, 0.25, 16, generator, steps=[1] * len(numels))
        assert emulated_launches(target, lists, settings(k_block, 16, 16, weight_decay=weight_decay)) == expected


def test_16_bit_gradients_beyond_the_scratch_take_one_pass_per_scratch_full(target):
    """16-bit gradients of more elements than the glue's float32 scratch holds: steps 2 to 5 run in passes of four
    launches, each over as many whole chunks as fit, and the result is still the reference's."""
    if not target.emulated:
        pytest.skip("the emulated GPU counts launches")
    from tests import cuda_emulation

    scratch = cuda_emulation.STEP_SCRATCH_ELEMENTS
    generator = torch.Generator().manual_seed(4)
    # Three tensors of three quarters of the scratch each: a pass holds one, so three passes.
    numels = [3 * scratch // 4] * 3
    lists, k_block = tensor_lists(numels, torch.bfloat16, 16, 0.25, 16, generator, steps=[0, 1, 2])
    options = settings(k_block, 16, 16)
    expected = clone(lists)
    assert emulated_launches(target, lists, options) == 3 * 4 + 2
    reference.microadam_step_(*expected.values(), **options)
    assert_lists_equal(lists, expected)


def test_the_op_equals_the_optimizer_step_by_step_ops(target):
    """The op's reference is what the per-tensor ops compute in turn: the kernels of the list op against the
    kernels of the two per-tensor ops, on large blocks (each block one task of the CPU kernel)."""
    require_kernels(target)
    generator = torch.Generator().manual_seed(5)
    block_size, density, bucket_size = 512, 0.02, 64
    lists, k_block = tensor_lists([3000, 64, 1024], torch.float32, block_size, density, bucket_size, generator,
                                  steps=[4, 4, 4])
    actual, by_ops = on(target.device, lists), on(target.device, clone(lists))
    run_op(target, actual, settings(k_block, block_size, bucket_size))
    for index in range(3):
        t = int(by_ops["steps"][index]) + 1
        by_ops["steps"][index] += 1
        row, filled = (t - 1) % M, min(t, M)
        indices, values = by_ops["window_indices"][index], by_ops["window_values"][index]
        full_blocks = by_ops["params"][index].numel() // block_size
        target.ops.ef_compress_(by_ops["grads"][index].view(-1), indices[row], values[row], by_ops["error_feedback"][index],
                                by_ops["bucket_min"][index], by_ops["bucket_max"][index], bucket_size, block_size,
                                k_block, indices.shape[1] - full_blocks * k_block, False,
                                ops.stream_key(int(by_ops["seeds"][index]), t))
        device = by_ops["params"][index].device
        target.ops.window_adam_update_(
            by_ops["params"][index].view(-1), indices[:filled].contiguous(), values[:filled].contiguous(),
            reference.row_weights(0.9, t, M, device), reference.row_weights(0.999, t, M, device), block_size,
            k_block, (1 - 0.9) / (1 - 0.9**t), (1 - 0.999) / (1 - 0.999**t), 1e-8, 1e-2, 0.1,
        )
    assert_lists_equal(actual, {key: [t.cpu() for t in tensors] for key, tensors in by_ops.items()})


@pytest.mark.parametrize(("change", "message"), [
    (lambda lists: lists["seeds"].pop(), "one entry per parameter in every list"),
    (lambda lists: lists["window_values"].__setitem__(1, lists["window_values"][1].float()),
     "tensor 1 of the lists: .*window_values must be BFloat16"),
    (lambda lists: lists["steps"].__setitem__(2, torch.tensor(3, dtype=torch.int32)),
     "tensor 2 of the lists: .*step must be a CPU int64 tensor"),
    (lambda lists: lists["error_feedback"].__setitem__(2, lists["error_feedback"][2][:-1].clone()),
     "tensor 2 of the lists: .*error_feedback must hold"),
    (lambda lists: lists["window_indices"].__setitem__(0, lists["window_indices"][0][:2].clone()),
     r"tensor 0 of the lists: .*\(m, k\) = \(3, k\)"),
])
def test_a_wrong_tensor_is_named_and_nothing_changes(target, change, message):
    """Every tensor is checked before the first changes: a refused call leaves every list as it was."""
    require_kernels(target)
    lists, k_block = tensor_lists([40, 17, 100], torch.float32, 16, 0.25, 16, torch.Generator().manual_seed(0))
    lists = on(target.device, lists)
    change(lists)
    before = clone(lists)
    with pytest.raises((ValueError, RuntimeError), match=message):
        run_op(target, lists, settings(k_block, 16, 16))
    assert_lists_equal(lists, before, skip=())

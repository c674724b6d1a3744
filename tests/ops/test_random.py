"""The counter-based random stream behind stochastic rounding."""

import torch

from lit_microopt.ops.reference.random import (
    hash32,
    hash32_tensor,
    param_rounding_keys,
    stochastic_round,
    stream_key,
    uniform,
    uniform_at,
)


def test_hash_of_ints_and_tensors_agree():
    values = [0, 1, 2, 12345, 2**31 - 1, 2**31, 2**32 - 1] + torch.randint(0, 2**32, (1000,)).tolist()
    as_int32 = torch.tensor([v - 2**32 if v >= 2**31 else v for v in values], dtype=torch.int32)
    hashed = [h % 2**32 for h in hash32_tensor(as_int32).tolist()]
    assert hashed == [hash32(v) for v in values]
    assert all(0 <= h < 2**32 for h in hashed)


def test_uniform_is_in_range_and_balanced():
    numbers = uniform(stream_key(7, 3), 0, 100_000, "cpu")
    assert numbers.dtype == torch.float32
    assert 0.0 <= float(numbers.min()) and float(numbers.max()) < 1.0
    assert abs(float(numbers.mean()) - 0.5) < 0.01
    assert abs(float(numbers.var()) - 1 / 12) < 0.005


def test_stream_depends_on_seed_step_and_position_only():
    key = stream_key(7, 3)
    assert torch.equal(uniform(key, 10, 5, "cpu"), uniform(key, 0, 15, "cpu")[10:])
    assert not torch.equal(uniform(key, 0, 100, "cpu"), uniform(stream_key(7, 4), 0, 100, "cpu"))
    assert not torch.equal(uniform(key, 0, 100, "cpu"), uniform(stream_key(8, 3), 0, 100, "cpu"))


def test_parameter_rounding_keys_are_streams_of_their_own():
    """param_rounding="stochastic" rounds after the update and after the decay, each from its own stream, apart from
    the stream of stream_key itself (MicroAdam's error feedback, Adam-mini's first moment)."""
    for seed, step in ((0, 1), (7, 3), (2**40 + 5, 2**33 + 1)):
        key = stream_key(seed, step)
        update_key, decay_key = param_rounding_keys(seed, step)
        assert len({key, update_key, decay_key}) == 3
        assert all(0 <= k < 2**32 for k in (update_key, decay_key))
        assert (update_key, decay_key) == param_rounding_keys(seed, step)
    assert param_rounding_keys(7, 3) != param_rounding_keys(7, 4)


def test_uniform_at_draws_the_numbers_of_its_indices():
    key = stream_key(7, 3)
    index = torch.tensor([5, 0, 99, 5, 2**32 + 3])
    expected = torch.cat([uniform(key, 5, 1, "cpu"), uniform(key, 0, 1, "cpu"), uniform(key, 99, 1, "cpu"),
                          uniform(key, 5, 1, "cpu"), uniform(key, 3, 1, "cpu")])
    assert torch.equal(uniform_at(key, index), expected)


def test_stochastic_round_at_given_indices_equals_the_whole_tensor_rounded():
    values = torch.randn(100, generator=torch.Generator().manual_seed(0))
    positions = torch.tensor([3, 50, 97])
    for dtype in (torch.bfloat16, torch.float16):
        whole = stochastic_round(values, dtype, key=11)
        assert torch.equal(stochastic_round(values[positions], dtype, 11, positions), whole[positions])

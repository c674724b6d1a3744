"""The counter-based random stream behind stochastic rounding."""

import torch

from lit_microopt.ops.reference.random import hash32, hash32_tensor, stream_key, uniform


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

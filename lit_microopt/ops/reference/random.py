"""A counter-based random stream: uniform numbers from (key, element index), the same on every device.

Stochastic rounding needs random numbers that the pure-PyTorch reference, the C++ kernels and the CUDA
kernels all draw identically, and that a resumed run draws again exactly. A hash of the element's index and
a per-step key gives both, with no generator state beyond the key: the optimizer saves a seed per tensor
and derives the key from it and the step count (:func:`stream_key`).

The hash is the 32-bit "lowbias32" integer mixer (two multiply-xorshift rounds), computed twice here: on
Python ints for the per-step key, and on int32 tensors for the per-element numbers (int32 multiplication
wraps modulo 2**32, and masks undo the sign extension of right shifts).
"""

from __future__ import annotations

import torch

_MASK_32 = 0xFFFFFFFF
_MULTIPLIER_1 = 0x7FEB352D
_MULTIPLIER_2 = 0x846CA68B


def hash32(value: int) -> int:
    """Mix a 32-bit unsigned integer."""
    value ^= value >> 16
    value = (value * _MULTIPLIER_1) & _MASK_32
    value ^= value >> 15
    value = (value * _MULTIPLIER_2) & _MASK_32
    return value ^ (value >> 16)


def _signed(value: int) -> int:
    """A 32-bit unsigned integer as the int32 with the same bits."""
    return value - (1 << 32) if value >= 1 << 31 else value


def hash32_tensor(values: torch.Tensor) -> torch.Tensor:
    """:func:`hash32` of every element of an int32 tensor (read as unsigned), as int32 bits."""
    values = values ^ ((values >> 16) & 0xFFFF)
    values = values * _MULTIPLIER_1
    values = values ^ ((values >> 15) & 0x1FFFF)
    values = values * _signed(_MULTIPLIER_2)
    return values ^ ((values >> 16) & 0xFFFF)


def stream_key(seed: int, step: int) -> int:
    """The 32-bit key of one tensor's stream at one step, from its saved 64-bit seed and its step count."""
    key = hash32(seed & _MASK_32)
    key = hash32(key ^ ((seed >> 32) & _MASK_32))
    key = hash32(key ^ (step & _MASK_32))
    return hash32(key ^ ((step >> 32) & _MASK_32))


#: Salts of the keys of the parameter roundings (``param_rounding="stochastic"``), see :func:`param_rounding_keys`.
_PARAM_SALT = 0x9E3779B9
_DECAY_SALT = 0x85EBCA6B


def param_rounding_keys(seed: int, step: int) -> tuple[int, int]:
    """The keys of the two stochastic roundings of a 16-bit parameter at one step (``param_rounding="stochastic"``):
    ``(update key, decay key)``, the rounding after the update and the one after the decoupled weight decay.

    Each is ``hash32(stream_key(seed, step) xor salt)`` with a salt of its own, so the two streams are apart from
    each other and from the stream of ``stream_key(seed, step)`` itself, which MicroAdam's error feedback and
    Adam-mini's first moment use. The same formula runs in every implementation: the kernels take the keys.
    """
    key = stream_key(seed, step)
    return hash32(key ^ _PARAM_SALT), hash32(key ^ _DECAY_SALT)


def uniform_at(key: int, index: torch.Tensor) -> torch.Tensor:
    """Float32 numbers in [0, 1) of the stream ``key`` for the element indices ``index`` (an integer tensor).

    Element ``i`` gets ``(hash32(i mod 2**32 xor key) >> 8) / 2**24``: 24 random bits, exact in float32.
    """
    bits = (hash32_tensor(index.to(torch.int32) ^ _signed(key)) >> 8) & 0xFFFFFF
    return bits.to(torch.float32) * (1.0 / (1 << 24))


def uniform(key: int, start: int, count: int, device: torch.device | str) -> torch.Tensor:
    """``count`` float32 numbers in [0, 1), for element indices ``start, start + 1, ...`` of the stream ``key``
    (:func:`uniform_at` of those indices)."""
    return uniform_at(key, torch.arange(start, start + count, dtype=torch.int64, device=device))


def stochastic_round(
    values: torch.Tensor, dtype: torch.dtype, key: int, index: torch.Tensor | None = None
) -> torch.Tensor:
    """``values`` (float32) rounded to ``dtype`` up or down at random, unbiased: E[result] = values.

    The random numbers come from the counter-based stream ``key``, one per element: element ``j`` of ``values``
    draws the number of index ``index[j]`` (default: ``j``, the position in ``values``). The result depends only
    on (values, key, index), so a resumed run draws exactly the same numbers; a value that ``dtype`` holds exactly
    stays itself. The kernels' twins are ``round_stochastically`` (``csrc/common/cpu_rounding.h``) and
    ``store_stochastically`` (``csrc/common/cuda_elements.cuh``).
    """
    if index is None:
        u = uniform(key, 0, values.numel(), values.device).view_as(values)
    else:
        u = uniform_at(key, index).view_as(values)
    if dtype == torch.bfloat16:
        # bfloat16 is float32 without its low 16 bits: adding a uniform 16-bit integer to the bits and
        # truncating rounds the magnitude up with probability (dropped bits) / 2**16.
        noise = (u * 65536.0).to(torch.int32)
        bits = (values.view(torch.int32) + noise).bitwise_and_(-65536)
        return bits.view(torch.float32).to(torch.bfloat16)
    # Any other narrower float: pick between the nearest value and its neighbour on the other side of
    # ``values`` with the probability that makes the mean exact.
    nearest = values.to(dtype)
    error = values - nearest.float()
    toward = torch.where(error > 0, float("inf"), float("-inf")).to(dtype)
    neighbour = torch.nextafter(nearest, toward)
    probability = error / (neighbour.float() - nearest.float())
    return torch.where(u < probability, neighbour, nearest)

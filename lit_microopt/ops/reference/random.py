"""A counter-based random stream: uniform numbers from (key, element index), the same on every device.

Stochastic rounding needs random numbers that the pure-PyTorch reference, the C++ kernels and the CUDA
kernels all draw identically, and that a resumed run draws again exactly. A hash of the element's index and
a per-step key gives both, with no generator state beyond the key: the optimizer saves a seed per tensor
and derives the key from it and the step count (:func:`stream_key`).

The hash is the 32-bit "lowbias32" integer mixer (two multiply-xorshift rounds). PyTorch has no unsigned
32-bit multiply that wraps, so :func:`_multiply_mod_2_32` splits the constant into 16-bit halves so that no
product leaves int64's range.
"""

from __future__ import annotations

from typing import overload

import torch

_MASK_32 = 0xFFFFFFFF
_MULTIPLIER_1 = 0x7FEB352D
_MULTIPLIER_2 = 0x846CA68B


@overload
def _multiply_mod_2_32(value: int, constant: int) -> int: ...
@overload
def _multiply_mod_2_32(value: torch.Tensor, constant: int) -> torch.Tensor: ...
def _multiply_mod_2_32(value, constant):
    """``(value * constant) mod 2**32`` for ``0 <= value < 2**32``, without int64 overflow."""
    low = value * (constant & 0xFFFF)
    high = ((value * (constant >> 16)) & 0xFFFF) << 16
    return (low + high) & _MASK_32


def hash32(value):
    """Mix a 32-bit unsigned integer (a Python int or an int64 tensor holding values below 2**32)."""
    value = value ^ (value >> 16)
    value = _multiply_mod_2_32(value, _MULTIPLIER_1)
    value = value ^ (value >> 15)
    value = _multiply_mod_2_32(value, _MULTIPLIER_2)
    return value ^ (value >> 16)


def stream_key(seed: int, step: int) -> int:
    """The 32-bit key of one tensor's stream at one step, from its saved 64-bit seed and its step count."""
    key = hash32(seed & _MASK_32)
    key = hash32(key ^ ((seed >> 32) & _MASK_32))
    key = hash32(key ^ (step & _MASK_32))
    return hash32(key ^ ((step >> 32) & _MASK_32))


def uniform(key: int, start: int, count: int, device: torch.device | str) -> torch.Tensor:
    """``count`` float32 numbers in [0, 1), for element indices ``start, start + 1, ...`` of the stream ``key``.

    Element ``i`` gets ``(hash32(i mod 2**32 xor key) >> 8) / 2**24``: 24 random bits, exact in float32.
    """
    index = torch.arange(start, start + count, dtype=torch.int64, device=device) & _MASK_32
    bits = hash32(index ^ key) >> 8
    return bits.to(torch.float32) * (1.0 / (1 << 24))

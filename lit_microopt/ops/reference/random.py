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


def uniform(key: int, start: int, count: int, device: torch.device | str) -> torch.Tensor:
    """``count`` float32 numbers in [0, 1), for element indices ``start, start + 1, ...`` of the stream ``key``.

    Element ``i`` gets ``(hash32(i mod 2**32 xor key) >> 8) / 2**24``: 24 random bits, exact in float32.
    """
    index = torch.arange(start, start + count, dtype=torch.int64, device=device).to(torch.int32)
    bits = (hash32_tensor(index ^ _signed(key)) >> 8) & 0xFFFFFF
    return bits.to(torch.float32) * (1.0 / (1 << 24))

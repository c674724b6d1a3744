"""The statistics that monitoring callbacks read from the optimizers, computed only when asked for.

MicroAdam's statistics are kept as sums of squares and counts, so that the figures of several parameters add
up to the global norm ratios ``docs/microadam.md`` defines (``||a - TopK(a)|| / ||a||`` over all parameters, and so on).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields


@dataclass(frozen=True)
class MicroAdamStatistics:
    """One step of MicroAdam over one parameter, or summed over several (``a + b``).

    Attributes:
        accumulator_sq: ``||a||^2`` for ``a = g + Q^-1(e)`` before Top-K.
        discarded_sq: ``||a - TopK(a)||^2``.
        remainder_sq: ``||r||^2`` for the remainder ``r`` that is quantized.
        quantization_error_sq: ``||Q^-1(Q(r)) - r||^2``.
        error_feedback_sq: ``||Q^-1(e)||^2`` after the step.
        filled_entries: window entries in use (filled rows times columns).
        window_entries: window capacity (``m`` times columns).
        support: positions holding at least one window entry.
        numel: elements of the parameters.
    """

    accumulator_sq: float = 0.0
    discarded_sq: float = 0.0
    remainder_sq: float = 0.0
    quantization_error_sq: float = 0.0
    error_feedback_sq: float = 0.0
    filled_entries: int = 0
    window_entries: int = 0
    support: int = 0
    numel: int = 0

    def __add__(self, other: MicroAdamStatistics) -> MicroAdamStatistics:
        return MicroAdamStatistics(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    @property
    def compression_error(self) -> float:
        """``||a - TopK(a)|| / ||a||``, 0 when ``a`` is 0."""
        return math.sqrt(self.discarded_sq / self.accumulator_sq) if self.accumulator_sq > 0 else 0.0

    @property
    def quantization_error(self) -> float:
        """``||Q^-1(Q(r)) - r|| / ||r||``, 0 when ``r`` is 0."""
        return math.sqrt(self.quantization_error_sq / self.remainder_sq) if self.remainder_sq > 0 else 0.0

    @property
    def ef_norm(self) -> float:
        """``||Q^-1(e)||`` after the step."""
        return math.sqrt(self.error_feedback_sq)

    @property
    def window_occupancy(self) -> float:
        """Filled rows over ``m`` (weighted by window columns when summed)."""
        return self.filled_entries / self.window_entries if self.window_entries else 0.0

    @property
    def window_support(self) -> float:
        """Fraction of the positions that hold at least one window entry."""
        return self.support / self.numel if self.numel else 0.0

    def as_dict(self) -> dict[str, float]:
        """The five figures ``docs/microadam.md`` names, by name."""
        return {
            "compression_error": self.compression_error,
            "quantization_error": self.quantization_error,
            "ef_norm": self.ef_norm,
            "window_occupancy": self.window_occupancy,
            "window_support": self.window_support,
        }


@dataclass(frozen=True)
class MicroAdamTelemetry:
    """The statistics of one MicroAdam step, per parameter name, per param group and in total."""

    per_parameter: dict[str, MicroAdamStatistics] = field(default_factory=dict)
    per_group: list[MicroAdamStatistics] = field(default_factory=list)

    @property
    def total(self) -> MicroAdamStatistics:
        """Summed over all parameters that had a gradient."""
        return sum(self.per_group, MicroAdamStatistics())

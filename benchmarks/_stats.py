"""Distribution-free statistics of the benchmarks: percentiles, their confidence intervals, histograms.

Latencies are not normal (a long right tail, often several modes), so the
intervals here assume nothing about their distribution:

* a percentile's 95% interval is a pair of order statistics, the ranks
  ``n q ± 1.96 sqrt(n q (1 - q))`` (the normal approximation of the
  binomial count of samples below the true percentile), so a p99 needs
  about 1,000 samples before its interval closes below the largest one;
* a proportion's (recall@1, the share of right answers) is Wilson's score
  interval, which stays within [0, 1] and is sound near 1;
* a ratio of two percentiles gets the conservative range of the two
  intervals' bounds divided crosswise (both hold with at least 90%).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "MIN_P99_SAMPLES",
    "Z95",
    "Histogram",
    "histogram",
    "percentile",
    "quantile_interval",
    "ratio_range",
    "wilson_interval",
]

#: The normal quantile of a two-sided 95% interval.
Z95 = 1.959963984540054
#: Below this many samples a p99 is not printed: its 95% interval reaches the largest sample.
MIN_P99_SAMPLES = 1_000
#: Histogram buckets per factor of ten (each about 6% wide).
BUCKETS_PER_DECADE = 40


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Return the ``q``-th percentile of already sorted values.

    Percentiles interpolate linearly between the closest ranks (the common
    "type 7" definition, as numpy's default).

    Args:
        sorted_values: Non-empty values in ascending order.
        q: Percentile in ``[0, 100]``.

    Raises:
        ValueError: If ``sorted_values`` is empty or ``q`` is out of range.
    """
    if not sorted_values:
        msg = "percentile of no values"
        raise ValueError(msg)
    if not 0.0 <= q <= 100.0:
        msg = f"percentile must be within [0, 100], got {q}"
        raise ValueError(msg)
    position = (len(sorted_values) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    fraction = position - low
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * fraction


def quantile_interval(sorted_values: Sequence[float], q: float, z: float = Z95) -> tuple[float, float] | None:
    """A distribution-free confidence interval of the ``q``-quantile (``q`` in (0, 1)).

    The bounds are the order statistics of ranks ``floor(n q - z s)`` and
    ``ceil(n q + z s)`` (1-based), ``s = sqrt(n q (1 - q))``. Returns None
    when either rank falls outside the samples: too few of them to bound
    the quantile on that side.
    """
    n = len(sorted_values)
    if n == 0 or not 0.0 < q < 1.0:
        return None
    spread = z * math.sqrt(n * q * (1.0 - q))
    low = math.floor(n * q - spread)
    high = math.ceil(n * q + spread)
    if low < 1 or high > n:
        return None
    return sorted_values[low - 1], sorted_values[high - 1]


def ratio_range(
    numerator: tuple[float, float] | None, denominator: tuple[float, float] | None
) -> tuple[float, float] | None:
    """The conservative range of a ratio of two quantities known within intervals (None if either is)."""
    if numerator is None or denominator is None or denominator[0] <= 0:
        return None
    return numerator[0] / denominator[1], numerator[1] / denominator[0]


def wilson_interval(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval of a proportion (95% by default); (0, 1) with no trials."""
    if trials <= 0:
        return 0.0, 1.0
    p = successes / trials
    z2 = z * z
    centre = (p + z2 / (2 * trials)) / (1 + z2 / trials)
    half = z / (1 + z2 / trials) * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials))
    return max(0.0, centre - half), min(1.0, centre + half)


class Histogram(msgspec.Struct, frozen=True, kw_only=True):
    """Latencies counted in logarithmic buckets, compact and bounded (a few hundred buckets at most).

    Bucket ``k`` holds the latencies in ``[10 ** (k / per_decade),
    10 ** ((k + 1) / per_decade))`` nanoseconds; only non-empty buckets are
    listed, as ``[k, count]`` in ascending order.
    """

    per_decade: int = BUCKETS_PER_DECADE
    buckets: list[tuple[int, int]] = msgspec.field(default_factory=list)

    def lower_bound_us(self, k: int) -> float:
        """The lower edge of bucket ``k`` in microseconds."""
        return float(10 ** (k / self.per_decade) / 1_000)


def histogram(latencies_ns: Sequence[int], per_decade: int = BUCKETS_PER_DECADE) -> Histogram:
    """Count ``latencies_ns`` into a :class:`Histogram`."""
    counts: dict[int, int] = {}
    for ns in latencies_ns:
        k = math.floor(math.log10(max(ns, 1)) * per_decade)
        counts[k] = counts.get(k, 0) + 1
    return Histogram(per_decade=per_decade, buckets=sorted(counts.items()))

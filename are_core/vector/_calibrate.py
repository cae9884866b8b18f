"""Recall calibration: the smallest search expansion that finds what an exact search finds.

An HNSW search keeps ``ef`` candidates while it walks the graph: more finds
the true nearest neighbour more often and costs more. How many are enough
depends on the data (its intrinsic dimension) and on the queries, so no
fixed default is right for every namespace. Calibration measures it on the
owner's own queries: each is searched at every expansion of :data:`LADDER`
and exactly (the reference), and the smallest expansion whose recall@1
provably clears the target (a one-sided 95% lower bound) is chosen.

The searches run in a forked child (:meth:`VectorIndex.search_in_child`),
at idle priority, against the index as it was at the fork: the owner goes
on serving meanwhile, and no lock is shared.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import msgspec
import numpy as np

__all__ = ["LADDER", "Calibration", "choose_expansion", "wilson_lower_bound"]

LADDER: tuple[int, ...] = (8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 64, 96, 128, 192, 256)
"""The search expansions calibration tries, smallest first.

Close together at the low end, where a search's cost and its tail grow
fastest with the expansion: at 1M 8-bit vectors, ef 12 took 196 µs median
and 292 µs p99 in-process, ef 14 238 / 390 µs, ef 16 247 / 430 µs (the
tail follows how many distances a query needs, correlation 0.6 to 0.8).
"""

_Z95 = 1.6448536269514722  # one-sided 95%


class Calibration(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What one calibration measured and chose.

    ``recall`` is the recall@1 measured at ``expansion`` over ``samples``
    queries (those whose exact nearest neighbour was close enough to
    answer), ``lower_bound`` its one-sided 95% Wilson lower bound; ``met``
    says whether that bound reached ``target``. ``entries`` is the size of
    the index searched.
    """

    expansion: int
    recall: float
    lower_bound: float
    met: bool
    samples: int
    queries: int
    entries: int
    target: float
    time_ns: int
    ladder: tuple[int, ...] = ()


def wilson_lower_bound(successes: int, trials: int, z: float = _Z95) -> float:
    """The Wilson score interval's lower end for ``successes`` of ``trials`` (0 with no trials)."""
    if trials <= 0:
        return 0.0
    p = successes / trials
    z2 = z * z
    centre = p + z2 / (2 * trials)
    spread = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials))
    return max(0.0, (centre - spread) / (1 + z2 / trials))


def choose_expansion(
    found: Mapping[int, tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]],
    reference: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]],
    thresholds: np.ndarray[Any, Any],
    *,
    target: float,
    similarity_error: float,
    entries: int,
    time_ns: int,
    min_samples: int = 100,
) -> Calibration | None:
    """The smallest expansion whose recall@1 clears ``target`` with 95% confidence.

    Args:
        found: Per expansion, the top key and its similarity for each query.
        reference: The same from an exact search.
        thresholds: Per query, the similarity a hit needed.
        target: The recall@1 to keep, in (0, 1).
        similarity_error: How far the index's similarities may be from exact
            ones (``VectorIndex.similarity_error``): a query counts when its
            exact neighbour is within it of the threshold.
        entries: The size of the index searched (recorded).
        time_ns: When (recorded).
        min_samples: Fewer counting queries decide nothing (None).

    A query counts only when its exact nearest neighbour could answer it
    (similarity at least its threshold, less the error): for the others
    every expansion gives the same miss. A top key that differs from the
    reference's but is as similar (a duplicate vector) is right. When no
    expansion clears the target, the largest is returned (``met`` False).
    """
    ref_keys, ref_sims = reference
    counting = ref_sims >= np.asarray(thresholds, dtype=np.float32) - similarity_error
    samples = int(counting.sum())
    if samples < min_samples or not found:
        return None
    best: Calibration | None = None
    ladder = tuple(sorted(found))
    for expansion in ladder:
        keys, sims = found[expansion]
        right = (keys == ref_keys) | (sims >= ref_sims - 1e-6)
        correct = int((right & counting).sum())
        bound = wilson_lower_bound(correct, samples)
        best = Calibration(
            expansion=expansion,
            recall=correct / samples,
            lower_bound=bound,
            met=bound >= target,
            samples=samples,
            queries=int(ref_keys.size),
            entries=entries,
            target=target,
            time_ns=time_ns,
            ladder=ladder,
        )
        if best.met:
            return best
    return best

# Types of the C ranking loop (are_core/router/_ranking.c).

from typing_extensions import Buffer

def eligible(
    keys: Buffer,
    cards: Buffer,
    workers: Buffer,
    worker_base: int,
    row_tier: Buffer,
    unavailable_tier: float,
    matrix: Buffer,
    query: Buffer,
    include_unavailable: bool,
    out_rows: Buffer,
    out_sims: Buffer,
    /,
) -> int: ...
def rank(
    rows: Buffer,
    sims: Buffer,
    count: int,
    threshold: float,
    row_cost: Buffer,
    row_tier: Buffer,
    row_load: Buffer,
    cost_biased: bool,
    weight: float,
    top_k: int,
    out_positions: Buffer,
    out_scores: Buffer,
    /,
) -> tuple[int, int, float]: ...

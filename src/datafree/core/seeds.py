"""Seeds derived from a user's seed, in one place: each consumer gets its own stream, the same on every run."""
from __future__ import annotations

STREAM = 7919  # a source's own RNG (rounds, generator steps) and the KD loop's sampling
SHARD = 1_000_003  # a synthesis shard's / batch's starting noise


def derived_seed(seed: int, kind: str = "stream", offset: int = 0) -> int:
    """The seed for one consumer of `seed`: kind 'stream' (sampling, rounds) or 'shard' (a batch's noise), plus `offset`
    (the batch, round or step)."""
    if kind not in ("stream", "shard"):
        raise ValueError(f"unknown seed kind {kind!r}")
    return seed * (STREAM if kind == "stream" else SHARD) + offset

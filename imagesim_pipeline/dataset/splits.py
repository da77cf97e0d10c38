"""Spatial-block splits: every chip of one block (a coarser ARD cell) lands in the same split.

A block's split comes from a hash of its id (and a seed), not from its rank among the blocks
present, so a block keeps its split when more cells are added: a growing dataset never moves a
place from test into train.
"""

from __future__ import annotations

import hashlib

SPLITS = ("train", "val", "test")


def unit_hash(text: str, seed: int = 0) -> float:
    """A stable pseudo-random number in [0, 1) for ``text``."""
    digest = hashlib.blake2b(f"{seed}:{text}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def footprint_of(chip: str) -> str:
    """``Z35-0131…_CATALOG.jpg`` -> ``Z35-0131…`` (the chip's grid cell)."""
    return chip.split("_", 1)[0]


def block_of(footprint: str, zoom: int) -> str:
    """The ancestor cell id at ``zoom`` of a cell id (``Z<zone>-<quadkey>``)."""
    zone, quadkey = footprint.split("-", 1)
    if len(quadkey) < zoom:
        raise ValueError(f"{footprint} is coarser than the block zoom {zoom}")
    return f"{zone}-{quadkey[:zoom]}"


def split_of(block: str, fractions: dict[str, float], seed: int = 0) -> str:
    """The split of a block, by the cumulative ``fractions`` (train, val, test)."""
    u = unit_hash(block, seed)
    total = 0.0
    for name in SPLITS:
        total += fractions.get(name, 0.0)
        if u < total:
            return name
    return SPLITS[-1]


def check_fractions(fractions: dict[str, float]) -> None:
    """Raise ``ValueError`` unless the split fractions are within 0..1 and sum to 1."""
    unknown = set(fractions) - set(SPLITS)
    if unknown or any(v < 0 for v in fractions.values()) or abs(sum(fractions.values()) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must be non-negative shares of {', '.join(SPLITS)} summing to 1; "
                         f"got {fractions}")


__all__ = ["SPLITS", "block_of", "check_fractions", "footprint_of", "split_of", "unit_hash"]

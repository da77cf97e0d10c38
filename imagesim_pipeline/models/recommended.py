"""The project's measured choice of input size, pooling and embedding strategy (no heavy imports: the
Dagster definitions read it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Recommended:
    """The project's defaults for its entry points (``smlc_model``'s config, ``train_model``'s CLI), chosen by
    ``benchmarks/bench_embeddings.py``; the LightningModule's own defaults stay the reference SMLC's."""

    input_size: int = 320
    pooling: str = "multiscale"
    strategy: str = "metric"
    label_weight: float = 2.0  # the embedding followed by the label probabilities (benchmarks/bench_retrieval.py)


RECOMMENDED = Recommended()


__all__ = ["RECOMMENDED", "Recommended"]

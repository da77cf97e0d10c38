"""Retrieval assets: ``chip_embeddings`` per cell, the ``similarity_index`` and ``chip_changes``."""

import time
from dataclasses import replace

import numpy as np
from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    BackfillPolicy,
    Config,
    MaterializeResult,
    MetadataValue,
    asset,
)
from pydantic import Field

from imagesim_pipeline.orchestration.chip_assets import chips
from imagesim_pipeline.orchestration.compute import DATAMAKER_TAGS, INDEX_POOL
from imagesim_pipeline.orchestration.failures import TRANSIENT_RETRY, step_errors
from imagesim_pipeline.orchestration.metadata import counts_table, plot, rounded, significant
from imagesim_pipeline.orchestration.model_assets import onnx_model
from imagesim_pipeline.orchestration.partitions import ard_cells, registered_cell
from imagesim_pipeline.orchestration.resources import BucketResource
from imagesim_pipeline.storage import layout
from imagesim_pipeline.storage.layout import CHANGES


class ModelChoice(Config):
    """Which published model a search asset uses."""
    name: str = Field(default="smlc", description="model name: models/<name>/ in the bucket")
    version: str = Field(default="", description="model version (default: the newest published one, latest.json)")


class EmbeddingsConfig(ModelChoice):
    """How chip_embeddings runs the encoder."""
    threads: int = Field(default=0, description="onnxruntime intra-op threads (0: every core)")
    batch_size: int = Field(default=32, description="images per onnxruntime call")
    score_changes: bool = Field(default=True, description="also score each place's pairs of acquisitions for "
                                "change from the same pass (change maps; chip_changes does it otherwise)")


def _version(store, config: ModelChoice) -> str:
    from imagesim_pipeline.models.registry import get_pointer

    return config.version or get_pointer(store, config.name, "latest")


@asset(partitions_def=ard_cells, deps=[chips, onnx_model], group_name="search", kinds={"parquet", "onnx"},
       op_tags=DATAMAKER_TAGS, retry_policy=TRANSIENT_RETRY, backfill_policy=BackfillPolicy.single_run(),
       description="Every all-data chip of the cell encoded by the published ONNX model: GeoParquet at "
                   "`embeddings/<model version>/<zone>/<cell>.parquet` (chip, place, catalog id, date, WGS84 "
                   "geometry, embedding, label probabilities). Unchanged chips are not encoded again.")
def chip_embeddings(context: AssetExecutionContext, config: EmbeddingsConfig, bucket: BucketResource
                    ) -> MaterializeResult:
    """Encode the cells' chips and write their embeddings (the asset's description says more)."""
    from imagesim_pipeline.embeddings.cell_embeddings import (
        EmbeddingsError,
        embed_cell,
        vectors,
    )
    from imagesim_pipeline.embeddings.encoder import OnnxEncoder
    from imagesim_pipeline.errors import ImagesimError, TransientError

    store = bucket.get_bucket()
    # one cell, or a range of them (a backfill or a re-encode in one run)
    cells = [registered_cell(context, key).id for key in context.partition_keys]
    with step_errors():
        encoder = OnnxEncoder.from_bucket(store, config.name, _version(store, config), config.threads,
                                          config.batch_size)
    totals = {"chips": 0, "encoded": 0, "reused_unchanged": 0, "unreadable": 0, "repaired": 0, "pairs_scored": 0,
              "pairs_kept": 0}
    predicted = np.zeros(len(encoder.labels), dtype=np.int64)
    seconds = 0.0
    failed: dict[str, str] = {}
    for n, cell in enumerate(cells, 1):
        if len(cells) > 1:
            context.log.info(f"[{n}/{len(cells)}] {cell}")
        try:  # one bad cell never fails the others: they are written, the bad ones named at the end
            result = embed_cell(store, encoder, cell, progress=context.log.info, warn=context.log.warning,
                                changes=config.score_changes)
        except TransientError:
            raise
        except ImagesimError as exc:
            context.log.error(f"{cell}: {exc}")
            failed[cell] = str(exc)
            continue
        totals["repaired"] += int(result.repaired)
        for chip in result.unreadable[:20]:
            context.log.warning(f"unreadable chip left out: {chip}")
        if result.chips:
            predicted += encoder.predicted(vectors(result.table, "probs")).sum(axis=0)
        for name, value in (("chips", result.chips), ("encoded", result.encoded),
                            ("reused_unchanged", result.reused), ("unreadable", len(result.unreadable)),
                            ("pairs_scored", result.pairs_scored), ("pairs_kept", result.pairs_kept)):
            totals[name] += value
        seconds += result.seconds
    if failed:
        with step_errors():
            raise EmbeddingsError(f"{len(failed)} of {len(cells)} cell(s) could not be encoded (the other "
                                  f"{len(cells) - len(failed)} were written): " + "; ".join(
                                      f"{cell}: {why}" for cell, why in list(failed.items())[:5]))
    histogram = {label: int(n) for label, n in zip(encoder.labels, predicted)}
    return MaterializeResult(metadata={
        "model_version": encoder.version,
        "cells": len(cells),
        **totals,
        "chips_per_second": round(totals["encoded"] / max(seconds, 1e-9), 1),
        "execution_provider": encoder.provider,
        "predicted_labels": MetadataValue.md(counts_table(("label", "chips"), sorted(histogram.items()))),
        "location": store.url(layout.embeddings_key(encoder.version, cells[0]) if len(cells) == 1
                              else layout.embeddings_prefix(encoder.version)),
    })


class IndexConfig(ModelChoice):
    """Which index kind similarity_index builds."""
    kind: str = Field(default="auto", description="auto (exact while small), flat, an approximate kind, or "
                                                   "ivf_rabitq (quantised: ~92 bytes of RAM per vector)")
    exact_below: int = Field(default=200_000, description="auto: exact search below this many vectors")


@asset(deps=[chip_embeddings], group_name="search", kinds={"faiss", "postgres"}, op_tags=DATAMAKER_TAGS,
       retry_policy=TRANSIENT_RETRY, pool=INDEX_POOL,
       check_specs=[AssetCheckSpec("finds_itself", asset="similarity_index",
                                   description="Indexed chips queried with their own embedding come back first")],
       description="The similarity index (cosine) over every chip embedding of one model version, on the "
                   "configured engine: faiss (default) at `index/<model version>/`, a new build folder each time, "
                   "the manifest last, extended when only new cells arrived, rebuilt otherwise; pgvector: the "
                   "version's PostgreSQL table, cell by cell. When its check passes it moves "
                   "`models/<name>/serving.json` to the version: search then serves it.")
def similarity_index(context: AssetExecutionContext, config: IndexConfig, bucket: BucketResource
                     ) -> MaterializeResult:
    """Write the version's index, check it finds its own chips, and serve it when it does."""
    from imagesim_pipeline.models.registry import require_published
    from imagesim_pipeline.search.engine import SearchEngine
    from imagesim_pipeline.search.index import IndexParams
    from imagesim_pipeline.search.serving import finds_itself, serve_if_sound
    from imagesim_pipeline.search.stores import write_index
    from imagesim_pipeline.storage.layout import index_key, model_pointer_key

    store = bucket.get_bucket()
    with step_errors():
        version = _version(store, config)
        require_published(store, config.name, version)
        params = replace(IndexParams(), kind=config.kind, exact_below=config.exact_below)
        build = write_index(store, version, params, progress=context.log.info, warn=context.log.warning)
        engine = SearchEngine(store, config.name, version)
    check = finds_itself(engine)
    with step_errors():
        serving = serve_if_sound(store, config.name, version, check)
    if serving.moved:  # the second phase of a promotion: search now serves this version
        context.log.info(f"search now serves {config.name}/{version} (was {serving.previous or 'nothing'})")
    return MaterializeResult(
        metadata={
            "model_version": version,
            "mode": build.mode,
            "vectors": build.vectors,
            "cells": build.cells,
            "added": build.added,
            "build": build.build,
            "left_out_cells": MetadataValue.json(list(build.left_out)),
            "serving": serving.version,
            "serving_pointer": store.url(model_pointer_key(config.name, "serving")),
            "seconds": round(build.seconds, 2),
            "index": MetadataValue.json(rounded(build.description)),
            "location": store.url(index_key(version, "")),
        },
        check_results=[AssetCheckResult(check_name="finds_itself", passed=check.passed,
                                        metadata={"sampled": check.sampled,
                                                  "first_is_itself": significant(check.first_is_itself)})],
    )


class ChangesConfig(ModelChoice):
    """How chip_changes scores and shows the changes."""
    min_group: int = Field(default=30, description="fewest places to normalise a kind's changes on their own")
    top: int = Field(default=8, description="changed pairs shown as thumbnails")
    threads: int = Field(default=0, description="onnxruntime intra-op threads for the feature maps (0: every core)")


@asset(deps=[chip_embeddings], group_name="search", kinds={"parquet"}, op_tags=DATAMAKER_TAGS,
       retry_policy=TRANSIENT_RETRY, pool=INDEX_POOL,
       description="Change between consecutive acquisitions of every place: the published model's feature maps "
                   "of both chips compared location by location (a change map per place, in its cell's "
                   "`changes/<model version>/cells/<zone>/<cell>.parquet`), scored by the mean of each map's "
                   "most changed twentieth, most changed first, at `changes/<model version>/changes.parquet`. "
                   "A model exported without feature maps gets the embedding distance instead, with a warning.")
def chip_changes(context: AssetExecutionContext, config: ChangesConfig, bucket: BucketResource) -> MaterializeResult:
    """Score every place's consecutive acquisitions for change and write the change table."""
    from imagesim_pipeline.changes.detect import change_table, write_changes
    from imagesim_pipeline.changes.feature_maps import OnnxFeatureMaps
    from imagesim_pipeline.changes.report import histogram_png, pairs_sheet, score_summary
    from imagesim_pipeline.changes.spatial import ChipPairScorer

    store = bucket.get_bucket()
    started = time.perf_counter()
    with step_errors():
        version = _version(store, config)
        maps = OnnxFeatureMaps.from_bucket(store, config.name, version, threads=config.threads)
        if maps is None:
            context.log.warning(f"model {config.name}/{version} was exported before feature maps were part of "
                                "model.onnx: its change scores are the embedding distance (no change maps); "
                                "train and publish a new version (trainer_job) for spatial change maps")
        scorer = ChipPairScorer(maps) if maps is not None else None
        table = change_table(store, version, config.min_group, progress=context.log.debug, warn=context.log.warning,
                             scorer=scorer)
        key = write_changes(store, version, table)
    seconds = time.perf_counter() - started
    top = table.slice(0, config.top).to_pylist()
    scores = table.column("score").to_numpy(zero_copy_only=False)
    method = table.column("method")[0].as_py()
    return MaterializeResult(metadata={
        "model_version": version,
        "method": method,
        "pairs": table.num_rows,
        "above_3": int((scores > 3).sum()),
        "maps": sum(1 for m in table.column("map").to_pylist() if m),
        "seconds": round(seconds, 2),
        "pairs_per_s": round(table.num_rows / max(seconds, 1e-9), 1),
        "top": MetadataValue.md(counts_table(("#", "place", "before", "after", "score", "kind"), [
            (i + 1, r["place"], r["date_before"], r["date_after"], round(r["score"], 2), r["kind"])
            for i, r in enumerate(top)])),
        "score_summary": MetadataValue.md(counts_table(*_columns(score_summary(scores)))),
        "histogram": plot(histogram_png(scores, method), "change scores"),
        "top_pairs": plot(pairs_sheet(store, top), "before | after | change map"),
        "location": store.url(key),
        "maps_location": store.url(f"{CHANGES}{version}/cells/"),
    })


def _columns(figures: dict[str, float]) -> tuple[tuple[str, ...], list[tuple]]:
    """A one-row table of named figures: (header, rows) for :func:`counts_table`."""
    return tuple(figures), [tuple(figures.values())]

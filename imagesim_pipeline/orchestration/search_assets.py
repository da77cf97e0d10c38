"""Retrieval assets: ``chip_embeddings`` per cell, the ``similarity_index`` and ``chip_changes``."""

import io
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
from imagesim_pipeline.orchestration.label_assets import _counts_table, _image
from imagesim_pipeline.orchestration.model_assets import onnx_model
from imagesim_pipeline.orchestration.compute import DATAMAKER_TAGS, INDEX_POOL
from imagesim_pipeline.orchestration.failures import TRANSIENT_RETRY, step_errors
from imagesim_pipeline.orchestration.partitions import ard_cells, registered_cell
from imagesim_pipeline.orchestration.resources import BucketResource


class ModelChoice(Config):
    name: str = Field(default="smlc", description="model name: models/<name>/ in the bucket")
    version: str = Field(default="", description="model version (default: the newest published one, latest.json)")


class EmbeddingsConfig(ModelChoice):
    threads: int = Field(default=0, description="onnxruntime intra-op threads (0: every core)")
    batch_size: int = Field(default=32, description="images per onnxruntime call")


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
    from imagesim_pipeline.embeddings.cell_embeddings import (
        EmbeddingsError,
        embed_cell,
        embeddings_key,
        vectors,
        version_prefix,
    )
    from imagesim_pipeline.embeddings.encoder import OnnxEncoder
    from imagesim_pipeline.errors import ImagesimError, TransientError

    store = bucket.get_bucket()
    # one cell, or a range of them (a backfill or a re-encode in one run)
    cells = [registered_cell(context, key).id for key in context.partition_keys]
    with step_errors():
        encoder = OnnxEncoder.from_bucket(store, config.name, _version(store, config), config.threads,
                                          config.batch_size)
    totals = {"chips": 0, "encoded": 0, "reused_unchanged": 0, "unreadable": 0, "repaired": 0}
    predicted = np.zeros(len(encoder.labels), dtype=np.int64)
    seconds = 0.0
    failed: dict[str, str] = {}
    for n, cell in enumerate(cells, 1):
        if len(cells) > 1:
            context.log.info(f"[{n}/{len(cells)}] {cell}")
        try:  # one bad cell never fails the others: they are written, the bad ones named at the end
            result = embed_cell(store, encoder, cell, progress=context.log.info, warn=context.log.warning)
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
                            ("reused_unchanged", result.reused), ("unreadable", len(result.unreadable))):
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
        "predicted_labels": MetadataValue.md(_counts_table(("label", "chips"), sorted(histogram.items()))),
        "location": store.url(embeddings_key(encoder.version, cells[0]) if len(cells) == 1
                              else version_prefix(encoder.version)),
    })


class IndexConfig(ModelChoice):
    kind: str = Field(default="auto", description="auto (exact while small), flat, or an approximate kind")
    exact_below: int = Field(default=200_000, description="auto: exact search below this many vectors")


@asset(deps=[chip_embeddings], group_name="search", kinds={"faiss"}, op_tags=DATAMAKER_TAGS,
       retry_policy=TRANSIENT_RETRY, pool=INDEX_POOL,
       check_specs=[AssetCheckSpec("finds_itself", asset="similarity_index",
                                   description="Indexed chips queried with their own embedding come back first")],
       description="A FAISS index (cosine) over every chip embedding of one model version with its items table, "
                   "at `index/<model version>/` (a new build folder each time, the manifest last); extended when "
                   "only new cells arrived, rebuilt otherwise. When its check passes it moves "
                   "`models/<name>/serving.json` to the version: search then serves it.")
def similarity_index(context: AssetExecutionContext, config: IndexConfig, bucket: BucketResource
                     ) -> MaterializeResult:
    from imagesim_pipeline.models.registry import read_pointer, require_published, set_pointer
    from imagesim_pipeline.search.catalog import build_similarity_index
    from imagesim_pipeline.search.engine import SearchEngine
    from imagesim_pipeline.search.index import IndexParams, normalise, search
    from imagesim_pipeline.storage.layout import index_key, model_pointer_key

    store = bucket.get_bucket()
    with step_errors():
        version = _version(store, config)
        require_published(store, config.name, version)
        params = replace(IndexParams(), kind=config.kind, exact_below=config.exact_below)
        build = build_similarity_index(store, version, params, progress=context.log.info, warn=context.log.warning)
        engine = SearchEngine(store, config.name, version)
    rng = np.random.default_rng(0)
    sample = rng.choice(len(engine), size=min(100, len(engine)), replace=False)
    found = 0
    for i in sample:
        _, ids = search(engine.index, normalise(engine.vector_of_chip(engine.chips[i])[None]), 1)
        found += int(ids[0, 0] == i)
    share = found / max(len(sample), 1)
    with step_errors():
        serving = read_pointer(store, config.name, "serving")
        moved = share >= 0.95 and (serving is None or serving.version != version)
        if moved:  # the second phase of a promotion: search now serves this version
            set_pointer(store, config.name, "serving", version)
            context.log.info(f"search now serves {config.name}/{version} (was "
                             f"{serving.version if serving else 'nothing'})")
    return MaterializeResult(
        metadata={
            "model_version": version,
            "mode": build.mode,
            "vectors": build.vectors,
            "cells": build.cells,
            "added": build.added,
            "build": build.build,
            "left_out_cells": MetadataValue.json(list(build.left_out)),
            "serving": version if moved else (serving.version if serving else "none"),
            "serving_pointer": store.url(model_pointer_key(config.name, "serving")),
            "seconds": round(build.seconds, 2),
            "index": MetadataValue.json(build.description),
            "location": store.url(index_key(version, "")),
        },
        check_results=[AssetCheckResult(check_name="finds_itself", passed=share >= 0.95,
                                        metadata={"sampled": len(sample), "first_is_itself": share})],
    )


class ChangesConfig(ModelChoice):
    min_group: int = Field(default=30, description="fewest places to normalise a kind's distances on its own")
    top: int = Field(default=8, description="changed pairs shown as thumbnails")


def _pairs_sheet(store, rows: list[dict]) -> bytes:
    from imagesim_pipeline.chips.contact_sheet import contact_sheet
    from imagesim_pipeline.chips.naming import ChipName, chip_key

    items = []
    for n, row in enumerate(rows):
        for side in ("before", "after"):
            chip = row[f"chip_{side}"]
            items.append((f"{n:02d}{side[0]} {row['score']:.1f} {chip.split('_')[1]}",
                          store.read_bytes(chip_key(ChipName.parse(chip)))))
    return contact_sheet(items, columns=4, limit=len(items))


def _histogram_png(scores: np.ndarray) -> bytes:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3))
    ax = fig.subplots()
    ax.hist(np.clip(scores, -5, 30), bins=70, color="#4477aa")
    ax.set_yscale("log")
    ax.set_xlabel("change score (robust z within acquisition pair and kind; clipped to -5..30)")
    ax.set_ylabel("place pairs")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


@asset(deps=[chip_embeddings], group_name="search", kinds={"parquet"}, op_tags=DATAMAKER_TAGS,
       retry_policy=TRANSIENT_RETRY, pool=INDEX_POOL,
       description="Change scores between consecutive acquisitions of every place, from the embeddings "
                   "(cosine distance, robust z-score per acquisition pair and kind), most changed first, at "
                   "`changes/<model version>/changes.parquet`.")
def chip_changes(context: AssetExecutionContext, config: ChangesConfig, bucket: BucketResource) -> MaterializeResult:
    from imagesim_pipeline.changes.detect import change_table, write_changes

    store = bucket.get_bucket()
    started = time.perf_counter()
    with step_errors():
        version = _version(store, config)
        table = change_table(store, version, config.min_group, progress=context.log.debug, warn=context.log.warning)
        key = write_changes(store, version, table)
    top = table.slice(0, config.top).to_pylist()
    scores = table.column("score").to_numpy()
    return MaterializeResult(metadata={
        "model_version": version,
        "pairs": table.num_rows,
        "above_3": int((scores > 3).sum()),
        "seconds": round(time.perf_counter() - started, 2),
        "top": MetadataValue.md(_counts_table(("place", "before", "after", "score", "kind"), [
            (r["place"], r["date_before"], r["date_after"], round(r["score"], 2), r["kind"]) for r in top])),
        "histogram": MetadataValue.md(_image(_histogram_png(scores), "change scores")),
        "top_pairs": MetadataValue.md(_image(_pairs_sheet(store, top), "before | after")),
        "location": store.url(key),
    })

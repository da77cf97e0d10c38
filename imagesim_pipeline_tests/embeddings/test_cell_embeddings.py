"""chip_embeddings' domain code: GeoParquet per cell and model version, incremental, unreadable chips."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from imagesim_pipeline.chips.naming import ChipName, chip_key
from imagesim_pipeline.embeddings.cell_embeddings import embed_cell, kept_chips, vectors
from imagesim_pipeline.embeddings.encoder import EncoderError, OnnxEncoder
from imagesim_pipeline.models.registry import ModelNotFoundError
from imagesim_pipeline.storage import layout, open_bucket


@pytest.fixture
def model_bucket(demo_model, tmp_path):
    root, version = demo_model
    shutil.copytree(root, tmp_path / "bucket")
    return open_bucket(tmp_path / "bucket"), version


def _cells(bucket) -> list[str]:
    return sorted(o.key.rsplit("/", 1)[1][:-5] for o in bucket.list("chips/") if "/_manifests/" in o.key)


def test_a_cell_becomes_geoparquet_with_embeddings_that_match_the_model(model_bucket):
    import geopandas as gpd

    bucket, version = model_bucket
    encoder = OnnxEncoder.from_bucket(bucket, version=version, threads=1)
    cell = max(_cells(bucket), key=lambda c: len(kept_chips(bucket, c)))
    result = embed_cell(bucket, encoder, cell)
    kept = kept_chips(bucket, cell)
    assert result.chips == result.encoded == len(kept) > 0 and result.reused == 0
    with bucket.local_copy(layout.embeddings_key(version, cell)) as path:
        frame = gpd.read_parquet(path)
    assert frame.crs.to_epsg() == 4326 or frame.crs.to_string() == "OGC:CRS84"
    assert list(frame.columns[:6]) == ["chip", "place", "cell", "catalog_id", "date", "geometry"]
    row = frame.iloc[0]
    name = ChipName.parse(row["chip"])
    assert row["place"] == name.cell.id and row["cell"] == cell and row["catalog_id"] == name.catalog_id
    # the footprint is the chip's own grid cell, in longitude/latitude
    assert row.geometry.symmetric_difference(name.cell.wgs84_geometry).area < 1e-3 * row.geometry.area
    # the stored embedding is what the ONNX model gives for the chip's JPEG
    again = encoder.encode([bucket.read_bytes(chip_key(name))])
    assert np.allclose(vectors(result.table)[0], again.embeddings[0], atol=1e-5)
    assert np.allclose(vectors(result.table, "probs")[0], again.probs[0], atol=1e-6)
    meta = json.loads(result.table.schema.metadata[b"imagesim"])
    assert meta["version"] == version and len(meta["thresholds"]) == len(meta["labels"])


def test_re_running_encodes_only_new_or_changed_chips_and_skips_unreadable_ones(model_bucket):
    bucket, version = model_bucket
    encoder = OnnxEncoder.from_bucket(bucket, version=version, threads=1)
    cell = max(_cells(bucket), key=lambda c: len(kept_chips(bucket, c)))
    first = embed_cell(bucket, encoder, cell)
    assert embed_cell(bucket, encoder, cell).encoded == 0  # nothing changed: nothing encoded
    # one chip re-chipped with other content (other bytes), one truncated
    manifest = json.loads(bucket.read_text(layout.chip_manifest_key(cell)))
    kept = [r for r in manifest["chips"] if r["written"] and r["class"] == "all data"]
    changed, broken = kept[0], kept[1]
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buffer, "JPEG")
    bucket.write_bytes(chip_key(ChipName.parse(changed["chip"])), buffer.getvalue())
    changed["bytes"] = len(buffer.getvalue())
    data = bucket.read_bytes(chip_key(ChipName.parse(broken["chip"])))
    bucket.write_bytes(chip_key(ChipName.parse(broken["chip"])), data[: len(data) // 4])
    broken["bytes"] = len(data) // 4
    bucket.write_text(layout.chip_manifest_key(cell), json.dumps(manifest))
    again = embed_cell(bucket, encoder, cell)
    assert again.encoded == 1 and again.reused == first.chips - 2
    assert again.unreadable == [broken["chip"]] and again.chips == first.chips - 1
    chips = again.table.column("chip").to_pylist()
    old = dict(zip(first.table.column("chip").to_pylist(), vectors(first.table)))
    new = dict(zip(chips, vectors(again.table)))
    assert not np.allclose(new[changed["chip"]], old[changed["chip"]])
    assert np.array_equal(new[kept[2]["chip"]], old[kept[2]["chip"]])


def test_a_missing_model_says_what_to_materialize(tmp_path):
    with pytest.raises(ModelNotFoundError, match="is not published .*materialize onnx_model"):
        OnnxEncoder.from_bucket(open_bucket(tmp_path), version="v-none")

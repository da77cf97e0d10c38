"""End to end on the demo world: chip_labels and training_dataset through Dagster, checked by hand.

The hand-checked chips were looked at (chip image beside the OSM it was rendered from) and
their labels written down: what must be there, and what must not.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import shapely
from dagster import AssetCheckKey, AssetKey, DagsterInstance

from imagesim_pipeline.ard.grid import ArdCell
from imagesim_pipeline.labels import (
    load_vocabulary,
    osm_features,
    read_cell_labels,
    read_sparse_csv,
)
from imagesim_pipeline.labels.labeller import footprint_boxes, match_labels
from imagesim_pipeline.labels.osm_geometry import LINE, POLYGON
from imagesim_pipeline.osm.store import read_osm_data
from imagesim_pipeline.storage import open_bucket
from imagesim_pipeline_tests.test_e2e import run_cli

HAND_CHECKED = {
    # chip: (labels that must be there, labels that must not)
    "Z35-01313311113110002_KOTKAA.jpg": ({"farmland"}, "all others"),  # one uniform field
    "Z35-01313310300302301_HELSINKIA.jpg": (set(), "all others"),  # bare open ground, two dots
    "Z35-01313310300302323_HELSINKIA.jpg": ({"railway", "water", "grass_park", "minor_road"},  # station tracks, pond
                                            {"building", "farmland", "forest", "residential"}),
    "Z35-01313310300302233_HELSINKIA.jpg": ({"bare_ground", "building", "grass_park", "minor_road"},
                                            {"water", "railway", "farmland", "forest"}),
    "Z35-01313311113101021_KOTKAA.jpg": ({"forest", "industrial_commercial"}, {"water", "farmland", "building"}),
}


@pytest.fixture(scope="module")
def materialized(world, tmp_path_factory):
    root, cells = world
    work = tmp_path_factory.mktemp("demo-e2e")
    bucket = work / "bucket"
    shutil.copytree(root, bucket)
    home = work / "dagster_home"
    home.mkdir()
    shutil.copy("dagster.yaml", home / "dagster.yaml")
    env = {"IMAGESIM_BUCKET": str(bucket), "DAGSTER_HOME": str(home)}
    for args in (["discover"], ["materialize"], ["dataset", "build"]):
        run = run_cli(*args, env=env)
        assert run.returncode == 0, run.stdout + run.stderr
    return bucket, home, cells, env


def latest(instance: DagsterInstance, asset: str):
    return instance.fetch_materializations(AssetKey(asset), limit=100).records


@pytest.mark.e2e
def test_labels_and_dataset_materialize_through_dagster(materialized, monkeypatch):
    bucket, home, cells, env = materialized
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    instance = DagsterInstance.get()
    labelled = {r.partition_key: r.asset_materialization.metadata for r in latest(instance, "chip_labels")}
    assert set(labelled) == set(cells)
    helsinki = labelled["Z35-013133103003"]
    assert helsinki["chips"].value > 100 and "| building |" in helsinki["label_histogram"].value
    (dataset,) = latest(instance, "training_dataset")
    meta = dataset.asset_materialization.metadata
    assert meta["chips"].value == meta["train_chips"].value + meta["val_chips"].value + meta["test_chips"].value
    assert meta["plot_cooccurrence"].value.startswith("![cooccurrence](data:image/png;base64,")
    checks = {}
    for name in ("no_spatial_leakage", "label_support", "chip_labels_complete"):
        asset = "chip_labels" if name == "chip_labels_complete" else "training_dataset"
        record = instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [AssetCheckKey(AssetKey(asset), name)])
        checks[name] = next(iter(record.values())).event.dagster_event.event_specific_data
    assert checks["no_spatial_leakage"].passed and checks["chip_labels_complete"].passed
    # three small cells cannot give every label 20 examples in val: the check says so, with numbers
    assert not checks["label_support"].passed
    assert "| water |" in checks["label_support"].metadata["weak_labels"].value

    stats = run_cli("dataset", "stats", env=env)
    assert stats.returncode == 0 and f"dataset {meta['version'].value}" in stats.stdout
    # rebuilding from the same labels gives the same version
    again = run_cli("dataset", "build", env=env)
    assert again.returncode == 0
    assert json.loads((bucket / "datasets" / "latest.json").read_text())["version"] == meta["version"].value


@pytest.mark.e2e
def test_hand_checked_chips_of_the_demo_world(materialized):
    bucket_root, _, _, _ = materialized
    bucket = open_bucket(bucket_root)
    vocab = load_vocabulary()
    rows = {}
    for cell in ("Z35-013133103003", "Z35-013133111113", "Z35-013133111131"):
        rows.update({r["chip"]: r for r in read_cell_labels(bucket, cell).to_pylist()})
        sparse = read_sparse_csv(bucket.read_text(f"labels/35/{cell}.csv"), len(vocab))
        assert sparse == {c: r["label_ids"] for c, r in rows.items() if r["cell"] == cell}
    for chip, (present, absent) in HAND_CHECKED.items():
        labels = set(rows[chip]["labels"])
        assert present <= labels, (chip, labels)
        if absent == "all others":
            assert labels == present, (chip, labels)
        else:
            assert not labels & absent, (chip, labels)
        # the other acquisition of the same place carries the same labels
        twin = chip.replace("A.jpg", "B.jpg")
        assert rows[twin]["labels"] == rows[chip]["labels"]
    farmland = rows["Z35-01313311113110002_KOTKAA.jpg"]
    assert farmland["area_share"] == [pytest.approx(1.0)]


@pytest.mark.e2e
def test_the_spatial_index_agrees_with_a_naive_per_chip_loop(materialized):
    """Every footprint of the Helsinki cell: STRtree + dissolve == union of clipped features per chip."""
    bucket = open_bucket(materialized[0])
    cell = ArdCell.parse("Z35-013133103003")
    vocab = load_vocabulary()
    table = read_cell_labels(bucket, cell.id).to_pylist()
    stored = {r["footprint"]: r for r in table}
    features = osm_features(read_osm_data(bucket, cell), cell.epsg)
    matches = match_labels(features, vocab)
    footprints = [ArdCell.parse(f) for f in sorted(stored)]
    by_label = [[i for i, m in enumerate(matches) if label in m] for label in range(len(vocab))]
    for footprint, chip_box in zip(footprints, footprint_boxes(footprints), strict=True):
        area = np.zeros(len(vocab))
        length = np.zeros(len(vocab))
        for label, members in enumerate(by_label):
            polygons = [features.geometries[i] for i in members if features.kinds[i] == POLYGON]
            lines = [features.geometries[i] for i in members if features.kinds[i] == LINE]
            if polygons:
                area[label] = shapely.union_all([p.intersection(chip_box) for p in polygons]).area / chip_box.area
            length[label] = sum(line.intersection(chip_box).length for line in lines)
        row = stored[footprint.id]
        got_area = dict(zip(row["label_ids"], row["area_share"], strict=True))
        got_length = dict(zip(row["label_ids"], row["length_m"], strict=True))
        for label, spec in enumerate(vocab.labels):
            present = (area[label] > 0 and area[label] >= spec.min_area_share and "polygon" in spec.geometry) or \
                      (length[label] > 0 and length[label] >= spec.min_length_m and "line" in spec.geometry)
            assert (label in got_area) == present, (footprint.id, spec.name, area[label], length[label])
            if present:
                assert got_area[label] == pytest.approx(area[label], abs=1e-4)
                assert got_length[label] == pytest.approx(length[label], rel=1e-4, abs=1e-3)

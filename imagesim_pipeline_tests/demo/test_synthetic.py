"""The procedural land-use extract: every label's tags, drawn by the renderer, the same for a seed."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from shapely.geometry import box

from imagesim_pipeline.ard.grid import ArdCell, cells_covering
from imagesim_pipeline.demo.features import load_layers
from imagesim_pipeline.demo.render import AREA_IDS, LINE_IDS, ROOF0, SHADOW, Look, class_raster, to_utm
from imagesim_pipeline.demo.synthetic import BLOCK_M, EPSG, generate_extract, synthetic_bounds
from imagesim_pipeline.demo.world import SYNTHETIC_KM
from imagesim_pipeline.labels.labeller import label_footprints
from imagesim_pipeline.labels.osm_geometry import osm_features
from imagesim_pipeline.labels.vocabulary import load_vocabulary
from imagesim_pipeline.osm.pbf import extract_cells


@pytest.fixture(scope="module")
def extract(tmp_path_factory):
    """A 1.875 km synthetic extract (3 x 3 blocks, 144 chip places): (path, counts)."""
    path = tmp_path_factory.mktemp("synthetic") / "synthetic.osm.pbf"
    return path, generate_extract(path, 1.9, seed=7)


def place_labels(path, utm_bounds) -> tuple[list[str], np.ndarray, list[str]]:
    """Label presence of every zoom-17 place inside the area, through the pipeline's own labeller."""
    area = box(*utm_bounds)
    vocabulary = load_vocabulary()
    names, rows = [], []
    for cell, data in extract_cells(path, cells_covering(area, EPSG, 12)):
        places = [p for p in cell.children(17) if area.contains(box(*p.bounds))]
        if places:
            result = label_footprints(osm_features(data, cell.epsg), vocabulary, places)
            names += result.footprints
            rows.append(result.present)
    return names, np.concatenate(rows), vocabulary.names


def test_area_is_whole_blocks_on_the_grid_away_from_the_real_extracts():
    xmin, ymin, xmax, ymax = synthetic_bounds(SYNTHETIC_KM)
    assert xmax - xmin == ymax - ymin == 13 * BLOCK_M
    assert all(v % BLOCK_M == 0 for v in (xmin, ymin, xmax, ymax))
    cells = {c.id for c in cells_covering(box(xmin, ymin, xmax, ymax), EPSG, 12)}
    assert len(cells) == 4
    real = {"Z35-013133103003", "Z35-013133111113", "Z35-013133111131"}  # Helsinki, Kotka
    assert not cells & real
    # A place of the area is a whole zoom-17 cell, not a part of one.
    corner = cells_covering(box(xmin + 1, ymin + 1, xmin + 2, ymin + 2), EPSG, 17)[0]
    assert corner.bounds[:2] == (xmin, ymin)


def test_every_label_of_the_vocabulary_is_in_a_good_share_of_places(extract):
    path, counts = extract
    places, present, labels = place_labels(path, counts["utm_bounds"])
    assert len(places) == 144
    shares = dict(zip(labels, present.mean(axis=0).tolist(), strict=True))
    assert len(shares) == 13
    assert min(shares.values()) >= 0.08, shares


def test_the_renderer_draws_every_class_the_labels_name(extract):
    path, counts = extract
    layers = load_layers(path)
    drawn = set(AREA_IDS) | set(LINE_IDS) | {"building"}
    assert drawn - {"tram"} <= set(layers.geoms)  # (no trams in the synthetic world)
    assert len(layers.building_ids) == len(layers.geoms["building"]) == len(layers.building_heights)
    assert np.isfinite(layers.building_heights).all()  # every synthetic building says how tall it is
    features = to_utm(layers.geoms, EPSG)
    classes = class_raster(features, counts["utm_bounds"], 2.0, Look(), 1)
    ids = set(np.unique(classes).tolist())
    assert {cid for cid, _ in LINE_IDS.values()} | set(AREA_IDS.values()) | {SHADOW} <= ids
    assert any(i >= ROOF0 for i in ids)


def test_extract_is_the_same_for_a_seed_and_differs_between_seeds(tmp_path):
    def digest(seed: int, name: str) -> str:
        path = tmp_path / name
        generate_extract(path, 1.25, seed=seed)
        return hashlib.sha256(path.read_bytes()).hexdigest()

    assert digest(5, "a.osm.pbf") == digest(5, "b.osm.pbf") != digest(6, "c.osm.pbf")


def test_extract_header_box_covers_its_nodes_and_only_the_area_cells(extract):
    from imagesim_pipeline.demo.world import extract_bounds
    from imagesim_pipeline.osm.pbf import cells_in_extract

    path, counts = extract
    assert extract_bounds(path) == pytest.approx(counts["bounds"], abs=1e-6)
    area_cells = cells_covering(box(*counts["utm_bounds"]), EPSG, 12)
    # osm_data picks the first extract whose header box meets a cell: the real cells never pick this one.
    assert cells_in_extract(path, [ArdCell.parse("Z35-013133103003"), *area_cells]) == area_cells

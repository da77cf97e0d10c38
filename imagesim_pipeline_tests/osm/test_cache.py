"""The per-extract cache that lets per-cell runs share one read of a PBF, on both bucket backends."""

from __future__ import annotations

import pytest
from shapely.geometry import box

from imagesim_pipeline.ard.grid import ArdCell, cells_covering
from imagesim_pipeline.osm import OsmError
from imagesim_pipeline.osm.cache import choose_extract, osm_for_cell
from imagesim_pipeline.storage import layout, open_bucket

TEST_BOX = (26.9299999, 60.5200000, 26.9699999, 60.5399999)


@pytest.fixture(params=["local", "s3"])
def bucket(request, tmp_path):
    if request.param == "local":
        return open_bucket(tmp_path / "bucket")
    return open_bucket(request.getfixturevalue("s3_env"))


def test_first_run_extracts_all_companions_then_serves_from_cache(bucket, samples):
    bucket.upload_file(samples["test.osm.pbf"], "osm/extracts/test.osm.pbf")
    cells = cells_covering(box(*TEST_BOX), 4326, 12)
    far = ArdCell.parse("Z33-120020223133")
    data, hit, extracted = osm_for_cell(bucket, "osm/extracts/test.osm.pbf", cells[0], cells + [far], margin=0.0005)
    assert (hit, extracted) == (False, len(cells)) and data["cell"] == cells[0].id
    cached = [o.key for o in bucket.list(layout.OSM_CACHE)]
    assert len(cached) == len(cells)
    again, hit, extracted = osm_for_cell(bucket, "osm/extracts/test.osm.pbf", cells[1], cells, margin=0.0005)
    assert (hit, extracted) == (True, 0) and again["ways"]
    # A different margin is a different selection: it is not served from the old cache.
    _, hit, _ = osm_for_cell(bucket, "osm/extracts/test.osm.pbf", cells[1], cells, margin=0.001)
    assert hit is False


def test_relative_path_outside_the_bucket_is_a_clear_error(bucket):
    with pytest.raises(OsmError, match="neither a local file nor a key"):
        osm_for_cell(bucket, "../elsewhere.osm.pbf", ArdCell.parse("Z35-013133103003"), [], margin=0.0005)


def test_missing_extract_names_both_places(bucket):
    with pytest.raises(OsmError, match="'osm/none.osm.pbf' is neither a local file nor a key in"):
        osm_for_cell(bucket, "osm/none.osm.pbf", ArdCell.parse("Z35-013133103003"), [], margin=0.0005)


def test_an_optional_extract_missing_from_the_bucket_is_passed_over(tmp_path, samples):
    """The default list names the demo world's synthetic extract; a bucket without it still works."""
    bucket = open_bucket(tmp_path / "bucket")
    cell = cells_covering(box(*TEST_BOX), 4326, 12)[0]
    test_pbf = str(samples["test.osm.pbf"])
    assert choose_extract(bucket, ["demo/synthetic.osm.pbf", test_pbf], cell,
                          optional=["demo/synthetic.osm.pbf"]) == test_pbf
    with pytest.raises(OsmError, match="'osm/none.osm.pbf' is neither"):  # one the user named must exist
        choose_extract(bucket, ["osm/none.osm.pbf", test_pbf], cell, optional=["demo/synthetic.osm.pbf"])


def test_a_cell_outside_every_configured_extract_is_named_as_such(tmp_path, samples):
    from imagesim_pipeline.osm.cache import covering_extract, uncovered

    bucket = open_bucket(tmp_path / "bucket")
    far = ArdCell.parse("Z17-120222301130")  # nowhere near Finland
    pbfs = [str(samples["Helsinki.osm.pbf"]), str(samples["test.osm.pbf"])]
    assert covering_extract(bucket, pbfs, far) is None
    assert choose_extract(bucket, pbfs, far) == pbfs[0]
    message = uncovered(far, pbfs)
    assert "no configured OSM extract covers Z17-120222301130" in message
    assert "Helsinki.osm.pbf, test.osm.pbf" in message and "IMAGESIM_OSM_PBF" in message

"""The similarity index in the bucket and the query engine, on the demo world encoded by a trained SMLC."""

from __future__ import annotations

import shutil
from datetime import date

import numpy as np
import pytest
import shapely

from imagesim_pipeline.chips.naming import ChipName, chip_key
from imagesim_pipeline.dataset.splits import block_of
from imagesim_pipeline.embeddings.cell_embeddings import embed_cell
from imagesim_pipeline.embeddings.encoder import OnnxEncoder
from imagesim_pipeline.search.catalog import (
    IndexNotFoundError,
    build_similarity_index,
    load_index,
)
from imagesim_pipeline.search.engine import Example, Filters, SearchEngine, SearchError
from imagesim_pipeline.storage import layout, open_bucket
from imagesim_pipeline.storage.layout import index_key
from imagesim_pipeline_tests.conftest import chip_cells


@pytest.fixture(scope="module")
def indexed(demo_index):
    """Every demo cell embedded and indexed: (bucket, version, engine). Read only."""
    root, version = demo_index
    bucket = open_bucket(root)
    return bucket, version, SearchEngine(bucket, version=version)


def _two_acquisition_chip(engine: SearchEngine) -> str:
    places, counts = np.unique(engine.store.places, return_counts=True)
    place = places[counts >= 2][0]
    return engine.store.chips[np.flatnonzero(engine.store.places == place)[0]]


def test_a_chip_query_never_returns_its_own_place_and_each_place_once(indexed):
    _, _, engine = indexed
    chip = _two_acquisition_chip(engine)
    place = ChipName.parse(chip).cell.id
    hits = engine.by_chip(chip, k=50)
    assert len(hits) == 50 and [h.rank for h in hits] == list(range(1, 51))
    assert place not in {h.place for h in hits}  # neither the chip nor its other acquisition
    assert len({h.place for h in hits}) == 50
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))
    # the scores are cosine similarities with the query's embedding
    q, v = engine.vector_of_chip(chip), engine.vector_of_chip(hits[0].chip)
    assert hits[0].score == pytest.approx(float(q @ v / np.linalg.norm(q) / np.linalg.norm(v)), abs=1e-4)


def test_an_image_query_finds_the_chip_it_was_cut_from(indexed):
    bucket, _, engine = indexed
    chip = engine.store.chips[len(engine) // 2]
    hits = engine.by_image(bucket.read_bytes(chip_key(ChipName.parse(chip))), k=3)
    assert hits[0].chip == chip and hits[0].score > 0.999


def test_a_negative_example_pushes_its_look_alikes_down(indexed):
    _, _, engine = indexed
    chip = _two_acquisition_chip(engine)
    plain = engine.query([Example(chip=chip)], k=200)
    negative = plain[0].chip
    look_alikes = {h.place for h in engine.by_chip(negative, k=20)}
    refined = engine.query([Example(chip=chip)], [Example(chip=negative)], k=200)
    assert ChipName.parse(negative).cell.id not in {h.place for h in refined}

    def mean_rank(hits):
        ranks = [h.rank for h in hits if h.place in look_alikes]
        return np.mean(ranks + [201] * (len(look_alikes) - len(ranks)))

    assert mean_rank(refined) > mean_rank(plain) + 5


def test_filters_hold_for_every_result(indexed):
    _, _, engine = indexed
    chip = engine.store.chips[0]
    w, s, e, n = np.median(engine.store.bounds, axis=0)[[0, 1, 2, 3]]
    box = (float(w) - 0.01, float(s) - 0.005, float(w) + 0.01, float(s) + 0.005)
    hits = engine.by_chip(chip, k=20, filters=Filters(bbox=box))
    assert hits and all(h.geometry.intersects(shapely.box(*box)) for h in hits)
    label = engine.labels[int(np.argmax((engine.store.probs >= engine.thresholds).sum(0)))]
    for h in engine.by_chip(chip, k=20, filters=Filters(labels=(label,))):
        assert label in [name for name, _ in h.labels]
    day = sorted(set(engine.store.dates.tolist()))[-1]
    hits = engine.by_chip(chip, k=20, filters=Filters(since=day))
    assert hits and all(h.date >= day for h in hits)
    hits = engine.by_chip(chip, k=20, filters=Filters(until=date(1999, 1, 1)))
    assert hits == []
    catalog = engine.store.catalog_ids[-1]
    hits = engine.by_chip(chip, k=20, filters=Filters(catalog_ids=(catalog,)))
    assert hits and {h.catalog_id for h in hits} == {catalog}


def test_k_up_to_1000_and_spread_keeps_one_result_per_neighbourhood(indexed):
    _, _, engine = indexed
    chip = engine.store.chips[0]
    everything = engine.by_chip(chip, k=1000)
    distinct = len(set(engine.store.places)) - 1  # every place but the query's
    assert len(everything) == min(1000, distinct)
    spread = engine.by_chip(chip, k=10, spread=True)
    blocks = [block_of(h.place, 15) for h in spread]
    assert len(blocks) == len(set(blocks)) == 10
    with pytest.raises(SearchError, match="k must be"):
        engine.by_chip(chip, k=1001)


def test_bad_queries_say_what_is_wrong(indexed):
    _, _, engine = indexed
    with pytest.raises(SearchError, match="unknown chip id"):
        engine.by_chip("Z35-01313310300300000_NOSUCH.jpg")
    with pytest.raises(SearchError, match="unknown chip id"):
        engine.by_chip("not-a-chip.jpg")
    with pytest.raises(SearchError, match="not a readable image"):
        engine.by_image(b"\xff\xd8 truncated", name="broken.jpg")
    with pytest.raises(SearchError, match="unknown label"):
        engine.by_chip(engine.store.chips[0], filters=Filters(labels=("volcano",)))


def test_versions_never_mix_and_new_cells_extend_the_index(indexed, tmp_path):
    bucket, version, engine = indexed
    # another model version has no index, and building one finds none of this version's embeddings
    with pytest.raises(IndexNotFoundError, match="materialize"):
        SearchEngine(bucket, version="v-other")
    with pytest.raises(IndexNotFoundError, match="no embeddings"):
        build_similarity_index(bucket, "v-other")
    assert not list(bucket.list("index/v-other/"))
    # a fresh bucket: two cells first, then the rest are added to the same index
    root = tmp_path / "b"
    shutil.copytree(bucket.root, root)
    copy = open_bucket(root)
    copy.delete_prefix(index_key(version, ""))
    cells = chip_cells(copy)
    kept = cells[:2]
    for cell in cells[2:]:
        copy.delete(layout.embeddings_key(version, cell))
    first = build_similarity_index(copy, version)
    assert first.mode == "built"
    _, items_before, _ = load_index(copy, version)
    assert build_similarity_index(copy, version).mode == "unchanged"
    encoder = OnnxEncoder.from_bucket(copy, version=version, threads=1)
    for cell in cells[2:]:
        embed_cell(copy, encoder, cell)
    update = build_similarity_index(copy, version)
    assert update.mode == "extended" and update.vectors == len(engine)
    _, items_after, _ = load_index(copy, version)
    n = items_before.num_rows
    assert items_after.column("chip").to_pylist()[:n] == items_before.column("chip").to_pylist()
    assert set(items_after.column("cell").to_pylist()[:n]) <= set(kept)
    # a cell encoded again (its file changed) rebuilds the index
    embed_cell(copy, encoder, kept[0])
    copy.write_bytes(layout.embeddings_key(version, kept[0]), copy.read_bytes(layout.embeddings_key(version, kept[0])))
    assert build_similarity_index(copy, version).mode == "built"
    fresh = SearchEngine(copy, version=version)
    assert len(fresh) == len(engine)
    chip = engine.store.chips[0]
    assert [h.chip for h in fresh.by_chip(chip, k=5)] == [h.chip for h in engine.by_chip(chip, k=5)]


def test_several_positive_examples_query_their_mean_and_exclude_every_example_place(indexed):
    _, _, engine = indexed
    a, b = engine.store.chips[0], engine.store.chips[len(engine) - 1]
    hits = engine.query([Example(chip=a), Example(chip=b)], k=20)
    places = {h.place for h in hits}
    assert ChipName.parse(a).cell.id not in places and ChipName.parse(b).cell.id not in places
    va, vb = (engine.vector_of_chip(c) for c in (a, b))
    q = va / np.linalg.norm(va) + vb / np.linalg.norm(vb)
    q /= np.linalg.norm(q)
    v = engine.vector_of_chip(hits[0].chip)
    assert hits[0].score == pytest.approx(float(q @ v / np.linalg.norm(v)), abs=1e-4)
    with pytest.raises(SearchError, match="at least one positive"):
        engine.query([], [Example(chip=a)])


def test_an_empty_answer_says_which_filter_emptied_it(indexed):
    _, _, engine = indexed
    chip = engine.store.chips[0]
    assert engine.by_chip(chip, k=5, filters=Filters(catalog_ids=("NOPE",))) == []
    hint = engine.why_empty(Filters(catalog_ids=("NOPE",)))
    assert "NOPE" in hint and str(engine.store.catalog_ids[0]) in hint
    far = Filters(bbox=(-10.0, -10.0, -9.9, -9.9))
    assert engine.by_chip(chip, k=5, filters=far) == []
    assert "the bbox meets no indexed chip; the index covers" in engine.why_empty(far)
    late = Filters(since=date(2099, 1, 1))
    assert "date range" in engine.why_empty(late) and str(engine.store.dates.max()) in engine.why_empty(late)

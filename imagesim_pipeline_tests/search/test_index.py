"""The similarity index: exact and approximate search, filters, padding, extension, serialisation."""

from __future__ import annotations

import numpy as np
import pytest

from imagesim_pipeline.search.index import (
    IndexParams,
    build_index,
    describe,
    extend_index,
    from_bytes,
    normalise,
    search,
    to_bytes,
)

DIM = 64
APPROX = IndexParams().approximate


def clustered(n: int, seed: int = 0, clusters: int = 25, dim: int = DIM) -> np.ndarray:
    """Normalised rows around a few random centres (anisotropic spread), like embeddings."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    axes = rng.normal(size=(clusters, dim)) * rng.uniform(0.1, 0.6, (clusters, 1))
    assign = rng.integers(0, clusters, n)
    x = centres[assign] + axes[assign] * rng.normal(size=(n, dim)) + 0.05 * rng.normal(size=(n, dim))
    return normalise(x)


def exact_topk(x: np.ndarray, q: np.ndarray, k: int, mask: np.ndarray | None = None) -> np.ndarray:
    sims = q @ x.T
    if mask is not None:
        sims[:, ~mask] = -np.inf
    ids = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.where(np.take_along_axis(sims, ids, 1) > -np.inf, ids, -1)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(f[f >= 0], t[t >= 0])) / max(1, (t >= 0).sum())
                          for f, t in zip(found, truth)]))


def approx(kind: str = APPROX, **kw) -> IndexParams:
    kw.setdefault("nlist", 16)
    return IndexParams(kind=kind, **kw)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    both = clustered(4050)  # queries: fresh draws from the same mixture
    return both[:4000], both[4000:]


@pytest.fixture(scope="module")
def approx_index(data):
    return build_index(data[0], approx())


def test_normalise_unit_rows_zero_rows_stay_zero():
    raw = np.asfortranarray(np.array([[3.0, 4.0], [0.0, 0.0], [1e-30, 0.0]]))  # float64, not C-ordered
    out = normalise(raw)
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_allclose(out[0], [0.6, 0.8], rtol=1e-6)
    assert np.all(out[1] == 0) and not np.isnan(out).any()
    assert raw[0, 0] == 3.0  # input untouched
    np.testing.assert_allclose(np.linalg.norm(normalise(np.random.default_rng(0).normal(size=(5, 7))), axis=1), 1, rtol=1e-6)


def test_exact_search_returns_true_nearest_neighbours(data):
    x, q = data
    index = build_index(x)  # auto: 4000 < exact_below -> exact
    assert describe(index)["kind"] == "flat"
    scores, ids = search(index, q, 10)
    np.testing.assert_array_equal(ids, exact_topk(x, q, 10))
    np.testing.assert_allclose(scores, np.take_along_axis(q @ x.T, ids, 1), rtol=1e-5, atol=1e-6)
    assert scores.dtype == np.float32 and ids.dtype == np.int64
    assert np.all(np.diff(scores, axis=1) <= 1e-7)  # best first


@pytest.mark.parametrize("kind", ["hnsw_flat", "hnsw_fp16", "hnsw_sq8", "ivf_sq8"])
def test_approximate_kinds_have_high_recall(data, kind):
    x, q = data
    index = build_index(x, approx(kind))
    assert describe(index)["kind"] == kind
    _, ids = search(index, q, 10)
    assert recall(ids, exact_topk(x, q, 10)) >= (0.9 if kind.endswith("sq8") else 0.95)


def test_auto_switches_to_approximate_at_exact_below(data):
    x, q = data
    index = build_index(x, IndexParams(exact_below=1000))
    info = describe(index)
    assert info["kind"] == APPROX and info["n"] == len(x) and info["dim"] == DIM
    assert info["params"]["ef_search"] == IndexParams().ef_search
    _, ids = search(index, q, 10)
    assert recall(ids, exact_topk(x, q, 10)) >= 0.95


@pytest.mark.parametrize("allowed_count", [150, 3000])  # gather-decode and bitmap-scan sub-paths
def test_filtered_exact_path_finds_best_allowed(data, approx_index, allowed_count):
    x, q = data
    mask = np.zeros(len(x), bool)
    mask[np.random.default_rng(2).choice(len(x), allowed_count, replace=False)] = True
    exact = IndexParams(filter_exact_below=len(x))
    truth = exact_topk(x, q, 10, mask)
    _, ids = search(build_index(x, IndexParams(kind="flat")), q, 10, allowed=mask, params=exact)
    np.testing.assert_array_equal(ids, truth)
    _, ids = search(approx_index, q, 10, allowed=mask, params=exact)
    assert mask[ids].all()
    assert recall(ids, truth) >= 0.97  # exact over the stored (quantised) vectors


@pytest.mark.parametrize("kind", [APPROX, "hnsw_sq8", "ivf_sq8", "flat"])
def test_filtered_selector_path_never_returns_disallowed(data, kind):
    x, q = data
    index = build_index(x, approx(kind))
    rng = np.random.default_rng(3)
    # a random filter and one correlated with content (half the clusters' space)
    for mask in (rng.random(len(x)) < 0.3, x[:, 0] > np.median(x[:, 0])):
        _, ids = search(index, q, 10, allowed=mask, params=approx(kind, filter_exact_below=0))
        assert (ids >= 0).all() and mask[ids].all()
        assert recall(ids, exact_topk(x, q, 10, mask)) >= (0.85 if kind.endswith("sq8") else 0.9)


@pytest.mark.parametrize("exact_below", [0, 10_000])
def test_k_larger_than_allowed_pads_with_minus_one(data, approx_index, exact_below):
    x, q = data
    mask = np.zeros(len(x), bool)
    mask[[5, 17, 900, 2500, 3999]] = True
    scores, ids = search(approx_index, q[:3], 20, allowed=mask, params=IndexParams(filter_exact_below=exact_below))
    assert ids.shape == (3, 20)
    for row, srow in zip(ids, scores):
        assert sorted(row[:5]) == [5, 17, 900, 2500, 3999]
        assert (row[5:] == -1).all() and np.isneginf(srow[5:]).all() and np.isfinite(srow[:5]).all()
    none = np.zeros(len(x), bool)
    scores, ids = search(approx_index, q[:2], 3, allowed=none)
    assert (ids == -1).all() and np.isneginf(scores).all()


def test_k_up_to_1000_and_beyond_n(data, approx_index):
    x, q = data
    _, ids = search(approx_index, q[:2], 1000)
    assert all(len(set(r)) == 1000 and (r >= 0).all() for r in ids)
    assert recall(ids, exact_topk(x, q[:2], 1000)) >= 0.9
    mask = np.random.default_rng(4).random(len(x)) < 0.5
    _, ids = search(approx_index, q[:2], 1000, allowed=mask, params=IndexParams(filter_exact_below=0))
    assert mask[ids[ids >= 0]].all() and (ids >= 0).sum() >= 1900
    small = build_index(x[:30], IndexParams(kind="flat"))
    _, ids = search(small, q[:1], 50)
    assert sorted(ids[0, :30]) == list(range(30)) and (ids[0, 30:] == -1).all()


@pytest.mark.parametrize("kind", ["flat", APPROX, "ivf_sq8"])
def test_extend_index_keeps_old_ids_and_finds_new_rows(data, kind):
    x, _ = data
    index = build_index(x[:3000], approx(kind))
    _, before = search(index, x[:20], 5)
    extend_index(index, x[3000:])
    assert index.ntotal == len(x)
    _, after = search(index, x[:20], 1)
    np.testing.assert_array_equal(after[:, 0], before[:, 0])
    _, new = search(index, x[3000:3050], 1)
    assert np.mean(new[:, 0] == np.arange(3000, 3050)) >= 0.95
    mask = np.zeros(len(x), bool)
    mask[3100:3110] = True  # a filter over the new rows only (exact path)
    _, ids = search(index, x[3105:3106], 3, allowed=mask)
    assert ids[0, 0] == 3105 and mask[ids[0]].all()


@pytest.mark.parametrize("kind", ["flat", "hnsw_flat", APPROX, "hnsw_sq8", "ivf_sq8"])
def test_bytes_round_trip_gives_identical_results(data, kind):
    x, q = data
    index = build_index(x, approx(kind, ef_search=40, nprobe=4))
    blob = to_bytes(index)
    assert isinstance(blob, bytes)
    restored = from_bytes(blob)
    assert describe(restored) == describe(index)
    mask = np.random.default_rng(5).random(len(x)) < 0.2
    for allowed in (None, mask):
        a = search(index, q, 10, allowed=allowed)
        b = search(restored, q, 10, allowed=allowed)
        np.testing.assert_array_equal(a[1], b[1])
        np.testing.assert_array_equal(a[0], b[0])
    info = describe(index)
    assert abs(info["bytes_per_vector"] - len(blob) / len(x)) / (len(blob) / len(x)) < 0.15


def test_params_override_per_call_and_dict_round_trip(data, approx_index):
    x, q = data
    p = IndexParams(kind="hnsw_sq8", ef_search=17, m=8)
    assert IndexParams.from_dict(p.to_dict()) == p
    assert IndexParams.from_dict({**p.to_dict(), "future_option": 1}) == p
    with pytest.raises(ValueError):
        IndexParams(kind="lsh")
    stored = approx_index.hnsw.efSearch
    search(approx_index, q[:1], 5, params=IndexParams(ef_search=300))
    assert approx_index.hnsw.efSearch == stored  # the override does not stick
    with pytest.raises(ValueError):
        search(approx_index, q[:1], 5, allowed=np.ones(len(x) - 1, bool))


# --------------------------------------------------------------------------- the quantised kind

def test_quantised_kind_is_small_in_ram_and_recalls_after_re_ranking(data):
    x, q = data
    index = build_index(x, approx("ivf_rabitq"))
    info = describe(index)
    assert info["kind"] == "ivf_rabitq" and info["n"] == len(x)
    assert info["bytes_per_vector"] <= DIM * 2 / 8 + 20 + 8  # 2 bits per dimension, the factors, the id
    assert info["disk_bytes_per_vector"] == 2 * DIM  # float16 re-rank vectors
    _, ids = search(index, q, 10)
    assert recall(ids, exact_topk(x, q, 10)) >= 0.97
    # without the re-rank (a shortlist of k) the 1-bit estimate alone is far worse: the re-rank matters
    _, rough = search(index, q, 10, params=approx("ivf_rabitq", shortlist=10))
    assert recall(rough, exact_topk(x, q, 10)) < recall(ids, exact_topk(x, q, 10))
    np.testing.assert_allclose(index.reconstruct(7), x[7], atol=1e-3)  # lossless up to float16


@pytest.mark.parametrize("allowed_count", [150, 3000])  # exact gather and the filtered list scan
def test_quantised_kind_filters(data, allowed_count):
    x, q = data
    index = build_index(x, approx("ivf_rabitq"))
    mask = np.zeros(len(x), bool)
    mask[np.random.default_rng(6).choice(len(x), allowed_count, replace=False)] = True
    _, ids = search(index, q, 10, allowed=mask, params=approx("ivf_rabitq", filter_exact_below=1000))
    assert (ids >= 0).all() and mask[ids].all()
    assert recall(ids, exact_topk(x, q, 10, mask)) >= (0.999 if allowed_count <= 1000 else 0.95)


def test_quantised_kind_projects_wide_vectors_and_stays_under_100_bytes():
    from imagesim_pipeline.search.quantised import PCA_DIMS

    x = clustered(6000, seed=8, dim=368)  # the model's width: projected on 256 principal axes first
    base, q = x[:5950], x[5950:]
    index = build_index(base, approx("ivf_rabitq"))
    assert index.d == 368 and describe(index)["bytes_per_vector"] <= 100 and PCA_DIMS < 368
    _, ids = search(index, q, 10)
    assert recall(ids, exact_topk(base, q, 10)) >= 0.95


def test_quantised_kind_extends_and_round_trips_through_its_two_files(data, tmp_path):
    from imagesim_pipeline.search.quantised import RerankedIndex

    x, q = data
    index = build_index(x[:3000], approx("ivf_rabitq"))
    extend_index(index, x[3000:])
    assert index.ntotal == len(x) and len(index.vectors) == len(x)
    (tmp_path / "vectors.npy").write_bytes(index.vectors_bytes())
    restored = RerankedIndex.load(index.codes_bytes(), tmp_path / "vectors.npy", index.nprobe, index.shortlist)
    assert isinstance(restored.vectors, np.memmap)  # read from disk on demand, not loaded
    np.testing.assert_array_equal(search(index, q, 10)[1], search(restored, q, 10)[1])
    _, new = search(restored, x[3000:3050], 1)
    assert np.mean(new[:, 0] == np.arange(3000, 3050)) >= 0.95

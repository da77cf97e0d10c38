"""The similarity index over chip embeddings: build, extend, (filtered) search, serialise.

Embeddings are float32 rows compared by cosine similarity, so rows are L2-normalised
(:func:`normalise`) and searched by inner product. Ids are row numbers: the index built from
``n`` rows holds ids ``0..n-1`` and :func:`extend_index` continues at ``n``.

Kinds (``IndexParams.kind``), sizes at dim 320, m 32:

* ``"flat"``: ``IndexFlatIP``, exact; 1280 bytes per vector.
* ``"hnsw_fp16"`` (the default approximate kind): HNSW graph over float16 vectors
  (``IndexHNSWSQ``, ``QT_fp16``); ~910 bytes per vector. At 1 000 000 generated embeddings
  (``benchmarks/bench_index.py``, 2 cores) with ``ef_search`` 64: recall@10 0.97, single-query
  p50 0.27 ms; the only candidate meeting recall >= 0.95, p50 <= 2 ms and < 1.5 KB per vector.
* ``"hnsw_flat"``: HNSW over float32 (recall 0.986 at ef 64, but ~1550 bytes per vector).
* ``"hnsw_sq8"``: HNSW over 8-bit codes (~590 bytes); 8 bits cannot order neighbours whose
  similarities differ by ~1e-3, recall@10 stalls at ~0.81 at 1M.
* ``"ivf_sq8"``: inverted lists (``nlist`` ~ 4·sqrt(n)) of 8-bit residual codes (~340 bytes);
  recall stalls at ~0.92, slow to train.
* ``"ivf_rabitq"``: the quantised kind (``search.quantised``): IVF lists of PCA-256, 2-bit RaBitQ
  codes (92 bytes of RAM per vector at dim 368) whose best ``shortlist`` candidates are re-ranked
  exactly against float16 vectors kept in a memory-mapped file beside the index.
* ``"auto"``: ``"flat"`` below ``exact_below`` vectors, ``approximate`` at or above.

Search-time settings (``ef_search``, ``nprobe``) are stored in the index (and survive
:func:`to_bytes`); passing ``params`` to :func:`search` overrides them for that call only.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields
from typing import Any, TypeAlias

import faiss
import numpy as np

# A built index: the concrete faiss class (IndexFlatIP, IndexHNSWSQ, ...) or, for "ivf_rabitq",
# search.quantised.RerankedIndex. Any: faiss's SWIG stubs declare only the base Index (no hnsw,
# nprobe, nlist, storage, codes, cp on the concrete classes), and RerankedIndex is no faiss.Index.
SimilarityIndex: TypeAlias = Any

KINDS = ("flat", "hnsw_flat", "hnsw_fp16", "hnsw_sq8", "ivf_sq8", "ivf_rabitq")
_APPROXIMATE = KINDS[1:]
_TRAIN_SAMPLE = 200_000  # rows used to train the scalar quantiser (min/max per dimension)
_IVF_TRAIN_PER_LIST = 40  # k-means training rows per inverted list (faiss asks for >= 39)
_GATHER_BELOW = 2048  # exact filtered path: gather + decode up to this many ids (else scan)


@dataclass(frozen=True)
class IndexParams:
    """How to build and search an index (defaults picked from ``benchmarks/bench_index.py``).

    ``kind``: one of ``KINDS`` or ``"auto"``. ``exact_below``: with ``"auto"``, an exact
    ``IndexFlatIP`` below this many vectors and ``approximate`` at or above. ``m``,
    ``ef_construction``, ``ef_search``: HNSW graph degree, build beam and search beam.
    ``nlist`` (0: ~4·sqrt(n)), ``nprobe``: IVF lists and lists probed per query; ``shortlist``:
    candidates ``ivf_rabitq`` re-ranks exactly.
    ``filter_exact_below``, ``filter_boost``, ``filter_boost_max``: the filtered-search
    strategy (see :func:`search`).
    """

    kind: str = "auto"
    exact_below: int = 200_000
    approximate: str = "hnsw_fp16"
    m: int = 32
    ef_construction: int = 80
    ef_search: int = 64
    nlist: int = 0
    nprobe: int = 32
    shortlist: int = 500
    filter_exact_below: int = 20_000
    filter_boost: float = 8.0
    filter_boost_max: float = 32.0

    def __post_init__(self) -> None:
        if self.kind not in (*KINDS, "auto"):
            raise ValueError(f"unknown index kind {self.kind!r}; expected one of {(*KINDS, 'auto')}")
        if self.approximate not in _APPROXIMATE:
            raise ValueError(f"unknown approximate kind {self.approximate!r}; expected one of {_APPROXIMATE}")
        if min(self.m, self.ef_construction, self.ef_search, self.nprobe) < 1 or self.nlist < 0:
            raise ValueError("m, ef_construction, ef_search and nprobe must be >= 1, nlist >= 0")

    def resolve_kind(self, n: int) -> str:
        """The concrete kind for an index of ``n`` vectors."""
        if self.kind != "auto":
            return self.kind
        return "flat" if n < self.exact_below else self.approximate

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IndexParams:
        """Inverse of :meth:`to_dict`; unknown keys are ignored, missing ones take defaults."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# --------------------------------------------------------------------------- threads

_threads_set = False


def available_cpus() -> int:
    """CPUs this process may use: its affinity set, capped by a cgroup v2 CPU quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def set_threads(n: int | None = None) -> int:
    """Set faiss's OpenMP threads: ``n``, else ``$IMAGESIM_FAISS_THREADS``, else the usable CPUs.

    OpenMP may see every host core in a container; using only the CPUs granted avoids
    oversubscription. One query runs on one thread either way (HNSW parallelises over queries).
    """
    global _threads_set
    if n is None:
        from imagesim_pipeline.settings import settings

        n = settings().faiss_threads or available_cpus()
    n = max(1, int(n))
    faiss.omp_set_num_threads(n)
    _threads_set = True
    return n


def _ensure_threads() -> None:
    if not _threads_set:
        set_threads()


# --------------------------------------------------------------------------- build

def normalise(vectors: np.ndarray) -> np.ndarray:
    """float32, C-contiguous copy of ``vectors`` (n, d) with unit-L2 rows; zero rows stay zero."""
    x = np.array(vectors, dtype=np.float32, order="C", copy=True, ndmin=2)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D array of row vectors, got shape {np.shape(vectors)}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    np.divide(x, norms, out=x, where=norms > 0)
    return x


def _as_rows(vectors: np.ndarray, d: int | None = None) -> np.ndarray:
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or (d is not None and x.shape[1] != d):
        raise ValueError(f"expected vectors of shape (n, {d or 'd'}), got {np.shape(vectors)}")
    return x


def _sample(x: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    if len(x) <= n:
        return x
    rows = np.sort(np.random.default_rng(seed).choice(len(x), n, replace=False))
    return x[rows]


def ivf_nlist(n: int) -> int:
    """Default IVF list count: the power of two nearest 4·sqrt(n), between 16 and 65 536."""
    target = 4 * math.sqrt(max(n, 1))
    return int(min(65_536, max(16, 2 ** round(math.log2(target)))))


def build_index(vectors: np.ndarray, params: IndexParams = IndexParams()) -> SimilarityIndex:
    """Index of already-normalised ``vectors`` (n, d); ids are the row numbers 0..n-1."""
    _ensure_threads()
    x = _as_rows(vectors)
    n, d = x.shape
    kind = params.resolve_kind(n)
    ip = faiss.METRIC_INNER_PRODUCT
    index: SimilarityIndex
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw_flat":
        index = faiss.IndexHNSWFlat(d, params.m, ip)
    elif kind in ("hnsw_fp16", "hnsw_sq8"):
        qtype = faiss.ScalarQuantizer.QT_fp16 if kind == "hnsw_fp16" else faiss.ScalarQuantizer.QT_8bit
        index = faiss.IndexHNSWSQ(d, qtype, params.m, ip)  # type: ignore[arg-type]  # stub: SWIG takes the QT_ int
        if n == 0 and kind == "hnsw_sq8":
            raise ValueError("hnsw_sq8 needs vectors to train its 8-bit ranges")
        index.train(_sample(x, _TRAIN_SAMPLE))
    elif kind == "ivf_rabitq":
        from imagesim_pipeline.search.quantised import RerankedIndex

        return RerankedIndex.build(x, params.nlist or ivf_nlist(n), params.nprobe, params.shortlist)
    else:  # ivf_sq8
        nlist = params.nlist or ivf_nlist(n)
        if n < nlist:
            raise ValueError(f"ivf_sq8 needs at least nlist={nlist} vectors, got {n}")
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFScalarQuantizer(quantizer, d, nlist, faiss.ScalarQuantizer.QT_8bit, ip)
        index.cp.niter = 10
        index.train(_sample(x, _IVF_TRAIN_PER_LIST * nlist))
        index.nprobe = min(params.nprobe, nlist)
        index.set_direct_map_type(faiss.DirectMap.Array)  # type: ignore[attr-defined]  # stub lacks DirectMap
    if kind.startswith("hnsw"):
        index.hnsw.efConstruction = params.ef_construction
        index.hnsw.efSearch = params.ef_search
    if n:
        index.add(x)
    return index


def extend_index(index: SimilarityIndex, vectors: np.ndarray) -> None:
    """Append normalised rows; their ids continue at ``index.ntotal``.

    An ``"auto"`` index stays the kind it was built as: rebuild to switch from flat to approximate.
    An 8-bit index keeps its trained ranges (values outside them are clipped).
    """
    _ensure_threads()
    x = _as_rows(vectors, index.d)
    if len(x):
        index.add(x)  # RerankedIndex.add appends its float16 vectors too


# --------------------------------------------------------------------------- inspect / serialise

def _concrete(index: SimilarityIndex) -> SimilarityIndex:
    """``index`` as its concrete class. The result may not own the C++ object: keep ``index``
    referenced while it is used (never rebind the only reference to it)."""
    return faiss.downcast_index(index) if type(index) is faiss.Index else index


def _reranked(index: Any) -> bool:
    from imagesim_pipeline.search.quantised import RerankedIndex

    return isinstance(index, RerankedIndex)


def index_kind(index: SimilarityIndex) -> str:
    """The kind name (one of ``KINDS``) of a faiss index built here."""
    if _reranked(index):
        return "ivf_rabitq"
    concrete = _concrete(index)
    if isinstance(concrete, faiss.IndexHNSWSQ):
        qtype = _concrete(concrete.storage).sq.qtype
        return "hnsw_fp16" if qtype == faiss.ScalarQuantizer.QT_fp16 else "hnsw_sq8"
    if isinstance(concrete, faiss.IndexHNSWFlat):
        return "hnsw_flat"
    if isinstance(concrete, faiss.IndexIVFScalarQuantizer):
        return "ivf_sq8"
    if isinstance(concrete, faiss.IndexFlat):
        return "flat"
    raise TypeError(f"not an index built by imagesim: {type(concrete).__name__}")


LOSSLESS_KINDS = ("flat", "hnsw_flat", "hnsw_fp16", "ivf_rabitq")  # stored vectors within float16 rounding of the input


def stored_vector(index: SimilarityIndex, i: int) -> np.ndarray | None:
    """Vector ``i`` as the index stores it, when that is the embedding itself (float32 or float16
    kinds); None for the 8-bit kinds, whose decoded vectors are only approximations."""
    if index_kind(index) not in LOSSLESS_KINDS:
        return None
    return np.asarray(index.reconstruct(int(i)))


def _bytes_per_vector(index: SimilarityIndex, kind: str) -> float:
    d = index.d
    if kind == "flat":
        return 4.0 * d
    if kind == "ivf_sq8":
        return d + 8.0 + 8.0  # code + list id + direct-map entry
    hnsw = index.hnsw
    code = {"hnsw_flat": 4.0, "hnsw_fp16": 2.0, "hnsw_sq8": 1.0}[kind] * d
    n = max(index.ntotal, 1)
    links = hnsw.neighbors.size() * 4.0 / n if index.ntotal else 2 * hnsw.nb_neighbors(1) * 4.0
    return code + links + 4 + 8  # + level and offset per vector


def describe(index: SimilarityIndex) -> dict[str, Any]:
    """Kind, vector count, dimension, approximate bytes per vector and the stored parameters."""
    if _reranked(index):
        return {"kind": "ivf_rabitq", "n": index.ntotal, "dim": index.d,
                "bytes_per_vector": round(index.bytes_per_vector(), 1), "disk_bytes_per_vector": 2 * index.d,
                "params": {"nlist": index.nlist, "nprobe": index.nprobe, "shortlist": index.shortlist}}
    concrete = _concrete(index)
    kind = index_kind(concrete)
    params: dict[str, Any] = {}
    if kind.startswith("hnsw"):
        h = concrete.hnsw
        params = {"m": h.nb_neighbors(1), "ef_construction": h.efConstruction, "ef_search": h.efSearch}
    elif kind == "ivf_sq8":
        params = {"nlist": concrete.nlist, "nprobe": concrete.nprobe}
    return {"kind": kind, "n": int(concrete.ntotal), "dim": int(concrete.d),
            "bytes_per_vector": round(_bytes_per_vector(concrete, kind), 1), "params": params}


def to_bytes(index: SimilarityIndex) -> bytes:
    """Serialised index (``faiss.serialize_index``)."""
    return faiss.serialize_index(index).tobytes()


def from_bytes(data: bytes) -> SimilarityIndex:
    """Inverse of :func:`to_bytes`.

    ``deserialize_index`` already returns the concrete, owning wrapper; ``downcast_index`` around it
    would hand back a non-owning one whose index is freed with the temporary.
    """
    return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))


# --------------------------------------------------------------------------- search

def _search_parameters(index: SimilarityIndex, kind: str, k: int, params: IndexParams | None,
                       boost: float = 1.0, sel: Any = None) -> Any:
    """faiss SearchParameters for one call (``None`` when nothing overrides the index)."""
    if kind.startswith("hnsw"):
        base = params.ef_search if params else index.hnsw.efSearch
        hnsw = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]  # stub lacks the class
        hnsw.efSearch = max(k, math.ceil(base * boost))
        return _with_selector(hnsw, sel)
    if kind == "ivf_sq8":
        base = params.nprobe if params else index.nprobe
        ivf = faiss.SearchParametersIVF()
        ivf.nprobe = min(index.nlist, math.ceil(base * boost))
        return _with_selector(ivf, sel)
    return _with_selector(faiss.SearchParameters(), sel) if sel is not None else None


def _with_selector(sp: Any, sel: faiss.IDSelector | None) -> Any:
    if sel is not None:
        sp.sel = sel
    return sp


def bitmap_selector(mask: np.ndarray) -> faiss.IDSelector:
    """A faiss id selector passing the ids where the boolean ``mask`` is True."""
    bits = np.packbits(np.asarray(mask, dtype=bool), bitorder="little")
    # faiss's wrapper takes the bitmap alone (n from its length, a reference kept); the stub lists (n, bitmap)
    return faiss.IDSelectorBitmap(bits)  # type: ignore[call-arg, arg-type]


def _codes_view(storage: SimilarityIndex) -> np.ndarray:
    """Zero-copy (ntotal, code_size) uint8 view of an IndexFlatCodes' codes (read, copy, drop)."""
    size = storage.code_size
    return faiss.rev_swig_ptr(storage.codes.data(), storage.ntotal * size).reshape(-1, size)


def _exact_over(index: SimilarityIndex, kind: str, queries: np.ndarray, k: int, mask: np.ndarray,
                count: int) -> tuple[np.ndarray, np.ndarray]:
    """Exhaustive top-k of ``queries`` over the stored vectors where ``mask`` is True.

    Few ids (<= max(2048, n/256)): gather their codes, decode, score (O(allowed)). More: scan
    all stored codes with a bitmap selector (O(n) bit tests + O(allowed) distances, no copies).
    Both exact over what the index stores (for 8-bit / fp16 kinds: the decoded vectors).
    """
    n = index.ntotal
    if count == 0 or len(queries) == 0:
        return (np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), -1, np.int64))
    storage = index if kind in ("flat", "ivf_sq8") else _concrete(index.storage)
    if count <= max(_GATHER_BELOW, n // 256):
        ids = np.flatnonzero(mask)
        vecs = index.reconstruct_batch(ids) if kind == "ivf_sq8" else storage.sa_decode(_codes_view(storage)[ids])
        kk = min(k, count)
        d, i = faiss.knn(queries, vecs, kk, faiss.METRIC_INNER_PRODUCT)
        scores = np.full((len(queries), k), -np.inf, np.float32)
        out = np.full((len(queries), k), -1, np.int64)
        scores[:, :kk], out[:, :kk] = d, np.where(i >= 0, ids[np.maximum(i, 0)], -1)
        return scores, out
    sp: faiss.SearchParameters = faiss.SearchParameters()
    if kind == "ivf_sq8":
        sp = faiss.SearchParametersIVF()
        sp.nprobe = index.nlist
    sp.sel = bitmap_selector(mask)
    return storage.search(queries, k, params=sp)


def search(index: SimilarityIndex, queries: np.ndarray, k: int, allowed: np.ndarray | None = None,
           params: IndexParams | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` by inner product: (scores (q, k) float32, ids (q, k) int64).

    Missing hits (fewer than ``k`` vectors, or allowed ids) are id -1 with score -inf.
    ``allowed`` is an optional boolean mask of length ``index.ntotal`` (a filter: bbox, label,
    date...); only ids where it is True are returned. Filtered strategy (measured at 1M, see
    ``benchmarks/bench_index.py``):

    * at most ``filter_exact_below`` (20 000) allowed ids, a selective filter: exhaustive over
      just the allowed vectors, exact over what the index stores (few ids: gather and decode
      them; more: one pass over the stored codes with a bitmap, no copies). A graph walk would
      pass ~1/fraction disallowed vectors per allowed one and loses recall when the allowed ids
      lie in other clusters than the query's (a bbox: nearby places look alike). At 1 % of 1M:
      recall 0.995-0.998 in ~10-13 ms, against 0.965-0.975 for the plain filtered walk;
    * more allowed ids: the graph walk with a faiss ``IDSelectorBitmap``, its beam (``efSearch``,
      or ``nprobe``) raised by ``filter_boost / sqrt(fraction)`` (capped at ``filter_boost_max``
      x), since disallowed vectors still take beam steps. At 10 % of 1M (random or one block of
      cells, boost 2): recall 0.985, p50 ~1.1 ms (exhaustive: 0.99 in 20-28 ms). A bbox, label
      and date filter together passing 34 % of 100 000 (``benchmarks/bench_engines.py``) needs
      more: recall 0.883 with boost 2 (the earlier default), 0.954 with 8 (p50 1.1 ms). A query
      whose walk finds fewer than min(k, allowed) hits is redone exhaustively, so k results come
      back whenever k pass;
    * all allowed: a plain search.

    ``params`` overrides the index's stored search settings for this call (default: those
    stored in the index, and ``IndexParams()``'s filter settings). ``k`` may exceed the
    HNSW beam: the beam is raised to at least ``k``.
    """
    _ensure_threads()
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if _reranked(index):
        fp = params or IndexParams()
        mask = None if allowed is None else np.asarray(allowed, dtype=bool)
        if mask is not None and mask.shape != (index.ntotal,):
            raise ValueError(f"allowed must be a boolean mask of shape ({index.ntotal},), got {mask.shape}")
        return index.search(_as_rows(queries, index.d), k, mask, params.nprobe if params else None,
                            params.shortlist if params else None, fp.filter_exact_below, fp.filter_boost,
                            fp.filter_boost_max)
    owner, index = index, _concrete(index)  # noqa: F841  (owner keeps a downcast target alive)
    kind = index_kind(index)
    x = _as_rows(queries, index.d)
    n = index.ntotal
    if len(x) == 0:
        return np.empty((0, k), np.float32), np.empty((0, k), np.int64)
    mask = None if allowed is None else np.asarray(allowed, dtype=bool)
    if mask is not None and mask.shape != (n,):
        raise ValueError(f"allowed must be a boolean mask of shape ({n},), got {mask.shape}")
    count = n if mask is None else int(np.count_nonzero(mask))
    fp = params or IndexParams()
    if count == n or mask is None:
        scores, ids = index.search(x, k, params=_search_parameters(index, kind, k, params))
    elif count <= fp.filter_exact_below:
        scores, ids = _exact_over(index, kind, x, k, mask, count)
    else:
        sel = bitmap_selector(mask)
        boost = max(1.0, min(fp.filter_boost_max, fp.filter_boost / math.sqrt(count / n)))
        scores, ids = index.search(x, k, params=_search_parameters(index, kind, k, params, boost, sel))
        short = np.flatnonzero((ids >= 0).sum(axis=1) < min(k, count))
        if len(short):  # the walk ran dry before k allowed hits: those queries go exhaustive
            scores[short], ids[short] = _exact_over(index, kind, x[short], k, mask, count)
    scores = np.array(scores, dtype=np.float32)
    ids = np.asarray(ids, dtype=np.int64)
    scores[ids < 0] = -np.inf
    return scores, ids

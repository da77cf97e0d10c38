"""Benchmark: the similarity index (``imagesim_pipeline.search.index``) at 100 000 to 1 000 000 vectors.

Data. Generated chip embeddings of width ``--dim`` (320) that look like the SMLC head's last hidden
layer (Linear -> ReLU -> BatchNorm) rather than uniform noise: a latent point ``z`` (32-d) is drawn
from a mixture of ``--clusters`` (300) gaussians with Zipf-like weights (a few land covers are
common, most are rare) and anisotropic spread (each cluster its own random axes, singular values
decaying 0.8^i); it is mapped to the width by a fixed random linear layer plus bias and small
isotropic noise, passed through a ReLU (so many coordinates sit at their floor, as in the real
layer), standardised per dimension with a random gain and offset (BatchNorm in eval mode), then
L2-normalised. Rows come in cells of 1024 (one level-12 cell of zoom-17 chips, ids contiguous per
cell, cells on a square grid); each cell lies in a Voronoi region with 3 local clusters that draw
70 % of its rows (places near each other look alike), the rest from the global mixture. Queries are
fresh draws from the global mixture (not in the corpus).

Measured, for each size, in one process (nothing cached between runs):

* exact baseline ``flat`` (``IndexFlatIP``): its build time and size, single-query latency, and the
  ground truth (top-10 of every query, batch search) that all recalls are measured against;
* each approximate kind (``hnsw_flat``, ``hnsw_fp16``, ``hnsw_sq8``, ``ivf_sq8``; built by ``build_index`` with
  ``IndexParams`` defaults except the kind): build time, size (serialised bytes / n, and the growth
  of this process's RSS over the build / n), and for a few ``efSearch`` / ``nprobe`` settings
  recall@10 and single-query latency p50/p99 (one query per ``search`` call, through the module's
  own ``search``, at 1 and 2 faiss/BLAS threads);
* at the largest size, filtered queries on the default kind with masks allowing 1 % and 10 % of
  the corpus, random ids and a spatial block of cells: both strategies of ``search`` (exact scoring
  of the allowed ids, and the graph search with an ``IDSelectorBitmap`` at a few beam boosts) and
  the one ``search`` picks by default, recall@10 against exact filtered search (numpy over the
  allowed float32 rows) and latency (2 threads).

* the quantised kind ``ivf_rabitq`` among the kinds (bytes per vector: the codes in RAM; its
  float16 re-rank vectors live on disk);
* the vector engines of ``bench_engines.py`` (``--engines``, default ``pgvector``) at the smallest
  size, on that benchmark's corpus and filters; every JSON row names its ``engine``.

Usage: python benchmarks/bench_index.py [--sizes 100000,1000000] [--queries 1000] [--dim 320]
       [--json OUT] [--kinds hnsw_flat,hnsw_fp16,hnsw_sq8,ivf_sq8,ivf_rabitq] [--engines pgvector]
       [--latency-queries 1000]
The default run took 21 min on the 2-core development machine (four ~3-5 min builds at 1M);
``--kinds hnsw_fp16`` alone takes about a third of that.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import sys
import time
from dataclasses import replace

import faiss
import numpy as np
from threadpoolctl import threadpool_limits

from imagesim_pipeline.search.index import (
    IndexParams,
    available_cpus,
    build_index,
    describe,
    normalise,
    search,
    set_threads,
)

LATENT, CELL_ROWS, LOCAL_SHARE, LOCAL_CLUSTERS = 32, 1024, 0.7, 3
SWEEPS = {"hnsw_flat": [16, 32, 64, 128], "hnsw_fp16": [16, 32, 64, 128], "hnsw_sq8": [16, 32, 64, 128, 256],
          "ivf_sq8": [16, 32, 64, 128], "ivf_rabitq": [16, 32, 64]}
FILTER_BOOSTS = [1.0, 2.0, 4.0, 8.0]
K = 10


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# --------------------------------------------------------------------------- data

class EmbeddingModel:
    """The fixed generative model of the embeddings (see the module docstring)."""

    def __init__(self, dim: int, clusters: int, seed: int = 7) -> None:
        rng = np.random.default_rng(seed)
        self.dim, self.clusters = dim, clusters
        w = 1.0 / (np.arange(clusters) + 10.0)
        self.weights = rng.permutation(w / w.sum())
        self.centres = rng.normal(0, 1.5, (clusters, LATENT)).astype(np.float32)
        scale = rng.uniform(0.3, 0.8, clusters)
        sv = 0.8 ** np.arange(LATENT)
        self.axes = (rng.normal(0, 1 / math.sqrt(LATENT), (clusters, LATENT, LATENT))
                     * (scale[:, None, None] * sv[None, None, :])).astype(np.float32)
        self.proj = rng.normal(0, 1 / math.sqrt(LATENT), (LATENT, dim)).astype(np.float32)
        self.bias = rng.normal(0, 0.5, dim).astype(np.float32)
        self.gain = rng.uniform(0.5, 1.5, dim).astype(np.float32)
        self.offset = rng.normal(0, 0.2, dim).astype(np.float32)
        h = self._hidden(rng.choice(clusters, 50_000, p=self.weights), rng)
        self.mean, self.std = h.mean(0), h.std(0) + 1e-3

    def _hidden(self, assign: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        g = rng.standard_normal((len(assign), LATENT), dtype=np.float32)
        z = self.centres[assign] + np.einsum("nij,nj->ni", self.axes[assign], g)
        pre = z @ self.proj + self.bias + rng.normal(0, 0.15, (len(assign), self.dim)).astype(np.float32)
        return np.maximum(pre, 0)

    def sample(self, assign: np.ndarray, rng: np.random.Generator, out: np.ndarray) -> None:
        """Embeddings (normalised) of rows with cluster ids ``assign`` into ``out``."""
        h = self._hidden(assign, rng)
        out[:] = normalise((h - self.mean) / self.std * self.gain + self.offset)


def make_corpus(model: EmbeddingModel, n: int, seed: int, chunk: int = 50_000,
                clusters: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """(vectors (n, dim) float32 normalised, cell of each row, grid side); each row's cluster into
    ``clusters`` when given."""
    rng = np.random.default_rng(seed)
    cells = math.ceil(n / CELL_ROWS)
    side = math.ceil(math.sqrt(cells))
    cell_xy = np.stack([np.arange(cells) % side, np.arange(cells) // side], 1)
    regions = max(4, cells // 8)
    seeds = rng.uniform(0, side, (regions, 2))
    region_of_cell = np.argmin(((cell_xy[:, None, :] - seeds[None]) ** 2).sum(-1), axis=1)
    local = rng.choice(model.clusters, (regions, LOCAL_CLUSTERS), p=model.weights)
    cell_of_row = np.arange(n) // CELL_ROWS
    x = np.empty((n, model.dim), dtype=np.float32)
    for s in range(0, n, chunk):
        rows = slice(s, min(n, s + chunk))
        m = rows.stop - rows.start
        region = region_of_cell[cell_of_row[rows]]
        is_local = rng.random(m) < LOCAL_SHARE
        assign = np.where(is_local, local[region, rng.integers(0, LOCAL_CLUSTERS, m)],
                          rng.choice(model.clusters, m, p=model.weights))
        model.sample(assign, rng, x[rows])
        if clusters is not None:
            clusters[rows] = assign
        if (s // chunk) % 5 == 4:
            log(f"  generated {rows.stop:,}/{n:,}")
    return x, cell_of_row, side


def make_queries(model: EmbeddingModel, q: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.empty((q, model.dim), dtype=np.float32)
    model.sample(rng.choice(model.clusters, q, p=model.weights), rng, x)
    return x


def masks(n: int, cell_of_row: np.ndarray, side: int, seed: int) -> dict[str, np.ndarray]:
    """Random and spatial (a square block of cells) masks allowing ~1 % and ~10 % of the rows."""
    rng = np.random.default_rng(seed)
    out = {}
    for frac in (0.01, 0.10):
        out[f"random {frac:.0%}"] = rng.random(n) < frac
        b = max(1, round(side * math.sqrt(frac)))
        x0, y0 = rng.integers(0, side - b + 1, 2)
        cx, cy = cell_of_row % side, cell_of_row // side
        out[f"spatial {frac:.0%}"] = (cx >= x0) & (cx < x0 + b) & (cy >= y0) & (cy < y0 + b)
    return out


# --------------------------------------------------------------------------- measures

def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |found top-k ∩ true top-k| / |true top-k| (true -1 pads ignored)."""
    hits = total = 0
    for f, t in zip(found, truth):
        t = t[t >= 0]
        hits += len(np.intersect1d(f[f >= 0], t))
        total += len(t)
    return hits / max(total, 1)


def latency(index, queries: np.ndarray, threads: int, allowed=None, params=None) -> tuple[float, float]:
    """Single-query latency p50, p99 in ms (one ``search`` call per query, after 10 warm-up calls)."""
    set_threads(threads)
    times = []
    with threadpool_limits(threads):
        for i, qv in enumerate(np.concatenate([queries[:10], queries])):
            t = time.perf_counter()
            search(index, qv[None], K, allowed=allowed, params=params)
            if i >= 10:
                times.append(time.perf_counter() - t)
    ms = np.array(times) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def exact_filtered(x: np.ndarray, queries: np.ndarray, mask: np.ndarray) -> np.ndarray:
    ids = np.flatnonzero(mask)
    sims = queries @ x[ids].T
    top = np.argpartition(-sims, K - 1, axis=1)[:, :K]
    order = np.argsort(-np.take_along_axis(sims, top, 1), axis=1)
    return ids[np.take_along_axis(top, order, 1)]


def build_measured(x: np.ndarray, params: IndexParams):
    gc.collect()
    before = rss_mb()
    t = time.perf_counter()
    index = build_index(x, params)
    seconds = time.perf_counter() - t
    grown = (rss_mb() - before) * 2**20 / len(x)
    info = describe(index)
    if info["kind"] == "ivf_rabitq":  # codes in RAM; its float16 re-rank vectors go to disk
        serial = len(index.codes_bytes()) / len(x)
    else:
        serial = faiss.serialize_index(index).nbytes / len(x)
    return index, {"engine": "faiss", "build_s": round(seconds, 1), "bytes_per_vector": round(serial, 1),
                   "rss_bytes_per_vector": round(grown, 1), "describe": info}


def run_size(n: int, args, model: EmbeddingModel, queries: np.ndarray, last: bool) -> dict:
    t0 = time.perf_counter()
    log(f"n={n:,}: generating corpus")
    x, cell_of_row, side = make_corpus(model, n, seed=n)
    result: dict = {"n": n, "kinds": {}}
    lat_q = queries[: args.latency_queries]

    log(f"n={n:,}: flat (exact) build and ground truth")
    set_threads(args.threads_max)
    flat, info = build_measured(x, IndexParams(kind="flat"))
    t = time.perf_counter()
    _, truth = search(flat, queries, K)
    info["batch_search_s"] = round(time.perf_counter() - t, 2)
    fq = lat_q[: args.flat_latency_queries]
    info["latency"] = {f"{th}t": latency(flat, fq, th) for th in (1, args.threads_max)}
    info["settings"] = {"exact": {"recall": 1.0, "latency": info.pop("latency")}}
    result["kinds"]["flat"] = info
    del flat
    gc.collect()

    kept = None
    for kind in args.kinds:
        log(f"n={n:,}: {kind} build")
        set_threads(args.threads_max)
        base = IndexParams(kind=kind)
        index, info = build_measured(x, base)
        log(f"n={n:,}: {kind} built in {info['build_s']} s; sweeping")
        info["settings"] = {}
        for v in SWEEPS[kind]:
            p = replace(base, ef_search=v) if kind.startswith("hnsw") else replace(base, nprobe=v)
            name = f"ef={v}" if kind.startswith("hnsw") else f"nprobe={v}"
            set_threads(args.threads_max)
            _, ids = search(index, queries, K, params=p)
            info["settings"][name] = {
                "recall": round(recall(ids, truth), 4),
                "latency": {f"{th}t": latency(index, lat_q, th, params=p) for th in (1, args.threads_max)}}
        result["kinds"][kind] = info
        if last and kind == args.filter_kind:
            kept = index
        else:
            del index
        gc.collect()

    if last and kept is not None:
        result["filtered"] = run_filtered(kept, x, queries, cell_of_row, side, args)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return result


def run_filtered(index, x, queries, cell_of_row, side, args) -> dict:
    n = len(x)
    out = {}
    base = IndexParams(kind=args.filter_kind)
    fq = queries[: args.filter_latency_queries]
    for name, mask in masks(n, cell_of_row, side, seed=11).items():
        log(f"filtered {name}: exact ground truth and strategies")
        truth = exact_filtered(x, queries, mask)
        variants = {"default": base, "exact-over-allowed": replace(base, filter_exact_below=n)}
        for b in FILTER_BOOSTS:
            variants[f"selector boost={b:g}"] = replace(base, filter_exact_below=0, filter_boost=b,
                                                        filter_boost_max=max(b, 1.0) * 100)
        row = {"allowed": int(mask.sum())}
        set_threads(args.threads_max)
        for vname, p in variants.items():
            _, ids = search(index, queries, K, allowed=mask, params=p)
            bad = int(np.count_nonzero((ids >= 0) & ~mask[np.maximum(ids, 0)]))
            p50, p99 = latency(index, fq, args.threads_max, allowed=mask, params=p)
            row[vname] = {"recall": round(recall(ids, truth), 4), "p50_ms": p50, "p99_ms": p99,
                          "disallowed_returned": bad}
        out[name] = row
    return out


# --------------------------------------------------------------------------- report

def print_report(results: list[dict], args) -> None:
    print(f"\nimagesim index benchmark: dim {args.dim}, {args.queries} queries (latency: "
          f"{args.latency_queries} single queries, flat {args.flat_latency_queries}), k={K}, "
          f"{args.clusters} clusters; faiss {faiss.__version__}, {available_cpus()} CPUs")
    print("recall@10 vs exact IndexFlatIP; p50/p99 ms per single query at 1 and "
          f"{args.threads_max} threads; B/vec = serialised bytes / n (RSS growth / n)")
    for r in results:
        print(f"\n== n = {r['n']:,}  ({r['seconds']} s)")
        print(f"{'kind':<10} {'setting':<11} {'recall':>7} {'p50 1t':>7} {'p99 1t':>7} "
              f"{'p50 2t':>7} {'p99 2t':>7} {'build s':>8} {'B/vec':>7} {'(RSS)':>7}")
        for kind, info in r["kinds"].items():
            first = True
            for setting, s in info["settings"].items():
                lat = list(s["latency"].values())
                build = (f"{info['build_s']:>8} {info['bytes_per_vector']:>7.0f} "
                         f"{info['rss_bytes_per_vector']:>7.0f}") if first else ""
                print(f"{kind if first else '':<10} {setting:<11} {s['recall']:>7.4f} "
                      f"{lat[0][0]:>7.3f} {lat[0][1]:>7.3f} {lat[-1][0]:>7.3f} {lat[-1][1]:>7.3f} {build}")
                first = False
        if "filtered" in r:
            print(f"\n-- filtered ({args.filter_kind}, {args.threads_max} threads, "
                  f"{args.filter_latency_queries} single queries for latency)")
            print(f"{'mask':<12} {'allowed':>8} {'strategy':<20} {'recall':>7} {'p50 ms':>7} "
                  f"{'p99 ms':>7} {'bad ids':>7}")
            for mname, row in r["filtered"].items():
                first = True
                for vname, v in row.items():
                    if vname == "allowed":
                        continue
                    print(f"{mname if first else '':<12} {row['allowed'] if first else '':>8} {vname:<20} "
                          f"{v['recall']:>7.4f} {v['p50_ms']:>7.3f} {v['p99_ms']:>7.3f} "
                          f"{v['disallowed_returned']:>7}")
                    first = False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=320)
    ap.add_argument("--clusters", type=int, default=300)
    ap.add_argument("--kinds", default="hnsw_flat,hnsw_fp16,hnsw_sq8,ivf_sq8,ivf_rabitq")
    ap.add_argument("--engines", default="pgvector",
                    help="vector engines measured by bench_engines.py at the smallest size ('' for none)")
    ap.add_argument("--filter-kind", default=IndexParams().approximate)
    ap.add_argument("--latency-queries", type=int, default=1000)
    ap.add_argument("--flat-latency-queries", type=int, default=100)
    ap.add_argument("--filter-latency-queries", type=int, default=200)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    args.kinds = [k for k in args.kinds.split(",") if k]
    args.latency_queries = min(args.latency_queries, args.queries)
    args.threads_max = min(2, available_cpus())
    sizes = [int(s) for s in args.sizes.split(",")]
    started = time.perf_counter()
    log(f"machine: {platform.processor() or platform.machine()}, {available_cpus()} CPUs, "
        f"load {os.getloadavg()[0]:.2f}")
    model = EmbeddingModel(args.dim, args.clusters)
    queries = make_queries(model, args.queries, seed=1)
    results = []
    for i, n in enumerate(sizes):
        results.append(run_size(n, args, model, queries, last=i == len(sizes) - 1))
    engines = []
    if args.engines:
        import bench_engines

        log(f"engines {args.engines} at n={sizes[0]:,} (bench_engines.py, its bbox+label+date filters)")
        engines = bench_engines.run(sizes[0], args.dim, min(args.queries, 200), args.engines.split(","))
    print_report(results, args)
    if engines:
        print(f"\n-- vector engines at n = {sizes[0]:,} (benchmarks/bench_engines.py; B/vec = stored bytes / n)")
        bench_engines.print_table(engines)
    total = time.perf_counter() - started
    print(f"\ntotal {total:.0f} s; load average at the end {os.getloadavg()[0]:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": {k: v for k, v in vars(args).items()}, "results": results, "engines": engines,
                       "total_s": round(total, 1), "faiss": faiss.__version__}, f, indent=1)


if __name__ == "__main__":
    main()

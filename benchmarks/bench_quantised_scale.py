"""Benchmark: the quantised index kind (``ivf_rabitq``, ``search.quantised``) at 10⁷ generated vectors.

The corpus is ``bench_index.py``'s generated embeddings (width ``--dim``, 368), made and written in
chunks so memory stays bounded: float16 rows go to a ``.npy`` file on disk (the re-rank store,
memory-mapped as the product does), and each chunk is added to the kind's code index (PCA-256, IVF
``--nlist``, 2-bit RaBitQ) trained on a 200 000-row sample. Printed: build seconds, the process's peak RSS and its RSS after
the build (codes and lists only; the float16 file is not read), bytes per vector in RAM and on
disk, and recall@10 / single-query p50 and p99 for a few shortlist sizes against exact search
over the stored float16 vectors (chunked brute force). A cold file cache is not forced: with 24 GB
of RAM the 7 GB file is partly cached, so latencies are those of a warm SSD-backed machine.

Usage: python benchmarks/bench_quantised_scale.py [--size 10000000] [--nlist 4096] [--queries 200]
       [--dir /var/tmp] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_index import EmbeddingModel, log, make_corpus, make_queries, rss_mb  # noqa: E402

from imagesim_pipeline.search.index import available_cpus  # noqa: E402
from imagesim_pipeline.search.quantised import RerankedIndex  # noqa: E402

K = 10
CHUNK = 500_000


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=10_000_000)
    ap.add_argument("--dim", type=int, default=368)
    ap.add_argument("--nlist", type=int, default=4096)
    ap.add_argument("--nprobe", type=int, default=32)
    ap.add_argument("--shortlists", default="250,500,1000")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--dir", default=tempfile.gettempdir())
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    faiss.omp_set_num_threads(available_cpus())
    work = Path(tempfile.mkdtemp(prefix="bench-quantised-", dir=args.dir))
    model = EmbeddingModel(args.dim, 300)
    n, d = args.size, args.dim
    try:
        started = time.perf_counter()
        train, _, _ = make_corpus(model, 200_000, seed=99)
        codes = RerankedIndex.untrained(d, args.nlist)
        codes.train(train)
        del train
        log(f"trained {type(codes).__name__} (PCA, IVF{args.nlist}, RaBitQ) in {time.perf_counter() - started:.0f} s")
        path = work / "vectors.npy"
        store = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, d))
        for s in range(0, n, CHUNK):
            m = min(CHUNK, n - s)
            x, _, _ = make_corpus(model, m, seed=1000 + s // CHUNK)
            codes.add(x)
            store[s:s + m] = x
            log(f"  added {s + m:,}/{n:,} (RSS {rss_mb():,.0f} MB)")
            del x
        store.flush()
        del store
        build_s = time.perf_counter() - started
        rss_after = rss_mb()
        index = RerankedIndex(codes, np.load(path, mmap_mode="r"), nprobe=args.nprobe)
        codes_bytes = len(faiss.serialize_index(codes))
        queries = make_queries(model, args.queries, seed=7)
        log("exact ground truth over the stored float16 vectors")
        best_s = np.full((len(queries), K), -np.inf, np.float32)
        best_i = np.zeros((len(queries), K), np.int64)
        vectors = index.vectors
        for s in range(0, n, CHUNK):
            block = np.asarray(vectors[s:s + CHUNK], np.float32)
            sc = queries @ block.T
            top = np.argpartition(-sc, K, axis=1)[:, :K]
            cand_s = np.concatenate([best_s, np.take_along_axis(sc, top, 1)], 1)
            cand_i = np.concatenate([best_i, top + s], 1)
            order = np.argsort(-cand_s, axis=1)[:, :K]
            best_s, best_i = np.take_along_axis(cand_s, order, 1), np.take_along_axis(cand_i, order, 1)
        rows = []
        for shortlist in [int(v) for v in args.shortlists.split(",")]:
            times, hits = [], 0
            for qi, q in enumerate(queries):
                t = time.perf_counter()
                _, ids = index.search(q[None], K, shortlist=shortlist)
                times.append((time.perf_counter() - t) * 1000)
                hits += len(set(ids[0].tolist()) & set(best_i[qi].tolist()))
            rows.append({"shortlist": shortlist, "recall": round(hits / (K * len(queries)), 4),
                         "p50_ms": round(float(np.percentile(times, 50)), 2),
                         "p99_ms": round(float(np.percentile(times, 99)), 2)})
            log(f"shortlist {shortlist}: {rows[-1]}")
        result = {"engine": "faiss", "kind": "ivf_rabitq", "n": n, "dim": d, "nlist": args.nlist,
                  "nprobe": args.nprobe, "build_s": round(build_s, 1),
                  "bytes_per_vector": round(index.bytes_per_vector(), 1),
                  "serialised_codes_bytes_per_vector": round(codes_bytes / n, 1),
                  "disk_bytes_per_vector": round(path.stat().st_size / n, 1),
                  "rss_after_build_mb": round(rss_after, 0), "peak_rss_mb": round(peak_rss_mb(), 0),
                  "searches": rows}
        print(f"\nivf_rabitq at {n:,} x {d}: build {build_s:.0f} s, RAM {result['bytes_per_vector']} B/vector "
              f"(serialised codes {result['serialised_codes_bytes_per_vector']}), disk "
              f"{result['disk_bytes_per_vector']} B/vector, RSS after build {rss_after:,.0f} MB, peak "
              f"{result['peak_rss_mb']:,.0f} MB")
        print(f"{'shortlist':>10}{'recall@10':>11}{'p50 ms':>8}{'p99 ms':>8}")
        for r in rows:
            print(f"{r['shortlist']:>10}{r['recall']:>11}{r['p50_ms']:>8}{r['p99_ms']:>8}")
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

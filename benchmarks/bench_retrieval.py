"""Benchmark: how well the SMLC embedding serves retrieval and change detection, against raw backbone
features and random vectors, on the demo world (or any bucket holding the same artefacts).

Inputs (all read from the bucket, nothing is written): the model version's chip embeddings
(``embeddings/<version>/``: ``embedding``, the SMLC head's 320-d layer), the dataset the model was
trained on (``dataset_version`` in the model's metrics.json: OSM labels, dense 0/1 per chip, and
its train/val/test split), the backbone-feature cache the model was trained from (``feature_cache``
in metrics.json: ``features/<key>/{train,val,test}.npz``, the frozen ImageNet backbone's pooled
1280-d features of every dataset chip), the change table ``changes/<version>/changes.parquet`` and,
for part 2, the demo world's change ground truth ``demo/changes.parquet``.

Part 1, retrieval precision@10
------------------------------
Representations, of the very same chips: ``smlc`` (the embedding), ``backbone`` (raw cached
features, no centring or whitening) and ``random`` (i.i.d. Gaussian 320-d vectors per chip, seeded
with ``--seed``; the floor; repeated ``--random-repeats`` times with seeds seed, seed+1, ... and
averaged, the spread across repeats is printed).

* Corpus: every chip that has all three representations *and* dataset labels (an embedded chip the
  dataset dropped, e.g. for having no label, has no backbone feature and no ground truth: it is
  left out of every representation, and counted in the output).
* Queries: the corpus chips of the dataset's **test split**. The splits are spatially held out
  (whole zoom-15 blocks go to one split), so no query, and no place near one, was seen by the SMLC
  head in training. The corpus itself contains train/val chips: the SMLC head was trained on
  *their* labels, which is exactly how the search service uses it.
* Search: cosine similarity (rows L2-normalised, exact inner product over the whole corpus, numpy).
* Exclusions per query: the query's own place (both acquisitions) and every place within two chips
  of it: same UTM zone and Chebyshev distance <= 2 between the places' zoom-17 tile coordinates
  (``ArdCell.parse(place).tile``), i.e. the 5 x 5 block of places around the query. Then one result
  per place (its best-scoring acquisition), as in the search engine. The top 10 remaining places
  are the results.
* Relevance (ground truth = the dataset's OSM label sets, never predictions), two rules:
  ``exact``: the result chip's label set equals the query chip's label set;
  ``jaccard>=0.5``: |A & B| / |A | B| >= 0.5 for the two label sets.
* precision@10 = relevant results among the 10 / 10, averaged over queries. AP@10 =
  sum over relevant ranks k of precision@k, divided by min(R, 10), where R is the number of
  eligible places (after exclusions) with at least one acquisition relevant to the query;
  mAP@10 is its mean over queries. ``ceiling`` = mean of min(R, 10) / 10, the best precision@10
  any representation could reach; ``R=0`` counts queries with no relevant place at all (they
  score 0 for every representation and stay in the means). precision@10 is also broken down by
  the query's region (its catalog id without the trailing acquisition letter: SYNTH, KOTKA, ...).
* Queries without labels (empty label set): left out of the queries (their Jaccard is undefined
  and "equal to the empty set" is not a similarity); the count is printed. Corpus chips without
  labels stay in the corpus and are never relevant to a labelled query under either rule.

Part 1b, the label weight
-------------------------
The same protocol for the model's own embedding (unit length) followed by its classifier's label
probabilities less 0.5 (unit length, times a weight: 0, 1, 2, 3, 4, and the probabilities alone),
from the stored ``embedding`` and ``probs`` columns, with the **val** split's chips as queries (where
the weight is chosen: the smallest label weight, i.e. the most weight on appearance, whose exact
P@10 is within 0.005 of the best) and with the test split's (the reported figures). This is how
``models/recommended.py``'s ``label_weight`` was chosen.

Part 2, change detection against the ground truth
-------------------------------------------------
Pairs: the rows of the change table (one per place and pair of consecutive acquisitions); a pair
whose chips lack a backbone feature is left out for both representations (counted). Scores per pair:

* ``smlc distance``: the stored cosine distance ``1 - cos`` of the two embeddings (checked against
  a recomputation from the embeddings, max difference printed);
* ``smlc score``: the robust z-score (``changes.detect.robust_scores``: groups acquisition pair +
  kind, then acquisition pair, then all, min group 30) of the stored distances, recomputed over the
  evaluated pairs so that it is normalised over exactly the set the backbone score is;
  ``smlc score (stored)``: the table's own ``score``, normalised over all its pairs (it differs
  from the former only in the groups that lost a left-out pair; both are printed, and the stored
  score is checked against a recomputation over the whole table);
* ``backbone distance``: the same cosine distance on the cached backbone features;
* ``backbone score``: ``robust_scores`` of the backbone distances over the evaluated pairs with the
  *same* groups (kind = the SMLC's most probable label, as stored), so only the representation
  differs.

Truths: ``any vanished``: a pair is positive when its place is in ``demo/changes.parquet`` (some
building vanished between the acquisitions), negative otherwise. ``share>=0.05``: positive when the
vanished buildings cover at least 5 % of the place's area; places with a smaller vanished share
are left out of both classes. Ground-truth places that have no pair in the change table (their chips
were not embedded: not "all data", e.g. partly outside the image) cannot be scored by any
representation; they are counted (with the chip class that kept them out) but not in the metrics.
Metrics (higher score = more changed): AUROC and average precision (sklearn), the positive base
rate (which is the AP of a random ranking), and precision among the 20 and 100 highest-scoring pairs.
Base rates differ a lot between acquisition pairs (regions), which pooled raw distances can
confound, so AUROC is also printed within each acquisition pair for the ``any vanished`` truth
(NaN where a pair has no positive or no negative).

Runs in well under a minute on 2 cores for the ~5 900-chip demo; memory: all vectors and a
(test queries x corpus) similarity matrix (~16 MB for the demo).

Usage: python benchmarks/bench_retrieval.py [--bucket URI] [--model-version V] [--json OUT]
       [--seed 0] [--random-repeats 5] [--k 10]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from collections import Counter

import numpy as np
import pyarrow.parquet as pq

from imagesim_pipeline.ard.grid import ArdCell
from imagesim_pipeline.models.registry import DEFAULT_NAME, get_pointer, read_metrics
from imagesim_pipeline.storage import layout, open_bucket

MIN_JACCARD = 0.5
STRICT_SHARE = 0.05
EXCLUDE_RADIUS = 2  # places (zoom-17 tiles), Chebyshev
RANDOM_DIM = 320
TOP = (20, 100)
T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(n > 0, n, 1)


def table(title: str, header: list[str], rows: list[list]) -> None:
    cells = [[f"{v:.4f}" if isinstance(v, float) else str(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths))))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))))


# --------------------------------------------------------------------------- loading

def load_embeddings(bucket, version: str) -> dict:
    from imagesim_pipeline.embeddings.cell_embeddings import iter_embeddings, vectors

    chips, places, emb, probs = [], [], [], []
    for _cell, t in iter_embeddings(bucket, version):
        chips += t.column("chip").to_pylist()
        places += t.column("place").to_pylist()
        emb.append(vectors(t, "embedding"))
        probs.append(vectors(t, "probs"))
    log(f"embeddings: {len(chips)} chips")
    return {"chips": chips, "places": places, "emb": np.concatenate(emb) if emb else np.zeros((0, 320), np.float32),
            "probs": np.concatenate(probs) if probs else np.zeros((0, 0), np.float32)}


def load_features(bucket, key: str) -> tuple[dict[str, int], np.ndarray]:
    names, feats = [], []
    for split in ("train", "val", "test"):
        z = np.load(io.BytesIO(bucket.read_bytes(f"features/{key}/{split}.npz")))
        names += [str(c) for c in z["chips"]]
        feats.append(z["features"].astype(np.float32))
    log(f"backbone features {key}: {len(names)} chips")
    return {c: i for i, c in enumerate(names)}, np.concatenate(feats)


def load_labels(bucket, dataset: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    from imagesim_pipeline.dataset.read import iter_dense

    labels, split_of = {}, {}
    for split in ("train", "val", "test"):
        for chips, dense in iter_dense(bucket, dataset, split):
            for c, row in zip(chips, dense):
                labels[c] = np.asarray(row, bool)
                split_of[c] = split
    log(f"dataset {dataset}: {len(labels)} labelled chips")
    return labels, split_of


# --------------------------------------------------------------------------- part 1

def _region(chip: str) -> str:
    """The chip's catalog id without a trailing acquisition letter (demo naming: SYNTHA/SYNTHB -> SYNTH)."""
    catalog = chip.split("_", 1)[1].rsplit(".", 1)[0]
    return catalog[:-1] if len(catalog) > 1 and catalog[-1] in "AB" else catalog


def top_places(sims: np.ndarray, excluded: np.ndarray, place_idx: np.ndarray, k: int) -> np.ndarray:
    """(Q, k) corpus rows: per query the k best places (best acquisition each), excluded rows skipped."""
    out = np.full((len(sims), k), -1, np.int64)
    for q in range(len(sims)):
        order = np.argsort(-sims[q], kind="stable")
        order = order[~excluded[q, order]]
        _, first = np.unique(place_idx[order], return_index=True)
        best = order[np.sort(first)[:k]]
        out[q, : len(best)] = best
    return out


def retrieval(data: dict, k: int, seed: int, repeats: int, reps: dict[str, list[np.ndarray]] | None = None) -> dict:
    """precision@k and mAP@k of each representation (default: smlc, backbone, random) under both rules."""
    chips, places, labels = data["chips"], data["places"], data["labels"]
    q_rows = data["query_rows"]
    place_ids, place_idx = np.unique(np.asarray(places, dtype=object), return_inverse=True)
    cells = [ArdCell.parse(p) for p in place_ids]
    zooms = {c.zoom for c in cells}
    if zooms != {17}:
        raise SystemExit(f"places are expected at zoom 17, found zooms {sorted(zooms)}")
    zone = np.array([c.zone for c in cells])[place_idx]
    xy = np.array([c.tile for c in cells], np.int64)[place_idx]
    excluded = ((zone[q_rows, None] == zone[None, :])
                & (np.abs(xy[q_rows, None, :] - xy[None, :, :]).max(axis=2) <= EXCLUDE_RADIUS))

    L = labels.astype(np.float32)
    inter = L[q_rows] @ L.T
    union = L[q_rows].sum(1, keepdims=True) + L.sum(1)[None, :] - inter
    bits = labels.astype(np.int64) @ (1 << np.arange(labels.shape[1], dtype=np.int64))
    rel = {"exact": bits[q_rows, None] == bits[None, :],
           f"jaccard>={MIN_JACCARD}": (inter / np.maximum(union, 1)) >= MIN_JACCARD}
    # R: eligible places with at least one relevant acquisition
    n_places = len(place_ids)
    R = {}
    for rule, m in rel.items():
        per_place = np.zeros((len(q_rows), n_places), bool)
        ok = m & ~excluded
        qi, ci = np.nonzero(ok)
        per_place[qi, place_idx[ci]] = True
        R[rule] = per_place.sum(1)

    if reps is None:
        reps = {"smlc": [data["smlc"]], "backbone": [data["backbone"]]}
        reps["random"] = [np.random.default_rng(seed + i).standard_normal((len(chips), RANDOM_DIM), np.float32)
                          for i in range(repeats)]
    results: dict = {"k": k, "queries": len(q_rows), "corpus_chips": len(chips), "corpus_places": n_places,
                     "excluded_places_per_query_mean": float(
                         np.mean([len(np.unique(place_idx[row])) for row in excluded])),
                     "rules": {}}
    for rule in rel:
        results["rules"][rule] = {"ceiling_precision": float(np.mean(np.minimum(R[rule], k) / k)),
                                  "queries_R0": int(np.sum(R[rule] == 0)),
                                  "queries_R_lt_k": int(np.sum(R[rule] < k)), "reps": {}}
    region = np.array([_region(c) for c in np.asarray(chips)[q_rows]])
    results["query_regions"] = dict(Counter(region.tolist()))
    for name, variants in reps.items():
        per_variant: dict[str, list] = {rule: [] for rule in rel}
        for v in variants:
            t = time.perf_counter()
            X = unit(v)
            sims = X[q_rows] @ X.T
            top = top_places(sims, excluded, place_idx, k)
            assert (top >= 0).all(), "fewer than k eligible places for some query"
            for rule, m in rel.items():
                hits = np.take_along_axis(m, top, axis=1)  # (Q, k)
                prec = hits.mean(1)
                cum = np.cumsum(hits, 1) / np.arange(1, k + 1)
                ap = (cum * hits).sum(1) / np.maximum(np.minimum(R[rule], k), 1)
                per_variant[rule].append((prec, ap))
            log(f"retrieval {name}: {len(q_rows)} queries in {time.perf_counter() - t:.1f}s")
        for rule in rel:
            precs = np.array([p.mean() for p, _ in per_variant[rule]])
            aps = np.array([a.mean() for _, a in per_variant[rule]])
            by_region = {r: float(np.mean([p[region == r].mean() for p, _ in per_variant[rule]]))
                         for r in sorted(set(region))}
            results["rules"][rule]["reps"][name] = {
                "precision_at_k": float(precs.mean()), "map_at_k": float(aps.mean()),
                "precision_at_k_std_over_repeats": float(precs.std()) if len(precs) > 1 else None,
                "repeats": len(variants), "precision_at_k_by_region": by_region}
    return results


LABEL_WEIGHTS = (0.0, 1.0, 2.0, 3.0, 4.0)
NEAR_BEST = 0.005  # the label weight's rule: the most weight on appearance within this of the best val P@10


def label_weight_sweep(data: dict, own: np.ndarray, probs: np.ndarray, split: np.ndarray, k: int) -> dict:
    """P@k and mAP@k of the embedding ``own`` followed by the label probabilities less 0.5 at each weight of
    :data:`LABEL_WEIGHTS` (and of the label probabilities alone), with the val queries (where the weight
    is chosen) and the test queries (the reported figures)."""
    labelled = data["labels"].sum(1) > 0
    centred = unit(probs - 0.5)
    reps = {f"label weight {w:g}": [np.hstack([unit(own), w * centred])] for w in LABEL_WEIGHTS}
    reps["label probabilities alone"] = [centred]
    out = {}
    for name in ("val", "test"):
        queries = {**data, "query_rows": np.flatnonzero((split == name) & labelled)}
        out[name] = retrieval(queries, k, 0, 1, reps)
    exact = {r: v["precision_at_k"] for r, v in out["val"]["rules"]["exact"]["reps"].items()}
    best = max(exact.values())
    out["chosen"] = next((w for w in LABEL_WEIGHTS if exact[f"label weight {w:g}"] >= best - NEAR_BEST - 1e-9),
                         LABEL_WEIGHTS[-1])  # none close enough: the most weight on labels offered
    return out


# --------------------------------------------------------------------------- part 2

def change_metrics(y: np.ndarray, s: np.ndarray) -> dict:
    from sklearn.metrics import average_precision_score, roc_auc_score

    order = np.argsort(-s, kind="stable")
    out = {"pairs": int(len(y)), "positives": int(y.sum()), "base_rate": float(y.mean()),
           "auroc": float(roc_auc_score(y, s)), "ap": float(average_precision_score(y, s))}
    for t in TOP:
        out[f"precision_top{t}"] = float(y[order[:t]].mean())
    return out


def changes(bucket, version: str, emb: dict, feat_row: dict[str, int], feats: np.ndarray) -> dict:
    from imagesim_pipeline.changes.detect import MIN_GROUP, robust_scores
    from imagesim_pipeline.demo.truth import read_changes

    ct = pq.read_table(io.BytesIO(bucket.read_bytes(layout.changes_key(version))))
    truth = read_changes(bucket).to_pandas()
    n_all = ct.num_rows
    before, after = ct.column("chip_before").to_pylist(), ct.column("chip_after").to_pylist()
    keep = np.array([b in feat_row and a in feat_row for b, a in zip(before, after)])
    left_out = sorted({p for p, k in zip(ct.column("place").to_pylist(), keep) if not k})
    full, ct = ct, ct.filter(keep)
    before, after = ct.column("chip_before").to_pylist(), ct.column("chip_after").to_pylist()
    place = np.asarray(ct.column("place").to_pylist(), dtype=object)

    # SMLC: stored distance and score; check the distance against the embeddings
    row_of = {c: i for i, c in enumerate(emb["chips"])}
    E = unit(emb["emb"])
    recomputed = 1.0 - np.einsum("ij,ij->i", E[[row_of[c] for c in before]], E[[row_of[c] for c in after]])
    smlc_d = ct.column("distance").to_numpy()
    smlc_s = ct.column("score").to_numpy()
    F = unit(feats)
    bb_d = (1.0 - np.einsum("ij,ij->i", F[[feat_row[c] for c in before]],
                            F[[feat_row[c] for c in after]])).astype(np.float64)
    pair = np.array([f"{a}>{b}" for a, b in zip(ct.column("catalog_before").to_pylist(),
                                                 ct.column("catalog_after").to_pylist())], dtype=object)
    kind = np.array([f"{p}|{k}" for p, k in zip(pair, ct.column("kind").to_pylist())], dtype=object)
    bb_s = robust_scores(bb_d, [kind, pair], MIN_GROUP)
    smlc_s_re = robust_scores(smlc_d, [kind, pair], MIN_GROUP)
    # the stored score against robust_scores over the whole table (before leaving pairs out)
    full_pair = np.array([f"{a}>{b}" for a, b in zip(full.column("catalog_before").to_pylist(),
                                                      full.column("catalog_after").to_pylist())], dtype=object)
    full_kind = np.array([f"{p}|{k}" for p, k in zip(full_pair, full.column("kind").to_pylist())], dtype=object)
    full_check = float(np.max(np.abs(robust_scores(full.column("distance").to_numpy(), [full_kind, full_pair],
                                                   MIN_GROUP) - full.column("score").to_numpy())))

    # ground truth
    share = dict(zip(truth["place"], truth["vanished_share"]))
    in_truth = np.array([p in share for p in place])
    sh = np.array([share.get(p, 0.0) for p in place])
    missing = sorted(set(truth["place"]) - set(ct.column("place").to_pylist()))
    missing_class = Counter()
    if missing:
        from imagesim_pipeline.chips.cell_chips import read_manifest

        cell_of = dict(zip(truth["place"], truth["cell"]))
        classes: dict[str, set] = {}
        for cell in sorted({cell_of[p] for p in missing}):
            try:
                for r in read_manifest(bucket, cell).chips:
                    classes.setdefault(r["chip"].split("_", 1)[0], set()).add(r["class"])
            except Exception:  # noqa: BLE001 - a missing manifest is just "unknown"
                pass
        for p in missing:
            missing_class[" / ".join(sorted(classes.get(p, {"no chip manifest row"})))] += 1
    # agreement of catalogs between truth and change table
    cat_truth = dict(zip(truth["place"], zip(truth["catalog_id_before"], truth["catalog_id_after"])))
    cat_table = dict(zip(place, zip(ct.column("catalog_before").to_pylist(), ct.column("catalog_after").to_pylist())))
    catalog_mismatch = sum(1 for p in cat_truth if p in cat_table and cat_truth[p] != cat_table[p])

    truths = {"any vanished": (np.ones(len(place), bool), in_truth),
              f"share>={STRICT_SHARE}": (~in_truth | (sh >= STRICT_SHARE), in_truth & (sh >= STRICT_SHARE))}
    scores = {"smlc distance": smlc_d, "smlc score": smlc_s_re, "smlc score (stored)": smlc_s,
              "backbone distance": bb_d, "backbone score": bb_s}
    out = {"pairs_in_table": n_all, "pairs_evaluated": int(len(place)), "places_left_out": left_out,
           "truth_places": int(len(truth)), "truth_places_without_pair": missing,
           "truth_places_without_pair_by_chip_class": dict(missing_class),
           "truth_catalog_mismatch": catalog_mismatch,
           "smlc_distance_max_abs_diff_vs_embeddings": float(np.max(np.abs(recomputed - smlc_d))),
           "smlc_score_max_abs_diff_vs_recomputed_on_table": full_check,
           "smlc_score_max_abs_diff_stored_vs_evaluated": float(np.max(np.abs(smlc_s_re - smlc_s))),
           "spearman_smlc_vs_backbone_distance": float(_spearman(smlc_d, bb_d)),
           "truths": {}}
    for tname, (use, y) in truths.items():
        out["truths"][tname] = {s: change_metrics(y[use], v[use]) for s, v in scores.items()}
    from sklearn.metrics import roc_auc_score

    out["auroc_by_acquisition_pair"] = {}
    for pr in sorted(set(pair)):
        m = pair == pr
        y = in_truth[m]
        row = {"pairs": int(m.sum()), "positives": int(y.sum())}
        for sname, v in scores.items():
            row[sname] = float(roc_auc_score(y, v[m])) if 0 < y.sum() < len(y) else float("nan")
        out["auroc_by_acquisition_pair"][pr] = row
    return out


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


# --------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bucket", default=None, help="bucket URI (default: the IMAGESIM_BUCKET setting)")
    ap.add_argument("--model-version", default="", help="model version (default: the latest pointer)")
    ap.add_argument("--features-key", default="", help="backbone feature cache (default: the model's)")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--random-repeats", type=int, default=5)
    ap.add_argument("--json", default="", help="write all numbers to this JSON file")
    args = ap.parse_args(argv)

    bucket = open_bucket(args.bucket)
    version = args.model_version or get_pointer(bucket, DEFAULT_NAME, "latest")
    metrics = read_metrics(bucket, DEFAULT_NAME, version)
    dataset = metrics.data.dataset_version
    fkey = args.features_key or metrics.data.feature_cache
    log(f"bucket {bucket.url('')}, model {version}, dataset {dataset}, features {fkey}")

    emb = load_embeddings(bucket, version)
    feat_row, feats = load_features(bucket, fkey)
    labels, split_of = load_labels(bucket, dataset)

    # corpus: chips with all three representations and labels
    erow = {c: i for i, c in enumerate(emb["chips"])}
    corpus = [c for c in emb["chips"] if c in feat_row and c in labels]
    left_out = {"embedded, no backbone feature / no dataset labels": sorted(
                    c for c in emb["chips"] if c not in feat_row or c not in labels),
                "backbone feature or dataset chip, not embedded": sorted(
                    set(feat_row) - set(erow) | (set(labels) - set(erow)))}
    lab = np.stack([labels[c] for c in corpus])
    test = np.array([split_of[c] == "test" for c in corpus])
    empty = lab.sum(1) == 0
    q_rows = np.flatnonzero(test & ~empty)
    data = {"chips": corpus, "places": [emb["places"][erow[c]] for c in corpus], "labels": lab,
            "smlc": emb["emb"][[erow[c] for c in corpus]], "backbone": feats[[feat_row[c] for c in corpus]],
            "query_rows": q_rows}
    log(f"corpus {len(corpus)} chips, {len(q_rows)} test queries")
    ret = retrieval(data, args.k, args.seed, args.random_repeats)
    ret["queries_without_labels_dropped"] = int(np.sum(test & empty))
    ret["corpus_chips_without_labels"] = int(empty.sum())
    ret["left_out"] = left_out
    # how often the two acquisitions of a place carry different OSM label sets
    bits = lab.astype(np.int64) @ (1 << np.arange(lab.shape[1], dtype=np.int64))
    by_place: dict[str, set] = {}
    for p, b in zip(data["places"], bits):
        by_place.setdefault(p, set()).add(int(b))
    ret["places_with_differing_label_sets"] = sum(len(s) > 1 for s in by_place.values())
    n_labels = emb["probs"].shape[1]
    own = data["smlc"][:, :-n_labels] if metrics.training.label_weight > 0 else data["smlc"]  # the strategy's part
    sweep = label_weight_sweep(data, own, emb["probs"][[erow[c] for c in corpus]],
                               np.array([split_of[c] for c in corpus]), args.k)

    log("change detection")
    chg = changes(bucket, version, emb, feat_row, feats)

    # ------------------------------------------------------------------ print
    k = args.k
    print(f"model {version}  dataset {dataset}  features {fkey}  bucket {bucket.url('')}")
    print(f"\nPART 1  retrieval, cosine, exact; corpus {ret['corpus_chips']} chips / {ret['corpus_places']} places; "
          f"queries: {ret['queries']} test-split chips (spatially held out), by region {ret['query_regions']}")
    print(f"  exclusions: own place + places within Chebyshev {EXCLUDE_RADIUS} (zoom-17 tiles), "
          f"mean {ret['excluded_places_per_query_mean']:.1f} places per query; one result per place")
    print("  relevance (OSM label sets of the dataset, not predictions): exact = equal label sets; "
          f"jaccard>={MIN_JACCARD} = |A&B|/|A|B| >= {MIN_JACCARD}")
    print(f"  queries without labels dropped: {ret['queries_without_labels_dropped']}; "
          f"corpus chips without labels (never relevant): {ret['corpus_chips_without_labels']}; "
          f"places whose two acquisitions differ in label set: {ret['places_with_differing_label_sets']}")
    for kind_, chips in left_out.items():
        if chips:
            print(f"  left out ({kind_}): {len(chips)}: {', '.join(chips[:6])}{' ...' if len(chips) > 6 else ''}")
    rows = []
    for rule, r in ret["rules"].items():
        for name, v in r["reps"].items():
            sd = v["precision_at_k_std_over_repeats"]
            rows.append([rule, name + (f" (x{v['repeats']}, sd {sd:.4f})" if sd is not None else ""),
                         v["precision_at_k"], v["map_at_k"],
                         *(v["precision_at_k_by_region"].get(g, float("nan")) for g in sorted(ret["query_regions"]))])
        rows.append([rule, "ceiling (min(R,k)/k)", r["ceiling_precision"], "",
                     *([""] * len(ret["query_regions"]))])
        rows.append([rule, f"queries R=0 / R<{k}", f"{r['queries_R0']} / {r['queries_R_lt_k']}", "",
                     *([""] * len(ret["query_regions"]))])
    table(f"precision@{k} and mAP@{k} ({ret['queries']} queries)",
          ["rule", "representation", f"P@{k}", f"mAP@{k}", *(f"P@{k} {g}" for g in sorted(ret["query_regions"]))],
          rows)

    sweep_rows = []
    for name in ("val", "test"):
        for rule, r in sweep[name]["rules"].items():
            sweep_rows += [[name, rule, rep_name, v["precision_at_k"], v["map_at_k"]]
                           for rep_name, v in r["reps"].items()]
    table(f"the embedding followed by the label probabilities (model label_weight {metrics.training.label_weight:g}); "
          f"chosen on val: the largest weight on appearance (smallest label weight) within {NEAR_BEST} of the best "
          f"val exact P@{k}: {sweep['chosen']:g}", ["queries", "rule", "representation", f"P@{k}", f"mAP@{k}"],
          sweep_rows)

    print(f"\nPART 2  change detection: {chg['pairs_evaluated']} of {chg['pairs_in_table']} pairs of the change "
          f"table evaluated (left out, no backbone feature: {chg['places_left_out']})")
    print(f"  truth: {chg['truth_places']} places with vanished buildings; without a pair in the table "
          f"(not embedded): {len(chg['truth_places_without_pair'])} {chg['truth_places_without_pair_by_chip_class']}; "
          f"catalog mismatches truth/table: {chg['truth_catalog_mismatch']}")
    print(f"  checks: stored smlc distance vs embeddings max |diff| "
          f"{chg['smlc_distance_max_abs_diff_vs_embeddings']:.2e}; stored smlc score vs robust_scores over the "
          f"whole table max |diff| {chg['smlc_score_max_abs_diff_vs_recomputed_on_table']:.2e}, vs over the "
          f"evaluated pairs {chg['smlc_score_max_abs_diff_stored_vs_evaluated']:.2e}; "
          f"Spearman(smlc distance, backbone distance) {chg['spearman_smlc_vs_backbone_distance']:.3f}")
    for tname, per in chg["truths"].items():
        any_ = next(iter(per.values()))
        table(f"truth '{tname}': {any_['positives']} positives of {any_['pairs']} pairs "
              f"(base rate {any_['base_rate']:.4f})",
              ["score", "AUROC", "AP", "base rate", *(f"P@top{t}" for t in TOP)],
              [[s, m["auroc"], m["ap"], m["base_rate"], *(m[f"precision_top{t}"] for t in TOP)]
               for s, m in per.items()])

    names = list(next(iter(chg["truths"].values())))
    table("AUROC within each acquisition pair, truth 'any vanished'",
          ["acquisition pair", "pairs", "pos", *names],
          [[pr, r["pairs"], r["positives"], *(r[n] for n in names)]
           for pr, r in chg["auroc_by_acquisition_pair"].items()])

    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"model_version": version, "dataset": dataset, "features": fkey, "bucket": bucket.url(""),
                       "retrieval": ret, "label_weight_sweep": sweep, "changes": chg, "seconds": time.perf_counter() - T0}, f, indent=2)
        log(f"wrote {args.json}")
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())

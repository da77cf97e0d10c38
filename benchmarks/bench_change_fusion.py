"""Benchmark: can a change score *learned* from the real pairs' masks beat the hand-set scorer? (issue 21)

``bench_change_pairs.py`` scores the real LEVIR / DSIFN pairs with :func:`score_pair`, whose few
parameters were chosen on the tuning half. This benchmark asks the next question: given several
cues per 64 x 64 window, does a logistic regression fitted on the tuning half's change masks rank
the held-out half's windows better? Same data, split and window protocol as ``bench_change_pairs.py``
(changed: >= 5 % of the window in the mask; unchanged: none; left out otherwise).

Cues per window (each a column, standardised on the training windows):

* ``feat2`` / ``feat4``: the scorer's matched, centred feature distance of EfficientNet-Lite0
  ``blocks.2`` / ``blocks.4`` (2x upsampled, per-image normalised input), window top-10 % mean and mean;
* ``pixel``: the scorer's colour-normalised, best-match pixel cue, top-10 % mean and mean;
* ``cva``: mean absolute RGB difference (a baseline on its own);
* ``global``: cosine distance of the raw backbone's pooled vectors of the window resized to 224 px
  (a baseline on its own).

Fusions, each fitted without the windows it scores:

* ``fusion (tuning half)``: one model fitted on every tuning window (LEVIR, DSIFN, levir-1024), scored
  on the held-out half: the protocol's reported figure;
* ``fusion per resolution``: one model for 0.5 m (LEVIR, levir-1024) and one for 2 m (DSIFN), as a
  caller who knows the ground sample distance could pick;
* ``fusion leave-one-pair-out``: every LEVIR and DSIFN pair scored by a model fitted on all the other
  pairs (and levir-1024): twice the training data of the half split, every pair scored once.

Rows ``scorer``, ``cva`` and ``global`` are the single cues, computed in the same run. The in-sample
column (a model scored on its own training windows) shows how much of a fit survives the move to
pairs it has not seen.

Usage: python benchmarks/bench_change_fusion.py [--data DIR] [--threads 2] [--C 1.0] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from bench_change_pairs import DEFAULT_DATA, GlobalCosine, Pair, load_pairs, map_scores, window_labels
from imagesim_pipeline.changes.scorer import (DEFAULT_PARAMS, FeatureExtractor, change_map, feature_distance,
                                              pixel_distance, resize_bilinear)

CUES = ("feat2_top", "feat2_mean", "feat4_top", "feat4_mean", "pixel_top", "pixel_mean", "cva", "global")
SINGLE = {"scorer": None, "cva": "cva", "global": "global"}  # rows scored by one column, no fit
RESOLUTION = {"levir": "0.5 m", "levir-1024": "0.5 m", "dsifn": "2 m"}


def window_cues(pairs: list[Pair], extractor: FeatureExtractor, glob: GlobalCosine) -> dict[str, dict]:
    """Per pair: window labels, the cue matrix (16 x len(CUES)) and the scorer's own window scores."""
    out = {}
    top = DEFAULT_PARAMS.top_fraction
    for p in pairs:
        fmaps = extractor(np.stack([p.before, p.after]))
        f_before, f_after = [f[0] for f in fmaps], [f[1] for f in fmaps]
        dist = {b: resize_bilinear(feature_distance(fa, fb, DEFAULT_PARAMS.radius, DEFAULT_PARAMS.match_penalty),
                                   *p.before.shape[:2]) for b, fa, fb in zip(extractor.blocks, f_before, f_after)}
        pixel = pixel_distance(p.before, p.after, DEFAULT_PARAMS.pixel_radius, DEFAULT_PARAMS.pixel_sigma)
        cva = np.abs(p.before.astype(np.float32) - p.after.astype(np.float32)).mean(-1)
        cols = {"feat2_top": map_scores(dist[2], top), "feat2_mean": map_scores(dist[2], "mean"),
                "feat4_top": map_scores(dist[4], top), "feat4_mean": map_scores(dist[4], "mean"),
                "pixel_top": map_scores(pixel, top), "pixel_mean": map_scores(pixel, "mean"),
                "cva": map_scores(cva, "mean"), "global": glob.scores(p.before, p.after)}
        scorer = map_scores(change_map(f_before, f_after, p.before, p.after), top)
        out[p.name] = {"labels": window_labels(p.mask), "X": np.stack([cols[c] for c in CUES], 1),
                       "scorer": scorer}
    return out


def fit(cues: dict[str, dict], names: list[str], C: float) -> tuple[StandardScaler, LogisticRegression]:
    """A class-balanced logistic regression on the labelled windows of ``names``."""
    X = np.concatenate([cues[n]["X"] for n in names])
    y = np.concatenate([cues[n]["labels"] for n in names])
    keep = y >= 0
    scaler = StandardScaler().fit(X[keep])
    model = LogisticRegression(C=C, class_weight="balanced", max_iter=5000).fit(scaler.transform(X[keep]), y[keep])
    return scaler, model


def auroc(cues: dict[str, dict], names: list[str], scores: dict[str, np.ndarray]) -> float:
    """Window AUROC of ``scores`` pooled over the labelled windows of the pairs ``names``."""
    lab = np.concatenate([cues[n]["labels"] for n in names])
    sc = np.concatenate([scores[n] for n in names])
    return float(roc_auc_score(lab[lab >= 0], sc[lab >= 0]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the change-pairs folder")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--C", type=float, default=1.0, help="inverse L2 strength of the logistic regression")
    ap.add_argument("--json", default=None, help="write the rows to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    pairs = load_pairs(args.data)
    by_name = {p.name: p for p in pairs}
    cues = window_cues(pairs, FeatureExtractor(DEFAULT_PARAMS.blocks, DEFAULT_PARAMS.upsample,
                                               DEFAULT_PARAMS.normalise), GlobalCosine())
    tuning = [p.name for p in pairs if p.split == "tuning"]
    groups = {g: {s: [p.name for p in pairs if p.group == g and p.split == s] for s in ("tuning", "held-out")}
              for g in ("levir", "dsifn")}

    def predict(fitted: tuple[StandardScaler, LogisticRegression], name: str) -> np.ndarray:
        scaler, model = fitted
        return model.decision_function(scaler.transform(cues[name]["X"]))

    rows: list[dict] = []

    def report(method: str, scores: dict[str, np.ndarray]) -> None:
        """One row: held-out and tuning window AUROC per dataset (a fusion's tuning figure is in sample)."""
        cells = []
        for g, split in groups.items():
            held = auroc(cues, split["held-out"], scores)
            tune = auroc(cues, split["tuning"], scores)
            cells.append(f"{held:10.3f} {tune:10.3f}")
            rows.append({"method": method, "dataset": g, "held_out_auroc": round(held, 4),
                         "tuning_auroc": round(tune, 4)})
        print(f"  {method:34s} " + "  ".join(cells))

    print(f"{len(pairs)} pairs ({len(tuning)} tuning incl. levir-1024 tiles); cues: {', '.join(CUES)}; C={args.C}")
    print(f"  {'window AUROC':34s} " + "  ".join(f"{g + ' held':>10s} {g + ' tune':>10s}" for g in groups))
    for method, column in SINGLE.items():
        report(method, {n: cues[n]["scorer"] if column is None else cues[n]["X"][:, CUES.index(column)]
                        for n in cues})
    one = fit(cues, tuning, args.C)
    report("fusion (tuning half)", {n: predict(one, n) for n in cues})
    per_res = {r: fit(cues, [n for n in tuning if RESOLUTION[by_name[n].group] == r], args.C) for r in ("0.5 m", "2 m")}
    report("fusion per resolution", {n: predict(per_res[RESOLUTION[by_name[n].group]], n) for n in cues})
    # Leave one pair out: each LEVIR / DSIFN pair by a model fitted on every other pair and levir-1024.
    scored = [n for g in groups.values() for s in g.values() for n in s]
    loo = {n: predict(fit(cues, [m for m in cues if m != n], args.C), n) for n in scored}
    full = fit(cues, list(cues), args.C)
    cells = []
    for g, split in groups.items():
        names = split["tuning"] + split["held-out"]
        out_of_fold, fitted = auroc(cues, names, loo), auroc(cues, names, {n: predict(full, n) for n in names})
        cells.append(f"{out_of_fold:10.3f} {fitted:10.3f}")
        rows.append({"method": "fusion leave-one-pair-out", "dataset": g, "out_of_fold_auroc": round(out_of_fold, 4),
                     "in_sample_auroc": round(fitted, 4)})
    print(f"\n  {'every pair (both halves)':34s} " + "  ".join(f"{g + ' oof':>10s} {g + ' fit':>10s}" for g in groups))
    print(f"  {'fusion leave-one-pair-out':34s} " + "  ".join(cells))
    coef = dict(zip(CUES, np.round(one[1].coef_[0], 3).tolist()))
    print(f"\nfusion (tuning half) weights on standardised cues: {coef}")
    print(f"total {time.perf_counter() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"C": args.C, "cues": CUES, "weights": coef, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

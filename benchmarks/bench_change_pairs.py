"""Benchmark: change scoring on real before/after pairs with change masks (issue 21).

Data: ``change-pairs/`` (its README): ``levir/`` 11 pairs 256 x 256 at 0.5 m (building change),
``dsifn/`` 10 pairs 256 x 256 at about 2 m (land-cover change), ``levir-1024/`` 1 pair 1024 x 1024
(cut here into 16 tiles of 256 x 256). Protocol: each 256 x 256 pair is cut into a 4 x 4 grid of
64 x 64 windows; a window is *changed* when >= 5 % of its pixels are changed in the mask,
*unchanged* when none are, and left out otherwise. Window-level AUROC and AP (changed = positive)
come from each method's window score; pixel AUROC compares a method's per-pixel map with the mask.

Split (fixed before any figure was looked at; parameters are chosen on tuning pairs only):

* tuning: the LEVIR and DSIFN pairs at even positions (0, 2, ...) of their sorted file lists, and
  the 16 tiles of ``levir-1024``;
* held-out (the reported figures): the LEVIR and DSIFN pairs at odd positions.

The scorer's defaults (:class:`imagesim_pipeline.changes.scorer.ScorerParams`) are the winner of
the grid that ``--tune`` re-runs on the tuning split: blocks, feature matching (radius, penalty),
pixel-cue weight and top fraction, ranked by the mean window AUROC over the three tuning groups
(LEVIR, levir-1024, DSIFN), averaged over the after image shifted by 0, 2 and 4 px (real pairs of
acquisitions are misregistered by a few pixels). The "all pairs" table mixes tuning and held-out
pairs (it is the protocol of the DESIGN notes' earlier figures), so it is not a held-out figure.
``--cv`` also swaps the halves (select on the held-out half + levir-1024, score the tuning half)
and reports every LEVIR and DSIFN pair scored with a choice made without it: an estimate of the
selection procedure, less noisy than one half alone.

How the held-out half was used: looked at twice, never to choose a parameter. First with ImageNet
input normalisation (selected then: match_penalty 0.1; held-out scorer AUROC LEVIR 0.774, DSIFN
0.659). Then the tests showed that ImageNet features are not invariant to a global brightness
change (a copy darkened to 0.8 x + 5 scored like a real change), so each image's own channel
statistics became the input normalisation, the selection was re-run on the tuning half only
(match_penalty 0.2), and the held-out half was scored again (LEVIR 0.793, DSIFN 0.663).

Methods, all scored on the same windows:

* ``scorer``: :func:`score_pair`'s map, each window's score by :func:`aggregate` (top 10 % mean);
* ``scorer-no-match``: the same with feature matching off (radius 0): ablation;
* ``scorer-no-pixel``: the same without the colour-normalised pixel cue: ablation;
* ``scorer-shadows``: the same with the pipeline's shadow damping (``CHIP_PARAMS``' shadow weight and
  level): what damping shadows does to real building and land-cover change;
* ``pipeline``: what ``chip_changes`` computes (:data:`imagesim_pipeline.changes.spatial.CHIP_PARAMS`:
  ImageNet-normalised input, no upsampling, the envelope pixel cue), chosen on a demo world and
  never on these pairs, so every half of them is held out for it;
* ``feature-cosine``: per-location cosine distance of the raw (uncentred) ``blocks.2`` features of
  the 2x-upsampled, ImageNet-normalised input, no matching, window mean: the DESIGN notes' probe;
* ``cva``: pixel change vector analysis, mean absolute RGB difference over the window;
* ``global-cosine``: the raw backbone's global vector: each 64 x 64 window of both images resized
  to 224 x 224, EfficientNet-Lite0 global-average-pooled 1280-d features, cosine distance.

``inpair`` (a diagnostic, not the protocol's figure): the mean over pairs that have both classes of
the AUROC among that pair's windows alone. Pooled AUROC also asks that scores be comparable across
pairs of acquisitions (season, sensor, sun); the pipeline's change table removes most of that by
normalising scores within each pair of acquisitions (:func:`imagesim_pipeline.changes.detect.robust_scores`),
so ``inpair`` is closer to what that table can rank.

pairs/s: :func:`score_pair` end to end (feature extraction, map and score) on 256 x 256 pairs, on
CPU with ``--threads`` torch threads.

Usage: python benchmarks/bench_change_pairs.py [--data DIR] [--threads 1] [--json OUT] [--tune | --cv]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score

from imagesim_pipeline.changes.scorer import (DEFAULT_PARAMS, FeatureExtractor, ScorerParams, aggregate,
                                              change_map, feature_distance, pixel_distance, resize_bilinear,
                                              score_pair)
from imagesim_pipeline.changes.spatial import CHIP_PARAMS
from imagesim_pipeline.models.backbones import IMAGENET_MEAN, IMAGENET_STD, build_backbone

DEFAULT_DATA = Path(os.environ.get("IMAGESIM_CHANGE_PAIRS",
                                   Path(__file__).resolve().parents[2] / "shared" / "data" / "change-pairs"))
GRID, WINDOW = 4, 64
GROUPS = ("levir", "dsifn", "levir-1024")


@dataclass
class Pair:
    name: str
    group: str  # levir, dsifn or levir-1024
    split: str  # tuning or held-out
    before: np.ndarray
    after: np.ndarray
    mask: np.ndarray  # bool, changed


def _rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def load_pairs(root: Path) -> list[Pair]:
    pairs = []
    for group in ("levir", "dsifn"):
        files = sorted((root / group / "A").glob("*.png"))
        if not files:
            raise SystemExit(f"no pairs under {root / group}: pass --data")
        for i, f in enumerate(files):
            mask = np.asarray(Image.open(root / group / "label" / f.name)) > 127
            pairs.append(Pair(f"{group}/{f.stem}", group, "tuning" if i % 2 == 0 else "held-out",
                              _rgb(f), _rgb(root / group / "B" / f.name), mask))
    for f in sorted((root / "levir-1024" / "A").glob("*.png")):
        a, b = _rgb(f), _rgb(root / "levir-1024" / "B" / f.name)
        m = np.asarray(Image.open(root / "levir-1024" / "label" / f.name)) > 127
        for y, x in itertools.product(range(0, a.shape[0], 256), range(0, a.shape[1], 256)):
            pairs.append(Pair(f"levir-1024/{f.stem}@{y},{x}", "levir-1024", "tuning", a[y:y + 256, x:x + 256],
                              b[y:y + 256, x:x + 256], m[y:y + 256, x:x + 256]))
    return pairs


def window_labels(mask: np.ndarray) -> np.ndarray:
    """1 changed (>= 5 %), 0 unchanged (none), -1 left out; row-major over the 4 x 4 grid."""
    frac = mask.reshape(GRID, WINDOW, GRID, WINDOW).mean(axis=(1, 3)).ravel()
    return np.where(frac >= 0.05, 1, np.where(frac == 0, 0, -1))


def windows_of(m: np.ndarray) -> list[np.ndarray]:
    return [m[i * WINDOW:(i + 1) * WINDOW, j * WINDOW:(j + 1) * WINDOW] for i in range(GRID) for j in range(GRID)]


def map_scores(m: np.ndarray, how: str | float) -> np.ndarray:
    """Window scores of a map: "mean", or the mean of the top fraction ``how``."""
    return np.array([w.mean() if how == "mean" else aggregate(w, how) for w in windows_of(m)])


class GlobalCosine:
    """The raw backbone's pooled vector of each 64 x 64 window (resized to 224), compared by cosine."""

    def __init__(self):
        self.model = build_backbone("efficientnet_lite0").eval()
        self.mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def vectors(self, crops: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float() / 255
        x = torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False)
        with torch.inference_mode():
            v = self.model((x - self.mean) / self.std).numpy()
        return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)

    def scores(self, before: np.ndarray, after: np.ndarray) -> np.ndarray:
        va = self.vectors(np.stack(windows_of(before)))
        vb = self.vectors(np.stack(windows_of(after)))
        return 1.0 - (va * vb).sum(1)


def evaluate(pairs: list[Pair], extractor: FeatureExtractor, probe: FeatureExtractor, glob: GlobalCosine,
             chip: FeatureExtractor) -> tuple[dict, float]:
    """Per pair: window labels, each method's window scores and, for map methods, its map."""
    results: dict[str, dict] = {}
    started = time.perf_counter()
    for p in pairs:  # timed alone: score_pair end to end
        score_pair(p.before, p.after, extractor)
    pairs_per_s = len(pairs) / (time.perf_counter() - started)
    for p in pairs:
        fmaps = extractor(np.stack([p.before, p.after]))
        f_before, f_after = [f[0] for f in fmaps], [f[1] for f in fmaps]
        maps = {
            "scorer": change_map(f_before, f_after, p.before, p.after),
            "scorer-no-match": change_map(f_before, f_after, p.before, p.after, replace(DEFAULT_PARAMS, radius=0)),
            "scorer-no-pixel": change_map(f_before, f_after, p.before, p.after,
                                          replace(DEFAULT_PARAMS, pixel_weight=0.0)),
            "scorer-shadows": change_map(f_before, f_after, p.before, p.after,
                                         replace(DEFAULT_PARAMS, shadow_weight=CHIP_PARAMS.shadow_weight,
                                                 shadow_level=CHIP_PARAMS.shadow_level)),
        }
        cmaps = chip(np.stack([p.before, p.after]))  # the pipeline's scorer: CHIP_PARAMS on ImageNet-normalised input
        maps["pipeline"] = change_map([f[0] for f in cmaps], [f[1] for f in cmaps], p.before, p.after, CHIP_PARAMS)
        raw = probe(np.stack([p.before, p.after]))[0]  # the probe: uncentred blocks.2 cosine, window mean
        ua, ub = (f / np.maximum(np.linalg.norm(f, axis=0, keepdims=True), 1e-6) for f in raw)
        maps["feature-cosine"] = resize_bilinear(1.0 - (ua * ub).sum(0), *p.before.shape[:2])
        maps["cva"] = np.abs(p.before.astype(np.float32) - p.after.astype(np.float32)).mean(-1)
        scores = {k: map_scores(m, "mean" if k in ("feature-cosine", "cva") else
                                CHIP_PARAMS.top_fraction if k == "pipeline" else DEFAULT_PARAMS.top_fraction)
                  for k, m in maps.items()}
        scores["global-cosine"] = glob.scores(p.before, p.after)
        results[p.name] = {"labels": window_labels(p.mask), "scores": scores, "maps": maps}
    return results, pairs_per_s


METHODS = ("scorer", "scorer-no-match", "scorer-no-pixel", "scorer-shadows", "pipeline", "feature-cosine", "cva", "global-cosine")
PIXEL_METHODS = ("scorer", "pipeline", "cva")


def table(title: str, pairs: list[Pair], results: dict, rows_out: list, split: str) -> None:
    groups = [g for g in GROUPS if any(p.group == g for p in pairs)]
    print(f"\n{title}")
    counts = []
    for g in groups:
        lab = np.concatenate([results[p.name]["labels"] for p in pairs if p.group == g])
        counts.append(f"{g}: {sum(p.group == g for p in pairs)} pairs, {(lab == 1).sum()} changed / "
                      f"{(lab == 0).sum()} unchanged windows ({(lab == -1).sum()} left out)")
    print("  " + "; ".join(counts))
    head = "  ".join(f"{g + ' AUROC':>17s} {'AP':>5s} {'pixAUROC':>8s} {'inpair':>6s}" for g in groups)
    print(f"  {'method':16s} {head}")
    for method in METHODS:
        cells = []
        for g in groups:
            sub = [p for p in pairs if p.group == g]
            lab = np.concatenate([results[p.name]["labels"] for p in sub])
            sc = np.concatenate([results[p.name]["scores"][method] for p in sub])
            keep = lab >= 0
            auc, ap = roc_auc_score(lab[keep], sc[keep]), average_precision_score(lab[keep], sc[keep])
            pix = None
            if method in PIXEL_METHODS:
                pix = roc_auc_score(np.concatenate([p.mask.ravel() for p in sub]),
                                    np.concatenate([results[p.name]["maps"][method].ravel() for p in sub]))
            within = []  # AUROC inside each pair with both classes (what normalising per pair of acquisitions keeps)
            for p in sub:
                lab_p, sc_p = results[p.name]["labels"], results[p.name]["scores"][method]
                if (lab_p == 1).any() and (lab_p == 0).any():
                    within.append(roc_auc_score(lab_p[lab_p >= 0], sc_p[lab_p >= 0]))
            inpair = float(np.mean(within))
            cells.append(f"{auc:17.3f} {ap:5.3f} {'' if pix is None else f'{pix:.3f}':>8s} {inpair:6.3f}")
            rows_out.append({"split": split, "dataset": g, "method": method, "auroc": round(auc, 4),
                             "ap": round(ap, 4), "pixel_auroc": None if pix is None else round(pix, 4),
                             "within_pair_auroc": round(inpair, 4), "within_pair_pairs": len(within),
                             "pairs": len(sub), "changed": int((lab == 1).sum()), "unchanged": int((lab == 0).sum())})
        print(f"  {method:16s} " + "  ".join(cells))


SHIFTS = (0, 2, 4)  # px the after image is moved by in the selection (real acquisitions are misregistered)


def grid_scores(pairs: list[Pair]) -> dict[tuple, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Window labels and scores of every grid configuration, per pair and shift of the after image."""
    ex = FeatureExtractor(blocks=(1, 2, 3, 4), upsample=DEFAULT_PARAMS.upsample, normalise=DEFAULT_PARAMS.normalise)
    block_sets = ((2,), (2, 3), (2, 4), (1, 2, 3))
    matches = ((0, 0.0), (1, 0.0), (1, 0.1), (1, 0.2))
    weights, tops = (0.0, 0.25), (0.1, 0.2)
    out: dict[tuple, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for p in pairs:
        f_before = ex(p.before)
        labels = window_labels(p.mask)
        for s in SHIFTS:
            after = np.pad(p.after, ((s, 0), (s, 0), (0, 0)), mode="edge")[:p.after.shape[0], :p.after.shape[1]]
            f_after = ex(after)
            pix = pixel_distance(p.before, after)
            for radius, penalty in matches:
                dist = {b: resize_bilinear(feature_distance(f_before[i], f_after[i], radius, penalty),
                                           *p.before.shape[:2]) for i, b in enumerate(ex.blocks)}
                for blocks, w, top in itertools.product(block_sets, weights, tops):
                    m = sum(dist[b] for b in blocks) / len(blocks) + w * pix
                    out.setdefault((blocks, radius, penalty, w, top, s), {})[p.name] = (labels, map_scores(m, top))
    return out


def select(grid: dict, pairs: list[Pair]) -> list[tuple[float, list[float], tuple]]:
    """Configurations ranked by the mean window AUROC over the groups of ``pairs``, averaged over shifts."""
    ranked = []
    for cfg in sorted({k[:5] for k in grid}, key=str):
        per_shift = []
        for s in SHIFTS:
            aucs = []
            for g in GROUPS:
                items = [grid[cfg + (s,)][p.name] for p in pairs if p.group == g]
                if items:
                    lab, sc = np.concatenate([i[0] for i in items]), np.concatenate([i[1] for i in items])
                    aucs.append(roc_auc_score(lab[lab >= 0], sc[lab >= 0]))
            per_shift.append(float(np.mean(aucs)))
        ranked.append((float(np.mean(per_shift)), per_shift, cfg))
    ranked.sort(key=lambda r: (-round(r[0], 6), str(r[2])))
    return ranked


def as_params(cfg: tuple) -> ScorerParams:
    blocks, radius, penalty, w, top = cfg
    return replace(DEFAULT_PARAMS, blocks=blocks, radius=radius, match_penalty=penalty, pixel_weight=w,
                   top_fraction=top)


def tune(pairs: list[Pair], cv: bool, rows_out: list) -> None:
    """Re-run the parameter selection on the tuning pairs only and say whether it gives the defaults; with
    ``cv``, also swap the roles of the two halves and report each half scored with the other's choice."""
    started = time.perf_counter()
    grid = grid_scores(pairs if cv else [p for p in pairs if p.split == "tuning"])
    tuning = [p for p in pairs if p.split == "tuning"]
    ranked = select(grid, tuning)
    took = time.perf_counter() - started
    print(f"\nparameter selection on the tuning pairs only ({len(tuning)} pairs; grid {took:.0f} s): "
          f"objective = mean window AUROC over levir / levir-1024 / dsifn, averaged over after-image shifts "
          f"{', '.join(map(str, SHIFTS))} px")
    for obj, per, cfg in ranked[:10]:
        shifts = " ".join(f"{v:.3f}" for v in per)
        print(f"  {obj:.3f} (shift {'/'.join(map(str, SHIFTS))}: {shifts})  {as_params(cfg)}")
    chosen = as_params(ranked[0][2])
    print(f"  selected: {chosen}; {'equals' if chosen == DEFAULT_PARAMS else 'DIFFERS FROM'} the scorer's defaults")
    if not cv:
        return
    # Two folds: tune on one half (+ levir-1024), score the other half with that choice, at shift 0.
    halves = {"held-out": [p for p in pairs if p.split == "held-out"],
              "tuning": [p for p in pairs if p.split == "tuning" and p.group != "levir-1024"]}
    tiles = [p for p in pairs if p.group == "levir-1024"]
    out_of_fold: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    print("\n2-fold cross-validation of the selection (each half scored with the choice made on the other half + "
          "levir-1024; shift 0):")
    for scored, other in (("held-out", "tuning"), ("tuning", "held-out")):
        cfg = select(grid, halves[other] + tiles)[0][2]
        print(f"  {scored:8s} half scored with the choice on the {other} half: {as_params(cfg)}")
        for p in halves[scored]:
            out_of_fold[p.name] = grid[cfg + (0,)][p.name]
    for g in ("levir", "dsifn"):
        sub = [p for p in pairs if p.group == g]
        lab = np.concatenate([out_of_fold[p.name][0] for p in sub])
        sc = np.concatenate([out_of_fold[p.name][1] for p in sub])
        keep = lab >= 0
        auc, ap = roc_auc_score(lab[keep], sc[keep]), average_precision_score(lab[keep], sc[keep])
        print(f"  {g}: out-of-fold window AUROC {auc:.3f}, AP {ap:.3f} ({len(sub)} pairs; compare the baselines' "
              "'all pairs' rows, which have no parameters)")
        rows_out.append({"split": "cv-out-of-fold", "dataset": g, "method": "scorer-selection", "auroc": round(auc, 4),
                         "ap": round(ap, 4), "pixel_auroc": None, "pairs": len(sub), "changed": int((lab == 1).sum()),
                         "unchanged": int((lab == 0).sum())})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the change-pairs folder")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--json", default=None, help="write the table rows to this file")
    ap.add_argument("--tune", action="store_true", help="also re-run the parameter selection on the tuning split")
    ap.add_argument("--cv", action="store_true", help="--tune, plus a 2-fold cross-validation of the selection")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    pairs = load_pairs(args.data)
    for split in ("tuning", "held-out"):
        names = [p.name for p in pairs if p.split == split and p.group != "levir-1024"]
        tiles = sum(p.split == split and p.group == "levir-1024" for p in pairs)
        print(f"{split} pairs: {', '.join(names)}" + (f", and the {tiles} tiles of levir-1024" if tiles else ""))
    print(f"scorer: {DEFAULT_PARAMS}")
    extractor = FeatureExtractor(DEFAULT_PARAMS.blocks, DEFAULT_PARAMS.upsample, DEFAULT_PARAMS.normalise)
    probe = FeatureExtractor((2,), 2.0, normalise="imagenet")
    chip = FeatureExtractor(CHIP_PARAMS.blocks, CHIP_PARAMS.upsample, CHIP_PARAMS.normalise)
    results, pairs_per_s = evaluate(pairs, extractor, probe, GlobalCosine(), chip)
    rows: list[dict] = []
    table("HELD-OUT pairs (reported figures; no parameter was chosen on them)",
          [p for p in pairs if p.split == "held-out"], results, rows, "held-out")
    table("TUNING pairs (the scorer's parameters were chosen on these)",
          [p for p in pairs if p.split == "tuning"], results, rows, "tuning")
    table("ALL 256 x 256 pairs, levir 11 + dsifn 10 (tuning and held-out mixed: the DESIGN notes' protocol)",
          [p for p in pairs if p.group != "levir-1024"], results, rows, "all")
    print(f"\nscorer speed: {pairs_per_s:.2f} pairs/s (256 x 256, CPU, {args.threads} torch thread(s), "
          f"{len(pairs)} pairs, feature extraction included)")
    if args.tune or args.cv:
        tune(pairs, args.cv, rows)
    print(f"total {time.perf_counter() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"pairs_per_s": round(pairs_per_s, 3), "threads": args.threads,
                                               "params": DEFAULT_PARAMS.__dict__, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

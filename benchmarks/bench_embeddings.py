"""Benchmark: embedding strategies compared for search, in one run, on the demo's held-out test queries.

For each backbone descriptor configuration (``--configs``: input size, pooling and optionally the
backbone, ``efficientnet_lite0`` unless named: ``320:multiscale:efficientnet_lite2``; the frozen
backbone's features of every dataset chip, from the bucket's feature cache or computed into it),
every strategy of :mod:`imagesim_pipeline.models.strategies` is trained through the project's own
Lightning module and data module (the same code ``smlc_model`` and ``train_model`` run, ``--epochs``
epochs on the CPU), and its ``embedding`` of every dataset chip is scored for retrieval beside the
raw backbone features and random vectors of the same chips; each strategy also followed by its
classifier's label probabilities (``label_weight``, what the pipeline indexes;
``benchmarks/bench_retrieval.py`` chose the weight on val queries):

* protocol of ``benchmarks/bench_retrieval.py`` part 1 (its ``retrieval`` function): queries are the
  labelled test-split chips (spatially held out: no strategy trained on them or on places near
  them); the query's place and places within two chips excluded; one result per place; relevance from
  the dataset's OSM label sets: ``exact`` (equal sets) and ``jaccard>=0.5``; precision@10 and mAP@10;
* the classifier each strategy trains beside its embedding: test micro/macro F2 at thresholds chosen
  on val (the publishing rule);
* cost: training wall seconds and process CPU seconds; encoding images/s of the configuration's
  backbone pass (from the feature cache's manifest: measured when the cache was computed, on the
  machine that computed it; every strategy shares that pass, the head is negligible).

``--transfer-bucket`` also scores each trained model on another demo world (``imagesim demo build
--seed N``, chipped and labelled, its own dataset): its test queries against its own corpus,
with nothing retrained.

Usage: python benchmarks/bench_embeddings.py [--bucket URI] [--configs 224:avg,320:multiscale]
       [--strategies classifier,metric,label-free,descriptor] [--epochs 40] [--transfer-bucket URI]
       [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
from bench_retrieval import MIN_JACCARD, RANDOM_DIM, retrieval, table

T0 = time.perf_counter()
RULES = ("exact", f"jaccard>={MIN_JACCARD}")


def log(msg: str) -> None:
    """Print a timed progress line on stderr."""
    print(f"[{time.perf_counter() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def corpus(data) -> dict:
    """Chips, places, labels, cached features and query rows of a set-up data module (every split)."""
    import torch

    chips, labels, feats, split = [], [], [], []
    for name in ("train", "val", "test"):
        readable = data.readable_chips(name)
        features, targets = data.split_features(name)
        chips += readable
        labels.append(targets.numpy().astype(bool))
        feats.append(features)
        split += [name] * len(readable)
    lab = np.concatenate(labels)
    query = np.flatnonzero((np.asarray(split) == "test") & (lab.sum(1) > 0))
    return {"chips": chips, "places": [c.split("_", 1)[0] for c in chips], "labels": lab,
            "features": torch.cat(feats), "query_rows": query}


def score(world: dict, reps: dict[str, np.ndarray], seed: int, repeats: int) -> dict[str, dict]:
    """{representation: {rule: (P@10, mAP@10)}} with random vectors (``repeats`` seeds) as the floor."""
    variants = {name: [v] for name, v in reps.items()}
    variants["random"] = [np.random.default_rng(seed + i).standard_normal((len(world["chips"]), RANDOM_DIM),
                                                                          np.float32) for i in range(repeats)]
    res = retrieval(world, 10, seed, repeats, variants)
    figures = {rule: res["rules"][rule]["reps"] for rule in RULES}
    out = {name: {rule: (figures[rule][name]["precision_at_k"], figures[rule][name]["map_at_k"]) for rule in RULES}
           for name in variants}
    out["_ceiling"] = {rule: (res["rules"][rule]["ceiling_precision"], float("nan")) for rule in RULES}
    return out


def train(strategy: str, size: int, pooling: str, bucket: str, epochs: int, seed: int,
          backbone: str = "efficientnet_lite0"):
    """A strategy trained through the project's Lightning module; (model, data, wall s, cpu s, test F2s)."""
    import lightning as L

    from imagesim_pipeline.models.data import SmlcDataModule
    from imagesim_pipeline.models.report import evaluate
    from imagesim_pipeline.models.smlc import SkywayMultiLabelClassifier
    from imagesim_pipeline.models.training import check_setup, predict

    L.seed_everything(seed, verbose=False)
    data = SmlcDataModule(bucket=bucket, input_size=size, pooling=pooling, strategy=strategy, num_workers=0,
                          backbone=backbone)
    data.progress = log
    data.setup("fit")
    model = SkywayMultiLabelClassifier(labels=data.labels, backbone=backbone, pooling=pooling, strategy=strategy)
    check_setup(model, data)
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.fit(model, datamodule=data)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    model = model.cpu().eval()
    val_p, _, val_y = predict(model, data, "val")
    test_p, _, test_y = predict(model, data, "test")
    at = evaluate(val_p, val_y, test_p, test_y, model.labels).test_at_thresholds
    return model, data, wall, cpu, (at.f2_micro, at.f2_macro)


def embed(model, features, label_weight: float = 0.0) -> np.ndarray:
    """The model's embeddings of cached features, followed by its label probabilities at ``label_weight``."""
    import torch

    from imagesim_pipeline.models.smlc import with_labels

    with torch.inference_mode():
        return with_labels(*model.head_outputs(features), label_weight).float().numpy()


def representations(trained: dict, features) -> dict[str, np.ndarray]:
    """The raw backbone, each strategy's embedding, and each followed by the label probabilities (the
    recommended ``label_weight``: what the pipeline indexes)."""
    from imagesim_pipeline.models.recommended import RECOMMENDED

    reps = {"backbone (raw)": features.numpy()}
    reps.update({s: embed(m, features) for s, (m, *_) in trained.items()})
    reps.update({f"{s} + labels": embed(m, features, RECOMMENDED.label_weight) for s, (m, *_) in trained.items()})
    return reps


def world_of(bucket: str, size: int, pooling: str, backbone: str) -> dict:
    """The corpus of another bucket's latest dataset at a descriptor configuration (features cached there)."""
    from imagesim_pipeline.models.data import SmlcDataModule

    data = SmlcDataModule(bucket=bucket, input_size=size, pooling=pooling, num_workers=0, backbone=backbone)
    data.progress = log
    data.setup("fit")
    return corpus(data)


def main(argv: list[str] | None = None) -> int:
    """Train each strategy at each configuration and print (and optionally write) the comparison."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bucket", default="", help="bucket URI (default: the IMAGESIM_BUCKET setting)")
    ap.add_argument("--configs", default="224:avg,320:multiscale", help="input size:pooling[:backbone], comma-separated")
    ap.add_argument("--strategies", default="classifier,metric,label-free,descriptor")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--random-repeats", type=int, default=3)
    ap.add_argument("--transfer-bucket", default="", help="another demo world's bucket (other seed)")
    ap.add_argument("--json", default="", help="write every figure to this JSON file")
    args = ap.parse_args(argv)
    from imagesim_pipeline.settings import bucket_uri
    from imagesim_pipeline.storage import layout, open_bucket

    bucket = args.bucket or bucket_uri()
    rows, record = [], []
    for config in args.configs.split(","):
        size_text, pooling, *named = config.split(":")
        size, backbone = int(size_text), (named or ["efficientnet_lite0"])[0]
        trained = {}
        for strategy in args.strategies.split(","):
            log(f"{config}: training {strategy}")
            trained[strategy] = train(strategy, size, pooling, bucket, args.epochs, args.seed, backbone)
        data = next(iter(trained.values()))[1]
        manifest = json.loads(open_bucket(bucket).read_text(layout.features_key(data.cache_key, "manifest.json")))
        world = corpus(data)
        reps = representations(trained, world["features"])
        log(f"{config}: retrieval over {len(world['chips'])} chips, {len(world['query_rows'])} test queries")
        demo = score(world, reps, args.seed, args.random_repeats)
        transfer = {}
        if args.transfer_bucket:
            other = world_of(args.transfer_bucket, size, pooling, backbone)
            transfer = score(other, representations(trained, other["features"]), args.seed, args.random_repeats)
        for name in [*reps, "random", "_ceiling"]:
            cost = trained.get(name.removesuffix(" + labels"))
            row = {"config": config, "representation": name if name != "_ceiling" else "ceiling",
                   **{f"{rule} P@10": demo[name][rule][0] for rule in RULES},
                   **{f"{rule} mAP@10": demo[name][rule][1] for rule in RULES},
                   "test F2 micro": cost[4][0] if cost else None, "test F2 macro": cost[4][1] if cost else None,
                   "train s": cost[2] if cost else None, "train cpu s": cost[3] if cost else None,
                   "encode img/s": manifest.get("chips_per_second") if name != "random" else None,
                   "dim": reps[name].shape[1] if name in reps else RANDOM_DIM if name == "random" else None}
            if transfer:
                row.update({f"transfer {rule} P@10": transfer[name][rule][0] for rule in RULES})
            record.append(row)
            rows.append([config, row["representation"], *(row[f"{r} P@10"] for r in RULES),
                         *(row[f"{r} mAP@10"] for r in RULES),
                         *((row[f"transfer {r} P@10"] for r in RULES) if transfer else ()),
                         *("" if row[c] is None else row[c] for c in ("test F2 micro", "test F2 macro", "train s",
                                                                       "train cpu s", "encode img/s", "dim"))])
    header = ["config", "embedding", "exact P@10", "jac P@10", "exact mAP@10", "jac mAP@10",
              *(["transfer exact P@10", "transfer jac P@10"] if args.transfer_bucket else []),
              "test F2 micro", "test F2 macro", "train s", "train cpu s", "encode img/s", "dim"]
    table(f"embedding strategies on {bucket} ({args.epochs} epochs, seed {args.seed}; queries: labelled test-split "
          f"chips; jac = Jaccard >= {MIN_JACCARD})", header, rows)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"bucket": bucket, "epochs": args.epochs, "rows": record}, fh, indent=2)
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

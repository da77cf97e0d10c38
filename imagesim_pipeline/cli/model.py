"""Model commands: train through Dagster, list versions, report quality."""

from __future__ import annotations

import argparse
from datetime import UTC
from typing import TYPE_CHECKING

from imagesim_pipeline.cli.common import BUCKET_HELP, RunFailedError, say

if TYPE_CHECKING:
    from imagesim_pipeline.models.registry import PointerName


def print_model_quality(bucket) -> None:
    """The published model's quality beside its baselines (``ModelNotFoundError`` when none is published)."""
    from imagesim_pipeline.models.registry import get_pointer, read_metrics
    from imagesim_pipeline.models.report import quality_table

    version = get_pointer(bucket, "smlc", "latest")
    metrics = read_metrics(bucket, "smlc", version)
    onnx = f"{metrics.onnx.max_abs_diff:.1e}" if metrics.onnx else "not exported"
    say(f"model smlc/{version}: val loss {metrics.val_loss:.3f}, val accuracy {metrics.val.accuracy:.3f} "
        f"(reference benchmark: < 0.3, > 0.85); ONNX max |diff| {onnx}")
    say("test split (never trained on), baselines from the same run:")
    say(quality_table(metrics))


def cmd_model(args: argparse.Namespace) -> int:
    """Run `imagesim model train|report|list`; the exit status."""
    from imagesim_pipeline.models.registry import ModelNotFoundError, get_pointer, read_metrics, verify
    from imagesim_pipeline.models.report import per_label_table, quality_table
    from imagesim_pipeline.storage import open_bucket

    if args.action == "train":
        from imagesim_pipeline.orchestration.instance import run_job

        trained = run_job("trainer_job", progress=say, bucket=args.bucket, assets=["smlc_model", "onnx_model"])
        if not trained:
            return 1
        try:
            print_model_quality(open_bucket(args.bucket))
        except ModelNotFoundError as exc:  # trainer_job ran, but onnx_model's checks published nothing
            raise RunFailedError(f"trainer_job published no model: {exc}") from None
        return 0
    bucket = open_bucket(args.bucket)
    if args.action == "list":
        return _list_models(bucket, args.name)
    version = args.version or get_pointer(bucket, args.name, "latest")
    verify(bucket, args.name, version)  # a damaged or unpublished version: one line, exit 2
    metrics = read_metrics(bucket, args.name, version)
    if args.json:
        say(metrics.to_json())
        return 0
    say(f"{args.name}/{version} on dataset {metrics.data.dataset_version} "
        f"({', '.join(f'{s} {n}' for s, n in metrics.data.chips.items())} chips)")
    say(f"val: loss {metrics.val_loss:.3f}, accuracy {metrics.val.accuracy:.3f}")
    say("test, beside the baselines computed in the same run:")
    say(quality_table(metrics))
    say("")
    say(per_label_table(metrics))
    return 0


def _list_models(bucket, name: str) -> int:
    """Every published version, oldest first, with the pointers that name it."""
    from datetime import datetime

    from imagesim_pipeline.models.registry import published_versions, read_pointer

    kinds: tuple[PointerName, ...] = ("latest", "serving", "trained")
    pointers = {which: (p.version if (p := read_pointer(bucket, name, which)) else None) for which in kinds}
    versions = published_versions(bucket, name)
    if not versions:
        say(f"no published version of {name} in {bucket.url('models/')}: `imagesim model train`")
        return 0
    say(f"{'version':<20} {'published (UTC)':<19}  {'dataset':<20} roles")
    for m in versions:
        roles = [which for which, v in pointers.items() if v == m.version]
        when = datetime.fromtimestamp(m.published, UTC).strftime("%Y-%m-%d %H:%M:%S")
        say(f"{m.version:<20} {when:<19}  {m.dataset_version:<20} {', '.join(roles)}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the model command."""
    p = sub.add_parser("model", help="train the SMLC through Dagster; show a model's quality",
                       description="`imagesim model train`: run trainer_job's smlc_model and onnx_model through "
                                   "Dagster. "
                                   "`imagesim model report [VERSION]`: the figures of metrics.json of the latest "
                                   "published SMLC (or VERSION): test micro/macro F2 at 0.5 and at the val-chosen "
                                   "thresholds, mAP, per-label table, next to the baselines of the same run. "
                                   "`imagesim model list`: every published version and which one is latest "
                                   "(newest published), serving (what search answers with) and trained.")
    p.add_argument("action", choices=["train", "report", "list"])
    p.add_argument("version", nargs="?", help="report: model version (default: models/<name>/latest.json)")
    p.add_argument("--name", default="smlc", help="model name (default smlc)")
    p.add_argument("--bucket", help=BUCKET_HELP)
    p.add_argument("--json", action="store_true", help="the whole metrics.json")
    p.set_defaults(func=cmd_model)

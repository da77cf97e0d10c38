"""Orchestration commands: the Dagster UI and daemon, runs and backfills, the deployment check."""

from __future__ import annotations

import argparse
import sys

from imagesim_pipeline.cli.common import BUCKET_HELP, exec_dagster, parse_zone, require_free_port, say


def cmd_materialize(args: argparse.Namespace) -> int:
    """``imagesim materialize``: run a job over cells in this process; 1 when a cell failed."""
    from imagesim_pipeline.orchestration.instance import run_cells

    failures = run_cells(args.cells or None, job_name=args.job, progress=say, bucket=args.bucket,
                         one_run=args.job == "encoder_job")
    if failures:
        print(f"error: {len(failures)} cell(s) failed: {', '.join(failures)}. Open the Dagster UI "
              "(`make ui`) for their logs.", file=sys.stderr)
        return 1
    return 0


def cmd_backfill(args: argparse.Namespace) -> int:
    """``imagesim backfill``: launch a backfill over a UTM zone's cells, optionally following it."""
    from imagesim_pipeline.orchestration.backfills import daemon_running, launch_zone_backfill, wait_for_backfill
    from imagesim_pipeline.orchestration.instance import open_instance

    instance = open_instance()
    launched = launch_zone_backfill(instance, args.zone, args.assets)
    say(f"backfill {launched.backfill_id}: {', '.join(launched.assets)} over {len(launched.cells)} cell(s) of "
        f"zone {args.zone} ({launched.cells[0]} … {launched.cells[-1]})")
    say(f"  follow it in the UI: Runs → Backfills → {launched.backfill_id} (`make ui`, http://127.0.0.1:3000"
        f"/runs/b/{launched.backfill_id})")
    if not daemon_running(instance):
        say("  no dagster-daemon is running for this instance: the backfill waits until one starts "
            "(`make ui` starts one; on AWS the daemon service runs it)")
    if not args.wait:
        return 0
    status = wait_for_backfill(instance, launched.backfill_id, say)
    return 0 if status in ("COMPLETED", "COMPLETED_SUCCESS") else 1


def cmd_ui(args: argparse.Namespace) -> int:
    """``imagesim ui``: the Dagster webserver and daemon for this instance."""
    from imagesim_pipeline.settings import dagster_home

    require_free_port(args.host, args.port)
    say(f"Dagster UI (webserver and daemon) on http://{args.host}:{args.port}, instance {dagster_home()}")
    exec_dagster("dagster", "dev", "-h", args.host, "-p", str(args.port))
    return 0


def cmd_daemon(args: argparse.Namespace) -> int:
    """``imagesim daemon``: the Dagster daemon alone, after the deployment check."""
    from imagesim_pipeline.orchestration.compute import require_deployment

    require_deployment()
    exec_dagster("dagster-daemon", "run")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """What this deployment uses, and every problem with it at once."""
    from imagesim_pipeline.errors import ImagesimError
    from imagesim_pipeline.orchestration.compute import aws_problems, deployment_executor
    from imagesim_pipeline.orchestration.deployment import check_instance_storage
    from imagesim_pipeline.settings import dagster_home, settings
    from imagesim_pipeline.storage import open_bucket

    current, problems = settings(), []
    say(f"deployment: {current.deployment} (executor: {deployment_executor(current).name})")
    if current.deployment == "aws":
        problems += aws_problems(current)
    try:
        say(f"Dagster instance: {check_instance_storage(dagster_home())}")
    except ImagesimError as exc:
        problems.append(str(exc))
    bucket = None
    try:
        bucket = open_bucket(args.bucket)
        first = next(iter(bucket.list("ard/")), None)
        say(f"bucket: {bucket.uri} ({'holds deliveries' if first else 'no delivery under ard/ yet'})")
    except ImagesimError as exc:
        problems.append(str(exc))
    try:
        from imagesim_pipeline.search.stores import engine_status

        say(engine_status(bucket))
    except ImagesimError as exc:
        problems.append(str(exc))
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    say(f"GPUs: {gpus}" + ("" if gpus else " (training runs on the CPU here; the trainer profile has GPUs)"))
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 2 if problems else 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ui, daemon, check, backfill, materialize commands."""
    p = sub.add_parser("ui", help="the Dagster UI with its daemon (dagster dev) on the project's instance",
                       description="Start `dagster dev` (webserver and daemon) over workspace.yaml with "
                                   "DAGSTER_HOME (default .dagster/); a port in use is one line, not a traceback.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=3000, help="port of the web UI (default 3000)")
    p.set_defaults(func=cmd_ui)

    p = sub.add_parser("daemon", help="the Dagster daemon on the instance of DAGSTER_HOME (the AWS daemon service)",
                       description="Check the deployment's settings and the instance's storage, give the trainer "
                                   "and index pools their one slot, then run `dagster-daemon run` over "
                                   "workspace.yaml (sensors, schedules, the run queue, backfills).")
    p.set_defaults(func=cmd_daemon)

    p = sub.add_parser("check", help="show the deployment this environment configures and every problem with it",
                       description="The deployment (IMAGESIM_DEPLOYMENT) and its executor, the Dagster instance's "
                                   "storage (PostgreSQL reachable?), the bucket, the GPUs; exit 2 naming every "
                                   "missing setting or unreachable service.")
    p.add_argument("--bucket", help=BUCKET_HELP)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("backfill", help="launch a Dagster backfill over every registered cell of a UTM zone",
                       description="Store one asset backfill over every registered cell of --zone in the running "
                                   "Dagster instance (DAGSTER_HOME); the daemon runs it, one run per cell (the "
                                   "same as Materialize → backfill in the UI).")
    p.add_argument("--zone", type=parse_zone, required=True, help="the UTM zone (1-60)")
    p.add_argument("--assets", nargs="+", metavar="ASSET",
                   help="per-cell assets to backfill (default: every asset of datamaker_job)")
    p.add_argument("--wait", action="store_true", help="follow the backfill until it ends; exit 1 if a run failed")
    p.set_defaults(func=cmd_backfill)

    p = sub.add_parser("materialize", help="run the main job for registered cells through Dagster",
                       description="Run datamaker_job once per cell partition, or encoder_job once over the "
                                   "cells' range (embeddings, then the index and changes), in the Dagster instance "
                                   "at DAGSTER_HOME; runs appear in the UI.")
    p.add_argument("cells", nargs="*", help="cell ids (default: every registered partition)")
    p.add_argument("--job", default="datamaker_job", choices=["datamaker_job", "encoder_job"],
                   help="the partitioned job to run (default: datamaker_job)")
    p.add_argument("--bucket", help=BUCKET_HELP)
    p.set_defaults(func=cmd_materialize)

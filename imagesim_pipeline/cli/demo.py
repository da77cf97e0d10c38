"""The demo command: render the demo world and run everything on it."""

from __future__ import annotations

import argparse
from pathlib import Path

from imagesim_pipeline.cli.common import BUCKET_HELP, say
from imagesim_pipeline.cli.model import print_model_quality
from imagesim_pipeline.cli.search import hits_table, print_changes
from imagesim_pipeline.service.smoke import check_service


def _build_world(args: argparse.Namespace, bucket) -> list[str]:
    import tempfile

    from imagesim_pipeline.demo.world import (
        SYNTHETIC_KM,
        WORKERS,
        build_world,
        default_regions,
        synthetic_region,
    )
    from imagesim_pipeline.samples import fetch
    from imagesim_pipeline.storage.layout import SYNTHETIC_OSM_KEY

    pbfs = fetch(["Helsinki.osm.pbf", "test.osm.pbf"])
    regions = default_regions(pbfs)
    km = SYNTHETIC_KM if args.scale is None else args.scale
    with tempfile.TemporaryDirectory(prefix="imagesim-synthetic-") as tmp:
        if km > 0:
            regions.append(synthetic_region(Path(tmp), km, seed=args.seed))
        cells = build_world(bucket, regions, seed=args.seed, progress=say, workers=WORKERS)
    # osm_data reads the synthetic area's OSM from the bucket after the real extracts (its default list),
    # unless IMAGESIM_OSM_PBF names other extracts.
    from imagesim_pipeline.settings import settings

    custom = settings().osm_pbf
    if km > 0 and custom and SYNTHETIC_OSM_KEY not in custom.split(","):
        say(f"note: the synthetic area's OSM is {bucket.url(SYNTHETIC_OSM_KEY)}; osm_data reads it only when "
            f"IMAGESIM_OSM_PBF lists it, e.g. IMAGESIM_OSM_PBF={custom},{SYNTHETIC_OSM_KEY}")
    return cells


def cmd_demo(args: argparse.Namespace) -> int:
    """``imagesim demo``: render the demo world and run the whole pipeline over it; 1 when a check failed."""
    from imagesim_pipeline.ard.discovery import discover_bucket
    from imagesim_pipeline.models.registry import ModelNotFoundError
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
        say(f"demo world: {len(cells)} cell(s) in {bucket.uri}/ard/")
        return 0
    say("== 1/7 rendering the demo world into the ARD layout: real OpenStreetMap (Helsinki, Kotka) and a "
        "procedural land-use area ==")
    _build_world(args, bucket)
    say("== 2/7 discovering cells and registering them as Dagster partitions ==")
    found = discover_bucket(bucket)
    added = register_cells(found.cell_ids)
    say(f"{len(found.cells)} cells ({len(added)} new partitions): {', '.join(found.cell_ids)}")
    say("== 3/7 running the main job (datamaker_job: ard_tile, osm_data, chips, nodata_index, chip_labels) "
        "for every cell ==")
    failures = run_cells(found.cell_ids, progress=say, bucket=args.bucket)
    say("== 4/7 building the training dataset (trainer_job: training_dataset and its checks) ==")
    dataset_ok = run_job("trainer_job", progress=say, bucket=args.bucket, assets=["training_dataset"])
    if dataset_ok:
        from imagesim_pipeline.dataset.stats import dataset_stats, format_stats

        say(format_stats(dataset_stats(bucket)))
    model_ok = False
    if dataset_ok and not args.no_train:
        say("== 5/7 training the SMLC on cached backbone features, exporting ONNX (trainer_job: smlc_model, "
            "onnx_model and their checks) ==")
        model_ok = run_job("trainer_job", progress=say, bucket=args.bucket, assets=["smlc_model", "onnx_model"])
        try:
            if model_ok:
                print_model_quality(bucket)
        except ModelNotFoundError as exc:  # the run completed, but its checks published nothing
            say(f"trainer_job published no model: {exc}")
            model_ok = False
    search_ok = False
    if model_ok:
        say("== 6/7 encoding every chip with the ONNX model, then the similarity index and the change scores "
            "(encoder_job: one run over every cell) ==")
        failed = run_cells(None, job_name="encoder_job", progress=say, bucket=args.bucket, one_run=True)
        search_ok = not failed and _print_search(bucket)
    if search_ok:
        say("== 7/7 checking the search service (imagesim serve) over the demo bucket: API, tiles, page ==")
        search_ok = check_service(bucket, say)
    home = dagster_home()
    say("")
    say("Done." if not failures else f"Finished with {len(failures)} failed cell(s): {', '.join(failures)}")
    say(f"  bucket (ARD deliveries):  {bucket.uri}/ard/")
    say(f"  OSM per cell:             {bucket.uri}/ard/<zone>/<quadkey>/osm_data.json")
    say(f"  chips and nodata index:   {bucket.uri}/chips/<zone>/, {bucket.uri}/nodata-index.json")
    say(f"  labels per cell:          {bucket.uri}/labels/<zone>/<cell>.parquet and .csv")
    say(f"  training dataset:         {bucket.uri}/datasets/<version>/ (latest: {bucket.uri}/datasets/latest.json); "
        "`imagesim dataset stats`")
    say(f"  model:                    {bucket.uri}/models/smlc/<version>/ (model.onnx, model.ckpt, metrics.json, "
        f"model_card.md, manifest.json; latest published: {bucket.uri}/models/smlc/latest.json, served by "
        f"search: {bucket.uri}/models/smlc/serving.json); `imagesim model report`, `imagesim model list`")
    say(f"  embeddings and index:     {bucket.uri}/embeddings/<model version>/<zone>/<cell>.parquet, "
        f"{bucket.uri}/index/<model version>/; `imagesim search --chip CHIP_ID`")
    say(f"  changes:                  {bucket.uri}/changes/<model version>/changes.parquet (maps per cell in "
        f"cells/); `imagesim changes --map DIR`" + (f"; the top 10 as before | after | map in {maps}/"
                                                       if (maps := _change_maps_dir(bucket)) else ""))
    say("  search page and API:      make serve   then open http://127.0.0.1:8000/ (API docs: /docs)")
    say(f"  Dagster instance (runs):  {home}")
    say("  Dagster UI:               make ui   then open http://127.0.0.1:3000 (Assets: ard_tile, osm_data, "
        "chips with a contact sheet, nodata_index, chip_labels, training_dataset with plots, smlc_model with "
        "F2 and PR plots, onnx_model, chip_embeddings, similarity_index, chip_changes with before | after | map)")
    if args.no_train:  # nothing trained: the dataset sensor would start trainer_job for this dataset
        say("                            with --no-train no model was trained: `imagesim model train` (or the "
            "dataset sensor, once turned on) trains one (README: what the sensors do)")
    else:
        say("                            its sensors start no run over this bucket: every cell is registered, the "
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
        say(f"error: {exc}")
        return False
    chip = engine.example_chip("water")
    say(f"\nexample: chips that look like {chip} (`imagesim search --chip {chip} --k 8 --spread`):")
    say(hits_table(engine.by_chip(chip, k=8, spread=True)))
    say("")
    try:
        print_changes(bucket, engine.name, top=10, maps=_change_maps_dir(bucket))
    except ImagesimError as exc:
        say(f"error: {exc}")
        return False
    return True


def _change_maps_dir(bucket) -> Path | None:
    """Where ``make demo`` writes the top changes' pictures: beside a local bucket."""
    from imagesim_pipeline.storage import LocalBucket

    return Path(bucket.root).parent / "change-maps" if isinstance(bucket, LocalBucket) else None


def register(sub: argparse._SubParsersAction) -> None:
    """Add the demo command."""
    p = sub.add_parser("demo", help="render the demo world from real OSM and run everything on it",
                       description="`imagesim demo` (what `make demo` runs): render the demo world (real "
                                   "OpenStreetMap of Helsinki and Kotka plus a procedural area, two acquisitions) "
                                   "into the bucket, register its cells, run datamaker_job for each (OSM, chips, "
                                   "nodata index, labels), build the training dataset, train and publish the SMLC "
                                   "(trainer_job), encode every chip, build the similarity index and score changes "
                                   "(encoder_job), check the search service, and print where to look. "
                                   "`imagesim demo build`: only render the world.")
    p.add_argument("action", nargs="?", choices=["run", "build"], default="run",
                   help="run: the whole chain (default); build: only render the world into the bucket")
    p.add_argument("--bucket", help=BUCKET_HELP)
    p.add_argument("--seed", type=int, default=7, help="random seed of the rendering (default 7)")
    p.add_argument("--no-train", action="store_true", help="stop after the training dataset")
    p.add_argument("--scale", type=float, metavar="KM",
                   help="side of the procedural synthetic area in km, rounded to whole 625 m blocks (default: "
                        "SYNTHETIC_KM of imagesim_pipeline/demo/world.py, 8 km: about 5 400 chips); 0 leaves it out")
    p.set_defaults(func=cmd_demo)

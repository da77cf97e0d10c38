"""The bucket's key layout: every prefix and key imagesim reads or writes, in one place.

Keys are plain strings built from ids (cell ``Z<zone>-<quadkey12>``, chip file name, versions), so
this module imports nothing else of imagesim. README's "Layout of the bucket" shows the same tree.

```
ard/<zone>/<quadkey12>/<YYYY-MM-DD>/<catalog>-visual.tif, -data-mask.gpkg, .json   deliveries
ard/<zone>/<quadkey12>/osm_data.json                                                OSM per cell
osm/pbf-cache/<fingerprint>/...                                                     PBF extraction cache
chips/<zone>/<chip>.jpg, chips/<zone>/_manifests/<cell>.json, chips/<zone>/_staging/<cell>/
nodata-index/<zone>/<cell>.parquet, nodata-index.json
labels/<zone>/<cell>.parquet, .coverage.parquet, .csv
datasets/<version>/<file>, datasets/latest.json
features/<cache key>/<file>
models/<name>/<version>/<file>, manifest.json                                     published (immutable)
models/<name>/_staging/<version>/<file>                                             trained, awaiting checks
models/<name>/<trained|latest|serving>.json
embeddings/<model version>/<zone>/<cell>.parquet
index/<model version>/manifest.json, index/<model version>/builds/<build>/<file>
changes/<model version>/changes.parquet, changes/<model version>/cells/<zone>/<cell>.parquet (pairs, maps)
ops/run-failures/<YYYY-MM-DD>/<job>-<run id>.md                                     failed runs, summarised
demo/...
```
"""

from __future__ import annotations

ARD = "ard/"
OSM_CACHE = "osm/pbf-cache"
CHIPS = "chips/"
NODATA_INDEX = "nodata-index/"
NODATA_INDEX_JSON = "nodata-index.json"
LABELS = "labels/"
DATASETS = "datasets/"
DATASETS_LATEST = f"{DATASETS}latest.json"
FEATURES = "features/"
MODELS = "models/"
EMBEDDINGS = "embeddings/"
INDEX = "index/"
CHANGES = "changes/"
OPS = "ops/"
DEMO = "demo/"
SYNTHETIC_OSM_KEY = f"{DEMO}synthetic.osm.pbf"  # the demo world's procedural area as OSM (osm_data reads it)
PREFIXES = (ARD, "osm/", CHIPS, NODATA_INDEX, LABELS, DATASETS, FEATURES, MODELS, EMBEDDINGS, INDEX, CHANGES, OPS,
            DEMO)


def _zone(cell_id: str) -> str:
    """``"35"`` of ``"Z35-0131..."`` (the zone folder, zero-padded as in the id)."""
    return cell_id[1:3]


def ard_cell_prefix(cell_id: str) -> str:
    """The prefix of a level-12 cell's deliveries."""
    return f"{ARD}{_zone(cell_id)}/{cell_id[4:]}/"


def osm_key(cell_id: str) -> str:
    """The cell's OSM document."""
    return f"{ard_cell_prefix(cell_id)}osm_data.json"


def chip_key(chip: str) -> str:
    """A chip file ``Z<zone>-<quadkey>_<catalog>.jpg``."""
    return f"{CHIPS}{_zone(chip)}/{chip}"


def chip_cell_prefix(cell_id: str) -> str:
    """The prefix of a level-12 cell's published chips."""
    return f"{CHIPS}{_zone(cell_id)}/{cell_id}"


def chip_manifest_key(cell_id: str) -> str:
    """The cell's chip manifest."""
    return f"{CHIPS}{_zone(cell_id)}/_manifests/{cell_id}.json"


def chip_staging_prefix(cell_id: str) -> str:
    """Where a cell's chips wait until its run commits."""
    return f"{CHIPS}{_zone(cell_id)}/_staging/{cell_id}/"


def nodata_index_key(cell_id: str) -> str:
    """The cell's nodata index table."""
    return f"{NODATA_INDEX}{_zone(cell_id)}/{cell_id}.parquet"


def labels_key(cell_id: str, kind: str = "parquet") -> str:
    """The cell's label table (``parquet``), its coverage table (``coverage.parquet``) or sparse CSV (``csv``)."""
    return f"{LABELS}{_zone(cell_id)}/{cell_id}.{kind}"


def dataset_key(version: str, name: str) -> str:
    """A file of a dataset version."""
    return f"{DATASETS}{version}/{name}"


def features_key(cache: str, name: str) -> str:
    """A file of a feature cache entry."""
    return f"{FEATURES}{cache}/{name}"


def model_key(name: str, version: str, file: str) -> str:
    """A file of a published model version."""
    return f"{MODELS}{name}/{version}/{file}"


def model_staging_key(name: str, version: str, file: str) -> str:
    """A trained version's files before its checks pass and it is published."""
    return f"{MODELS}{name}/_staging/{version}/{file}"


def model_pointer_key(name: str, which: str) -> str:
    """``trained``, ``latest`` (newest published) or ``serving`` (what search serves)."""
    return f"{MODELS}{name}/{which}.json"


def embeddings_prefix(version: str) -> str:
    """The prefix of a model version's embeddings."""
    return f"{EMBEDDINGS}{version}/"


def embeddings_key(version: str, cell_id: str) -> str:
    """A cell's embeddings under a model version."""
    return f"{embeddings_prefix(version)}{_zone(cell_id)}/{cell_id}.parquet"


def index_key(version: str, file: str) -> str:
    """A file of a model version's index."""
    return f"{INDEX}{version}/{file}"


def index_build_key(version: str, build: str, file: str) -> str:
    """A file of one build of a version's index (a rebuild writes a new build; the manifest names the current)."""
    return f"{INDEX}{version}/builds/{build}/{file}"


def changes_key(version: str) -> str:
    """A model version's change table."""
    return f"{CHANGES}{version}/changes.parquet"


def cell_changes_key(version: str, cell_id: str) -> str:
    """A cell's pair changes, scored by the encoder (chip_embeddings)."""
    return f"{CHANGES}{version}/cells/{_zone(cell_id)}/{cell_id}.parquet"


def run_failure_key(day: str, job: str, run_id: str) -> str:
    """The readable summary of a failed run (``day`` as YYYY-MM-DD)."""
    return f"{OPS}run-failures/{day}/{job}-{run_id}.md"

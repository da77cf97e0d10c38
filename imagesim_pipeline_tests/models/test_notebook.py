"""notebooks/encoder.ipynb: stored with its outputs (a run on the demo bucket), and it runs top to bottom on the
demo world's published model and similarity index.

The notebook is executed with nbclient in a python3 kernel of this interpreter, its parameters set
the way papermill would (appended to the cell tagged ``parameters``). A probe cell appended at the
end reports the kernel's state as JSON, so the test checks what the notebook computed as well as
what it shows.
"""

from __future__ import annotations

import ast
import base64
import io
import json
import re
import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from imagesim_pipeline.settings import PROJECT_ROOT

NOTEBOOK = PROJECT_ROOT / "notebooks" / "encoder.ipynb"
PARAMETERS = {"BUCKET", "MAX_EPOCHS"}
MAX_BYTES = 400_000

PROBE = """
import json
print("PROBE " + json.dumps({
    "served": served, "latest": latest, "dim": encoder.dim, "labels": encoder.labels, "chips": chips, "keys": keys,
    "embedding_shape": list(encoded.embeddings.shape), "probs_shape": list(encoded.probs.shape), "bad": encoded.bad,
    "query": query, "query_place": about["place"],
    "hits": [[h.chip, h.place, h.score] for h in hits],
    "bbox": list(bbox), "filter_labels": list(filters.labels),
    "filtered": [[h.chip, [name for name, _ in h.labels], list(h.geometry.bounds)] for h in filtered],
    "negative": [negative.chip, negative.place], "refined": [[h.chip, h.place, h.score] for h in refined],
    "own_first": [own[0].chip, own[0].score], "image_hits": [h.chip for h in image_hits],
    "geojson_chips": [f["properties"]["chip"] for f in geojson["features"]],
    "strategies": strategies_table.reset_index().to_dict("records"),
}))
"""


def parameters_cell(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    (cell,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    return cell


def with_parameters(**values) -> nbformat.NotebookNode:
    """The notebook with ``values`` assigned after its parameters cell's own (what papermill does)."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    cell = parameters_cell(nb)
    assert set(values) <= PARAMETERS
    cell.source += "\n# injected by the test\n" + "".join(f"{k} = {v!r}\n" for k, v in values.items())
    nb.cells.append(nbformat.v4.new_code_cell(PROBE))
    return nb


def outputs(nb: nbformat.NotebookNode) -> tuple[str, list[bytes], list[dict]]:
    """(stdout, figures as JPEG or PNG bytes, error outputs) of the code cells."""
    stdout, figures, errors = [], [], []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.output_type == "stream" and out.name == "stdout":
                stdout.append(out.text)
            if out.output_type == "error":
                errors.append(out)
            for kind in ("image/jpeg", "image/png"):
                if kind in out.get("data", {}):
                    figures.append(base64.b64decode(out.data[kind]))
    return "".join(stdout), figures, errors


def execute(nb: nbformat.NotebookNode) -> tuple[str, list[bytes], dict]:
    """Run every cell (a failing cell raises with its traceback); (stdout, figures, probe)."""
    NotebookClient(nb, timeout=600, kernel_name="python3", record_timing=False,
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    text, figures, errors = outputs(nb)
    assert not errors
    (probe,) = re.findall(r"^PROBE (.*)$", text, re.M)
    return text, figures, json.loads(probe)


def thumbnail_rows(figures: list[bytes]) -> list[tuple[int, int]]:
    """The figures' sizes: rows of about six ~100 px thumbnails each."""
    from PIL import Image

    sizes = [Image.open(io.BytesIO(figure)).size for figure in figures]
    assert len(sizes) == 2, sizes  # six encoded chips; the query and its five best hits
    for width, height in sizes:
        assert 450 < width < 900 and 80 < height < 260 and width > 2.5 * height, sizes
    return sizes


def test_stored_notebook_has_clean_outputs_and_plain_parameters():
    raw = NOTEBOOK.read_bytes()
    assert len(raw) < MAX_BYTES, f"{len(raw):,} bytes: keep the stored figures small"
    nb = nbformat.reads(raw.decode(), as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    assignments = ast.parse(parameters_cell(nb).source).body
    assert {node.targets[0].id for node in assignments} == PARAMETERS
    for node in assignments:  # plain values a tool can read and replace
        ast.literal_eval(node.value)
    assert ast.literal_eval(assignments[0].value) == ""  # stored as run on the default bucket

    # markdown before every code cell; sections in order; the public API in the code
    assert nb.cells[0].cell_type == "markdown"
    assert all(a.cell_type == "markdown" for a, b in zip(nb.cells, nb.cells[1:]) if b.cell_type == "code")
    headings = [line for c in nb.cells if c.cell_type == "markdown" for line in c.source.splitlines()
                if line.startswith("## ")]
    assert [h.split()[1] for h in headings] == ["1.", "2.", "3.", "4.", "5."], headings
    source = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    for used in ("OnnxEncoder.from_bucket", ".encode(", "chip_key(", "SearchEngine(bucket)", ".by_chip(", "Filters(",
                 "negatives=", ".by_image(", "hits_to_geojson", "served_version", '"classifier", "metric"'):
        assert used in source, used
    assert "imagesim search" in nb.cells[-1].source and "imagesim serve" in nb.cells[-1].source

    # executed top to bottom, once; no errors, warnings, timing metadata or paths of the machine that ran it
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), "run every cell once, in order"
    text, figures, errors = outputs(nb)
    assert not errors
    assert not [o for c in code for o in c.outputs if o.output_type == "stream" and o.name == "stderr"]
    assert all("execution" not in c.metadata for c in code)
    shown = json.dumps([c.outputs for c in code])
    for path in {str(PROJECT_ROOT), str(Path.home()), "/tmp/"}:
        assert path not in shown, path
    thumbnail_rows(figures)

    # what the stored run found
    assert re.search(r"^search serves smlc/\S+", text, re.M)
    assert re.search(r"^embeddings \(12, \d+\) \| probabilities \(12, 13\) \| unreadable images \[\]$", text, re.M)
    assert re.search(r"^read 12 chips, e\.g\. chips/\d\d/Z\d\d-\d+_\w+\.jpg", text, re.M)
    assert "the query's place among the hits: False" in text
    assert re.search(r"^the query's own JPEG: first hit (\S+), score 1\.0000$", text, re.M)
    assert re.search(r"^[1-9]\d* of the 10 hits left the top 10$", text, re.M)
    (table,) = [o.data["text/plain"] for o in code[-1].outputs if "text/plain" in o.get("data", {})]
    scores = {line.split()[0]: float(line.split()[-1]) for line in table.splitlines()[2:]}
    assert scores["classifier"] > scores["random"] + 0.05 and scores["metric"] > scores["random"] + 0.05, table


@pytest.mark.e2e
def test_notebook_encodes_searches_and_compares_strategies_on_the_demo_index(demo_index, tmp_path, monkeypatch):
    source, version = demo_index
    bucket = tmp_path / "bucket"
    shutil.copytree(source, bucket)  # shared by the session; the notebook should only read it
    before = {p: p.stat().st_mtime_ns for p in bucket.rglob("*")}
    monkeypatch.setenv("IMAGESIM_BUCKET", str(tmp_path / "not-this-bucket"))  # the BUCKET parameter must win
    monkeypatch.delenv("MPLBACKEND", raising=False)

    text, figures, probe = execute(with_parameters(BUCKET=str(bucket), MAX_EPOCHS=2))
    assert f"search serves smlc/{version}; the newest published version is smlc/{version}" in text
    assert probe["served"] == probe["latest"] == version
    assert {p: p.stat().st_mtime_ns for p in bucket.rglob("*")} == before  # read only (the features were cached)
    assert not (tmp_path / "not-this-bucket").exists() and not (NOTEBOOK.parent / "lightning_logs").exists()
    assert str(tmp_path) not in text  # keys relative to the bucket, no paths
    thumbnail_rows(figures)

    # 2. OnnxEncoder over 12 chip JPEGs read at their keys
    assert len(probe["chips"]) == 12 and probe["bad"] == []
    for chip, key in zip(probe["chips"], probe["keys"]):
        assert key == f"chips/{chip[1:3]}/{chip}" and (bucket / key).is_file()
    assert probe["embedding_shape"] == [12, probe["dim"]] and probe["probs_shape"] == [12, len(probe["labels"])]

    # 3. SearchEngine: ten distinct places, best first, never the query's own
    places = [place for _, place, _ in probe["hits"]]
    scores = [score for *_, score in probe["hits"]]
    assert len(places) == 10 == len(set(places)) and probe["query_place"] not in places
    assert scores == sorted(scores, reverse=True) and scores[0] <= 1 + 1e-5
    # the filter: each hit predicted to show the label and meeting the box
    w, s, e, n = probe["bbox"]
    assert probe["filter_labels"] == ["water"] and probe["filtered"]
    for chip, labels, (west, south, east, north) in probe["filtered"]:
        assert "water" in labels and west <= e and east >= w and south <= n and north >= s, chip
    # the negative example: neither its place nor the query's comes back, and other hits drop down the list
    refined_places = [place for _, place, _ in probe["refined"]]
    assert probe["negative"][1] not in refined_places and probe["query_place"] not in refined_places
    rank_after = {chip: rank for rank, (chip, _, _) in enumerate(probe["refined"], 1)}
    dropped = [chip for rank, (chip, _, _) in enumerate(probe["hits"], 1)
               if chip != probe["negative"][0] and rank_after.get(chip, 11) > rank]
    assert dropped
    assert re.search(rf"^{sum(chip not in rank_after for chip, _, _ in probe['hits'])} of the 10 hits left the top 10$",
                     text, re.M)
    # by image bytes: the chip's own JPEG finds the chip itself (same model and preprocessing as the index)
    assert probe["own_first"][0] == probe["query"] and probe["own_first"][1] == pytest.approx(1, abs=1e-3)
    assert len(probe["image_hits"]) == 5 and probe["geojson_chips"] == probe["image_hits"]

    # 4. two strategies trained on the same cached features, each above random vectors of the same chips
    *trained, floor = probe["strategies"]
    assert [row["strategy"] for row in trained] == ["classifier", "metric"] and floor["strategy"].startswith("random")
    assert "classifier: trained 2 epochs on the cached features" in text
    assert all(row["embedding"] == 320 and row["P@10, same label set"] > floor["P@10, same label set"] + 0.05
               for row in trained), probe["strategies"]

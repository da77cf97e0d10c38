"""notebooks/encoder.ipynb: committed without outputs, and it runs top to bottom on the demo world's dataset.

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

import nbformat
import pytest
from nbclient import NotebookClient

from imagesim_pipeline.settings import PROJECT_ROOT

NOTEBOOK = PROJECT_ROOT / "notebooks" / "encoder.ipynb"
PARAMETERS = {"BUCKET", "MAX_EPOCHS", "TRAIN"}

PROBE = """
import json
print("PROBE " + json.dumps({
    "name": name, "version": version, "chips": list(chips), "embedding_shape": list(embedding.shape),
    "embedding_head": embedding[:4].round(5).ravel().tolist(),
    "query": query, "neighbours": [int(j) for j in neighbours],
    "similarity_diagonal": [float(similarity.diagonal().min()), float(similarity.diagonal().max())],
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


def execute(nb: nbformat.NotebookNode) -> tuple[str, list[bytes], dict]:
    """Run every cell (a failing cell raises with its traceback); (stdout, PNG outputs, probe)."""
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    stdout, pngs = [], []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.output_type == "stream" and out.name == "stdout":
                stdout.append(out.text)
            if "image/png" in out.get("data", {}):
                pngs.append(base64.b64decode(out.data["image/png"]))
    text = "".join(stdout)
    (probe,) = re.findall(r"^PROBE (.*)$", text, re.M)
    return text, pngs, json.loads(probe)


def test_committed_notebook_is_clean_and_has_plain_parameters():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "commit the notebook with outputs cleared"
    assignments = ast.parse(parameters_cell(nb).source).body
    assert {node.targets[0].id for node in assignments} == PARAMETERS
    for node in assignments:  # plain values a tool can read and replace
        ast.literal_eval(node.value)
    assert any(c.cell_type == "markdown" for c in nb.cells[:2])


@pytest.mark.e2e
def test_notebook_trains_encodes_and_plots_on_the_demo_dataset(demo_dataset, tmp_path, monkeypatch):
    from PIL import Image

    from imagesim_pipeline.models.data import load_dataset_version
    from imagesim_pipeline.models.registry import set_pointer
    from imagesim_pipeline.storage import open_bucket

    bucket = tmp_path / "bucket"
    shutil.copytree(demo_dataset, bucket)  # the notebook writes features and a model into it
    runs = tmp_path / "runs"
    monkeypatch.setenv("IMAGESIM_RUNS", str(runs))
    monkeypatch.setenv("IMAGESIM_BUCKET", str(tmp_path / "not-this-bucket"))  # the BUCKET parameter must win
    monkeypatch.delenv("MPLBACKEND", raising=False)
    test_chips = load_dataset_version(str(bucket)).splits["test"].chips

    # 1. TRAIN=True: trains briefly on cached features, publishes, exports ONNX, encodes, plots.
    text, pngs, probe = execute(with_parameters(BUCKET=str(bucket), MAX_EPOCHS=2, TRAIN=True))
    assert f"bucket: {bucket}" in text
    assert "epoch 2/2" in text and "computing backbone features" in text
    assert re.search(r"checks: .*onnx_parity passed", text), text
    name, version = probe["name"], probe["version"]
    assert name == "smlc-notebook"  # a brief run never moves the pipeline's smlc pointers
    published = f"{name}/{version}: published" in text
    assert published or f"{name}/{version}: staged, not published" in text
    # published: the immutable version with its manifest; staged: nothing under the version's own prefix
    assert (bucket / "models" / name / version / "manifest.json").is_file() == published
    assert (bucket / "models" / name / version / "model.onnx").is_file() == published
    assert not (bucket / "models" / "smlc").exists()
    assert any(runs.iterdir()) and not (tmp_path / "not-this-bucket").exists()

    n = len(test_chips)
    assert probe["chips"] == test_chips
    assert probe["embedding_shape"] == [n, 320]
    assert f"-> logits ({n}, 13), embedding ({n}, 320)" in text
    (diffs,) = re.findall(r"max \|onnxruntime - torch\|: logits (\S+), embedding (\S+)", text)
    assert max(float(d) for d in diffs) < 1e-3
    assert len(probe["neighbours"]) == 4 and probe["query"] not in probe["neighbours"]
    assert probe["similarity_diagonal"] == pytest.approx([1, 1], abs=1e-5)
    assert len(pngs) == 2  # the predictions grid (2 x 4 chips) and the neighbours (1 + 4 chips)
    # two strategies trained on the same cached features, each above random vectors of the same chips
    *trained, floor = probe["strategies"]
    assert [row["strategy"] for row in trained] == ["classifier", "metric"] and floor["strategy"].startswith("random")
    assert all(row["embedding"] == 320 and row["P@10, same label set"] > floor["P@10, same label set"] + 0.05
               for row in trained)
    grid, neighbours = (Image.open(io.BytesIO(png)) for png in pngs)
    assert grid.width > 600 and grid.height > 300 and neighbours.width > 2.5 * neighbours.height

    # 2. TRAIN=False loads the published model (models/smlc/latest.json) and trains nothing.
    store = open_bucket(bucket)
    prefix = f"models/{name}/{version}/" if published else f"models/{name}/_staging/{version}/"
    for obj in list(store.list(prefix)):
        store.write_bytes(obj.key.replace(f"models/{name}/", "models/smlc/", 1), store.read_bytes(obj.key))
    set_pointer(store, "smlc", "latest", version)
    shutil.rmtree(runs)
    text, pngs, again = execute(with_parameters(BUCKET=str(bucket), TRAIN=False))
    assert f"published model: smlc/{version}" in text and "epoch" not in text
    assert not runs.exists()
    assert (again["name"], again["version"]) == ("smlc", version)
    assert again["embedding_head"] == pytest.approx(probe["embedding_head"], abs=1e-4)
    assert again["neighbours"] == probe["neighbours"] and len(pngs) == 2

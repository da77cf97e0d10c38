"""End to end on the demo world: the model lifecycle as an operator lives it.

A search service under steady traffic through train -> publish -> encode -> serve answers every request and
then serves the new version by itself; a rebuilt index of the same version is picked up; a killed publish
leaves nothing visible; a truncated embeddings file is repaired by the next chip_embeddings run while a bad
cell fails alone; corrupt pointers are one line from every command and never retried.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from dagster import DagsterEventType, DagsterInstance, materialize

from imagesim_pipeline.models.registry import (
    ModelNotFoundError,
    get_pointer,
    is_published,
    model_key,
    read_manifest,
    set_pointer,
)
from imagesim_pipeline.settings import PROJECT_ROOT
from imagesim_pipeline.storage import layout, open_bucket
from imagesim_pipeline_tests.conftest import (
    KilledAtWrite,
    chip_cells,
    free_port,
    stop_process_group,
    wait_for_port,
)

LENIENT = dict(max_val_loss=10.0, min_val_accuracy=0.0, min_test_f2=0.0)  # short trainings: publishable


def _copy(root: Path, tmp_path: Path) -> Path:
    target = tmp_path / "bucket"
    shutil.copytree(root, target)
    return target


def _train_new_version(root: Path, work: Path, epochs: int, version: str) -> None:
    """Stage a genuinely new version: other settings, trained on the (cached) demo features."""
    import lightning as L

    from imagesim_pipeline.models.data import SmlcDataModule
    from imagesim_pipeline.models.smlc import SkywayMultiLabelClassifier
    from imagesim_pipeline.models.training import make_trainer, train_and_stage

    L.seed_everything(1, verbose=False)
    data = SmlcDataModule(bucket=str(root), num_workers=0)
    model = SkywayMultiLabelClassifier(labels=data.labels)
    trainer = make_trainer(work / version, max_epochs=epochs, accelerator="cpu", devices=1, progress=lambda m: None)
    train_and_stage(model, data, trainer, open_bucket(root), work / version, "smlc", version, progress=lambda m: None)


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


class _Traffic(threading.Thread):
    """Searches by chip id, back to back, recording (status, model version) of every answer."""

    def __init__(self, base: str, chip: str):
        super().__init__(daemon=True)
        self.url, self.answers, self.stop = f"{base}/api/search/chip/{chip}?k=5", [], threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            status, body = _get(self.url)
            self.answers.append((status, body.get("model", {}).get("version") if status == 200 else body))
            time.sleep(0.05)


def _materialize_index(root: Path, instance) -> None:
    from imagesim_pipeline.orchestration.resources import BucketResource
    from imagesim_pipeline.orchestration.search_assets import similarity_index

    result = materialize([similarity_index], instance=instance, resources={"bucket": BucketResource(uri=str(root))})
    assert result.success


@pytest.mark.e2e
def test_search_answers_every_request_through_train_publish_encode_and_serve(demo_index, tmp_path):
    from imagesim_pipeline.embeddings.cell_embeddings import embed_cell
    from imagesim_pipeline.embeddings.encoder import OnnxEncoder
    from imagesim_pipeline.models.training import Benchmark, export_and_publish
    from imagesim_pipeline.search.catalog import build_similarity_index

    root = _copy(demo_index[0], tmp_path)
    old = demo_index[1]
    bucket = open_bucket(root)
    set_pointer(bucket, "smlc", "serving", old)
    cells = chip_cells(bucket)
    chip = bucket.read_text(layout.chip_manifest_key(cells[0]))
    chip = next(r["chip"] for r in json.loads(chip)["chips"] if r["written"] and r["class"] == "all data")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "serve.log", "w")
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "imagesim"), "serve", "--port", str(port), "--bucket", str(root),
         "--refresh", "0.3"], cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={k: v for k, v in os.environ.items() if k != "IMAGESIM_BUCKET"})
    traffic = _Traffic(base, chip)
    try:
        wait_for_port(port, server, timeout=120)
        assert _get(f"{base}/api/health")[1]["model"]["version"] == old
        traffic.start()
        # train and publish: latest moves, search keeps serving the old version and names the new one pending
        _train_new_version(root, tmp_path / "runs", epochs=3, version="v-next")
        done = export_and_publish(bucket, "smlc", "v-next", Benchmark(**LENIENT), progress=lambda m: None)
        assert done.published and get_pointer(bucket, "smlc", "latest") == "v-next"
        time.sleep(1.0)
        health = _get(f"{base}/api/health")[1]
        assert health["model"]["version"] == old and health["pending"]["version"] == "v-next"
        # encode every cell, then the index asset moves serving.json: the service follows by itself
        encoder = OnnxEncoder.from_bucket(bucket, version="v-next", threads=1)
        for cell in cells:
            embed_cell(bucket, encoder, cell)
        assert _get(f"{base}/api/health")[1]["model"]["version"] == old  # embeddings alone change nothing
        _materialize_index(root, DagsterInstance.ephemeral())
        assert get_pointer(bucket, "smlc", "serving") == "v-next"
        deadline = time.monotonic() + 60
        while _get(f"{base}/api/health")[1]["model"]["version"] != "v-next":
            assert time.monotonic() < deadline, "the service never switched to the new version"
            time.sleep(0.2)
        time.sleep(1.0)
        traffic.stop.set()
        traffic.join(timeout=60)
        statuses = [status for status, _ in traffic.answers]
        versions = [version for _, version in traffic.answers]
        assert len(statuses) > 50 and set(statuses) == {200}, [a for a in traffic.answers if a[0] != 200][:3]
        switch = versions.index("v-next")
        assert set(versions[:switch]) == {old} and set(versions[switch:]) == {"v-next"}  # no flapping back

        # a garbage serving pointer: the service keeps answering with what it has and says why
        serving = bucket.read_bytes(layout.model_pointer_key("smlc", "serving"))
        bucket.write_bytes(layout.model_pointer_key("smlc", "serving"), b"\xff[]")
        time.sleep(1.0)
        status, body = _get(f"{base}/api/search/chip/{chip}?k=5")
        assert status == 200 and body["model"]["version"] == "v-next"
        assert "serving.json is not a valid Pointer record" in _get(f"{base}/api/health")[1]["detail"]
        bucket.write_bytes(layout.model_pointer_key("smlc", "serving"), serving)

        # a rebuild of the same version (one cell's embeddings removed) is picked up without a restart
        before = _get(f"{base}/api/health")[1]
        bucket.delete(layout.embeddings_key("v-next", cells[0]))
        build_similarity_index(bucket, "v-next")
        deadline = time.monotonic() + 60
        while (after := _get(f"{base}/api/health")[1])["index_build"] == before["index_build"]:
            assert time.monotonic() < deadline, "the rebuilt index was never reloaded"
            time.sleep(0.2)
        assert after["index_vectors"] < before["index_vectors"] and after["model"]["version"] == "v-next"
        status, body = _get(f"{base}/api/search/chip/{chip}?k=5")  # its cell is gone from the index
        assert status == 404 and "unknown chip" in body["detail"]
    finally:
        traffic.stop.set()
        stop_process_group(server)
        log.close()


@pytest.mark.e2e
def test_a_killed_publish_mixes_nothing_and_a_same_settings_export_changes_nothing(demo_model, tmp_path):
    from imagesim_pipeline.cli import main as imagesim
    from imagesim_pipeline.embeddings.encoder import OnnxEncoder
    from imagesim_pipeline.models.training import Benchmark, export_and_publish

    root = _copy(demo_model[0], tmp_path)
    bucket = open_bucket(root)
    published = {o.key: bucket.read_bytes(o.key) for o in bucket.list(model_key("smlc", "v-test", ""))}
    # exporting a published version again writes nothing: the version stays byte-identical
    again = export_and_publish(bucket, "smlc", "v-test", Benchmark(**LENIENT), progress=lambda m: None)
    assert again.already and {o.key: bucket.read_bytes(o.key) for o in
                              bucket.list(model_key("smlc", "v-test", ""))} == published

    _train_new_version(root, tmp_path / "runs", epochs=2, version="v-k")
    with pytest.raises(KeyboardInterrupt):  # killed half-way through publishing
        export_and_publish(KilledAtWrite(root, model_key("smlc", "v-k", ""), 3), "smlc", "v-k", Benchmark(**LENIENT),
                           progress=lambda m: None)
    assert not is_published(bucket, "smlc", "v-k") and get_pointer(bucket, "smlc", "latest") == "v-test"
    with pytest.raises(ModelNotFoundError, match="is not published"):
        OnnxEncoder.from_bucket(bucket, version="v-k")
    assert imagesim(["model", "report", "v-k", "--bucket", str(root)]) == 2
    # the re-run publishes it whole: the manifest describes exactly the files there
    done = export_and_publish(bucket, "smlc", "v-k", Benchmark(**LENIENT), progress=lambda m: None)
    assert done.published and get_pointer(bucket, "smlc", "latest") == "v-k"
    manifest = read_manifest(bucket, "smlc", "v-k")
    listed = {o.key[len(model_key("smlc", "v-k", "")):]: o.size for o in bucket.list(model_key("smlc", "v-k", ""))}
    assert listed == {**{f: e.bytes for f, e in manifest.files.items()}, "manifest.json": listed["manifest.json"]}
    assert OnnxEncoder.from_bucket(bucket, version="v-k").version == "v-k"
    assert imagesim(["model", "report", "v-k", "--bucket", str(root)]) == 0
    # a damaged latest.json (or a publish killed between manifest and pointer): onnx_model repairs it
    bucket.write_bytes(layout.model_pointer_key("smlc", "latest"), b"[]")
    assert imagesim(["model", "report", "--bucket", str(root)]) == 2
    export_and_publish(bucket, "smlc", "v-k", Benchmark(**LENIENT), progress=lambda m: None)
    assert get_pointer(bucket, "smlc", "latest") == "v-k"


def _run_encoder(root: Path, instance, cells: list[str]):
    from imagesim_pipeline.orchestration.resources import BucketResource
    from imagesim_pipeline.orchestration.search_assets import chip_embeddings

    return materialize([chip_embeddings], instance=instance, raise_on_error=False,
                       resources={"bucket": BucketResource(uri=str(root))},
                       run_config={"ops": {"chip_embeddings": {"config": {"threads": 1}}}},
                       tags={"dagster/asset_partition_range_start": cells[0],
                             "dagster/asset_partition_range_end": cells[-1]})


@pytest.mark.e2e
def test_a_truncated_embeddings_file_is_repaired_and_a_bad_cell_fails_alone(demo_index, tmp_path, monkeypatch):
    from imagesim_pipeline.embeddings.cell_embeddings import read_cell_embeddings
    from imagesim_pipeline.orchestration.partitions import ard_cells

    root = _copy(demo_index[0], tmp_path)
    version = demo_index[1]
    bucket = open_bucket(root)
    cells = chip_cells(bucket)[:3]
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    instance = DagsterInstance.get()
    instance.add_dynamic_partitions(ard_cells.name, cells)
    truncated = layout.embeddings_key(version, cells[0])
    rows = read_cell_embeddings(bucket, version, cells[0]).num_rows
    bucket.write_bytes(truncated, bucket.read_bytes(truncated)[:300])
    bucket.delete(layout.chip_manifest_key(cells[1]))  # a cell that cannot be encoded at all
    untouched = read_cell_embeddings(bucket, version, cells[2])

    result = _run_encoder(root, instance, cells)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    message = failure.step_failure_data.user_failure_data.description
    assert f"1 of 3 cell(s) could not be encoded (the other 2 were written): {cells[1]}" in message
    assert read_cell_embeddings(bucket, version, cells[0]).num_rows == rows  # repaired, whole
    warnings = [e.user_message for e in instance.all_logs(result.run_id) if e.level == 30]
    assert any(f"{bucket.url(truncated)} is unreadable" in w and "treated as missing" in w for w in warnings)
    again = read_cell_embeddings(bucket, version, cells[2])  # the good cell: written again, the same rows
    assert again.select(["chip", "embedding"]).equals(untouched.select(["chip", "embedding"]))

    # a garbage latest.json: one attempt, one line naming the file, no retry
    bucket.write_bytes(layout.model_pointer_key("smlc", "latest"), b"[]")
    result = _run_encoder(root, instance, cells[2:])
    assert not result.success
    events = [e.event_type for e in result.all_events]
    assert DagsterEventType.STEP_UP_FOR_RETRY not in events
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "models/smlc/latest.json is not a valid Pointer record" in failure.step_failure_data.user_failure_data \
        .description


@pytest.mark.e2e
@pytest.mark.parametrize("garbage", [b"\xff\x00garbage", b"[]"])
def test_every_command_says_one_line_about_a_corrupt_pointer(demo_index, tmp_path, garbage):
    root = _copy(demo_index[0], tmp_path)
    open_bucket(root).write_bytes(layout.model_pointer_key("smlc", "latest"), garbage)
    imagesim = str(Path(sys.executable).parent / "imagesim")
    env = {k: v for k, v in os.environ.items() if k != "IMAGESIM_BUCKET"}
    for args in (["search", "--chip", "Z35-01313111111312103_KOTKAB.jpg"], ["changes"], ["model", "report"]):
        run = subprocess.run([imagesim, *args, "--bucket", str(root)], cwd=PROJECT_ROOT, env=env,
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 2, (args, run.stdout, run.stderr)
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and "latest.json is not a valid Pointer record" in lines[0], (args, run.stderr)
        assert "Traceback" not in run.stderr + run.stdout

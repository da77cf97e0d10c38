"""Unreadable chips are counted per split (train, val, test) in metrics.json and the model card, as numbers,
whether the head trains on cached features or on images."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from imagesim_pipeline.ard.grid import ArdCell
from imagesim_pipeline.models.data import SmlcDataModule, load_reference_inputs, union_over_ranks
from imagesim_pipeline.models.metrics_record import ModelMetrics
from imagesim_pipeline.models.report import model_card
from imagesim_pipeline.models.smlc import SkywayMultiLabelClassifier
from imagesim_pipeline.storage import open_bucket
from imagesim_pipeline_tests.models.visible_chips import LABELS, chip_jpeg

BROKEN = {"train": 2, "val": 1, "test": 2}  # unreadable chips made per split


@pytest.fixture(scope="module")
def broken_inputs(tmp_path_factory):
    """The reference's inputs (chip folder + sparse_label_encodings.csv) with unreadable chips in every split:
    junk bytes and truncated JPEGs."""
    root = tmp_path_factory.mktemp("unreadable")
    chips = root / "chips"
    chips.mkdir()
    rng = np.random.default_rng(1)
    lines = ["chip,labels"]
    for i, place in enumerate(list(ArdCell.parse("Z35-013133111113").children(17))[:240]):
        flags = [(i // 2) % 2 == 0, (i // 3) % 2 == 0, (i // 5) % 2 == 0]
        name = f"{place.id}_CAT{i % 2}.jpg"
        (chips / name).write_bytes(chip_jpeg(rng, *flags, size=32))
        lines.append(f"{name},{' '.join(str(j) for j, f in enumerate(flags) if f)}")
    csv = root / "sparse_label_encodings.csv"
    csv.write_text("\n".join(lines) + "\n")
    (root / "vocabulary.json").write_text(json.dumps({"labels": [{"name": n} for n in LABELS]}))
    splits = load_reference_inputs(str(chips), str(csv)).splits  # the split of each chip, as training sees it
    for split, count in BROKEN.items():
        assert len(splits[split].chips) > count + 4, split
        for k, chip in enumerate(splits[split].chips[:count]):
            data = (chips / chip).read_bytes()
            (chips / chip).write_bytes(b"not a jpeg" if k % 2 == 0 else data[: len(data) // 3])
    return chips, csv


def _train(data: SmlcDataModule, tmp_path):
    from imagesim_pipeline.models.training import make_trainer, train_and_stage

    torch.manual_seed(0)
    model = SkywayMultiLabelClassifier(labels=data.labels, weights="random")
    run_dir = tmp_path / "runs" / "v-unreadable"
    outcome = train_and_stage(model, data, make_trainer(run_dir, max_epochs=1, accelerator="cpu"),
                              open_bucket(tmp_path / "bucket"), run_dir, "smlc", "v-unreadable",
                              progress=lambda m: None)
    return json.loads(outcome.metrics.to_json())  # as metrics.json holds them


def _card_line(metrics: dict) -> str:
    card = model_card("smlc", "v", ModelMetrics.model_validate(metrics))
    (line,) = [line for line in card.splitlines() if "unreadable chips" in line]
    return line


def test_training_on_images_counts_unreadable_chips_per_split(broken_inputs, tmp_path, monkeypatch):
    chips, csv = broken_inputs
    monkeypatch.setenv("IMAGESIM_BUCKET", str(tmp_path / "bucket"))
    # one training batch (no partial last batch dropped): each unreadable train chip is met in the one epoch
    data = SmlcDataModule(chip_dir=str(chips), labels_csv=str(csv), input_size=32, batch_size=256, num_workers=0,
                          cache_features=False, weights="random")
    metrics = _train(data, tmp_path)
    assert metrics["data"]["unreadable"] == BROKEN
    assert metrics["data"]["chips"] == {s: len(data.data.splits[s].chips) for s in BROKEN}
    assert "corrupt" not in metrics["data"] and "counted per batch" not in json.dumps(metrics)
    assert _card_line(metrics).endswith("unreadable chips left out: train 2, val 1, test 2")
    # distinct chips: reading the splits again counts nothing twice
    from imagesim_pipeline.models.training import predict

    model = SkywayMultiLabelClassifier(labels=data.labels, weights="random")
    for split in ("val", "test", "test"):
        predict(model, data, split)
    assert data.unreadable_counts() == BROKEN


def test_the_image_path_counts_what_it_has_read(broken_inputs, tmp_path):
    """Before anything is read every split counts 0; each split's loader adds its own unreadable chips."""
    chips, csv = broken_inputs
    data = SmlcDataModule(chip_dir=str(chips), labels_csv=str(csv), input_size=32, batch_size=8, num_workers=0,
                          cache_features=False, weights="random")
    data.setup("fit")
    assert data.unreadable_counts() == {"train": 0, "val": 0, "test": 0}
    per_batch = 0
    for batch in data.predict_loader("test"):
        per_batch += batch[3]  # the per-batch count the LightningModule logs is still there
    assert per_batch == BROKEN["test"] and data.unreadable_counts() == {"train": 0, "val": 0, "test": 2}


def test_training_on_cached_features_counts_unreadable_chips_per_split(broken_inputs, tmp_path, monkeypatch):
    chips, csv = broken_inputs
    monkeypatch.setenv("IMAGESIM_BUCKET", str(tmp_path / "bucket"))
    data = SmlcDataModule(chip_dir=str(chips), labels_csv=str(csv), input_size=32, batch_size=64, num_workers=0,
                          cache_features=True, weights="random")
    metrics = _train(data, tmp_path)
    assert metrics["data"]["unreadable"] == BROKEN
    assert {s: len(c) for s, c in data.corrupt.items()} == BROKEN
    assert _card_line(metrics).endswith("unreadable chips left out: train 2, val 1, test 2")
    # a card made again from a metrics.json written before the per-split counts says so
    older = {**metrics, "data": {**{k: v for k, v in metrics["data"].items() if k != "unreadable"},
                                 "corrupt": "counted per batch"}}
    assert "unreadable chips left out: not recorded" in _card_line(older)


def _gather(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        shard = {"train": {rank, 10 + rank, 99}, "val": set() if rank else {5}, "test": set()}
        merged = union_over_ranks(shard)
        if rank == 0:
            with open(out, "w") as f:
                json.dump({s: sorted(v) for s, v in merged.items()}, f)
    finally:
        dist.destroy_process_group()


def test_ddp_ranks_pool_the_unreadable_chips_of_their_shards(tmp_path):
    """Under DDP each rank reads its own shard of train; the fit ends with the union over the ranks."""
    import torch.multiprocessing as mp

    from imagesim_pipeline_tests.conftest import free_port

    out = tmp_path / "merged.json"
    mp.spawn(_gather, args=(free_port(), str(out)), nprocs=2, join=True)
    assert json.loads(out.read_text()) == {"train": [0, 1, 10, 11, 99], "val": [5], "test": []}
    assert union_over_ranks({"train": {3}}) == {"train": {3}}  # one process: as is

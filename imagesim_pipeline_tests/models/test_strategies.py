"""Embedding strategies and multiscale pooling: their losses, training on a tiny dataset, export, and versions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imagesim_pipeline.ard.grid import ArdCell
from imagesim_pipeline.models.backbones import build_backbone, feature_width, forward_with_maps, pooled_features
from imagesim_pipeline.models.data import SmlcDataModule
from imagesim_pipeline.models.smlc import SkywayMultiLabelClassifier
from imagesim_pipeline.models.strategies import (
    STRATEGIES,
    fit_pca,
    info_nce,
    jaccard_metric_loss,
    label_set_jaccard,
    place_partners,
)
from imagesim_pipeline.storage import open_bucket
from imagesim_pipeline_tests.models.test_smlc import reference_inputs  # noqa: F401 - the shared fixture
from imagesim_pipeline_tests.models.visible_chips import LABELS


def test_label_set_jaccard_and_the_metric_loss():
    y = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 1], [0, 0, 0], [0, 0, 0]])
    J = label_set_jaccard(y)
    assert J[0, 1] == 0.5 and J[0, 2] == 0 and J[0, 0] == 1 and J[3, 4] == 1  # two empty sets: identical
    # embeddings whose cosine is the Jaccard have no loss; the same embeddings shuffled have some
    e = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    yy = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 1, 0]])
    assert jaccard_metric_loss(e, yy) < jaccard_metric_loss(e[[1, 0, 2]], yy) + 1e-6
    assert float(jaccard_metric_loss(torch.eye(3), torch.eye(3))) == pytest.approx(0.0)


def test_info_nce_prefers_aligned_pairs():
    torch.manual_seed(0)
    a = torch.randn(16, 8)
    assert info_nce(a, a + 0.01 * torch.randn(16, 8), 0.1) < info_nce(a, a[torch.randperm(16)], 0.1)


def test_place_partners_are_the_other_acquisition_and_the_neighbours():
    cell = ArdCell.parse("Z35-013133111113")
    x, y = next(iter(cell.children(17))).tile
    a = ArdCell.from_tile(35, x, y, 17).id
    b = ArdCell.from_tile(35, x + 1, y + 1, 17).id  # diagonal neighbour
    far = ArdCell.from_tile(35, x + 3, y, 17).id
    chips = [f"{a}_CAT1.jpg", f"{a}_CAT2.jpg", f"{b}_CAT1.jpg", f"{far}_CAT1.jpg"]
    partners = place_partners(chips, radius=1)
    assert sorted(partners[0].tolist()) == [1, 2] and sorted(partners[2].tolist()) == [0, 1]
    assert partners[3].tolist() == [3]  # alone: itself
    assert sorted(place_partners(chips, radius=0)[0].tolist()) == [1]


def test_fit_pca_gives_orthonormal_axes_of_the_largest_variance():
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.standard_normal((200, 6)) * [10, 5, 1, 1, 1, 1], dtype=torch.float32)
    mean, comps = fit_pca(x, 2)
    assert comps.shape == (6, 2)
    assert torch.allclose(comps.T @ comps, torch.eye(2), atol=1e-5)
    assert abs(float(comps[0, 0])) > 0.99 and abs(float(comps[1, 1])) > 0.99


def test_multiscale_pooling_adds_a_gem_pool_of_an_earlier_stage():
    backbone = build_backbone("efficientnet_lite0", "random").eval()
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        plain = pooled_features(backbone, "efficientnet_lite0", images, "avg")
        multi, maps = forward_with_maps(backbone, "efficientnet_lite0", images, "multiscale")
    assert multi.shape == (2, feature_width("efficientnet_lite0", "multiscale")) == (2, 1280 + 192)
    assert torch.allclose(multi[:, :1280], plain, atol=1e-5)  # the backbone's own pool comes first
    assert set(maps) == {"features_8", "features_16"}  # change scoring's maps are unchanged
    with pytest.raises(ValueError, match="unknown pooling"):
        feature_width("efficientnet_lite0", "max")


def test_the_label_free_embedding_never_sees_a_label():
    model = SkywayMultiLabelClassifier(labels=LABELS, weights="random", strategy="label-free").train()
    x, y = torch.randn(8, 1280), torch.randint(0, 2, (8, 3)).float()
    model._step((x, y), "train").backward()  # no partners: classification loss only
    assert all(p.grad is None for p in model.embedder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.head.parameters())
    model.zero_grad()
    model._step((x, y, x + 0.1 * torch.randn_like(x)), "train").backward()
    assert all(p.grad is not None for p in model.embedder.parameters())
    # its embedding is the embedder's, not the classifier's hidden layer
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(x)[1], model.embedder(x))


def test_an_unknown_strategy_and_an_image_path_descriptor_are_refused(reference_inputs, tmp_path, monkeypatch):
    from imagesim_pipeline.models.training import TrainingSetupError, check_setup

    with pytest.raises(ValueError, match="unknown embedding strategy"):
        SkywayMultiLabelClassifier(labels=LABELS, weights="random", strategy="vibes")
    chips, csv = reference_inputs
    monkeypatch.setenv("IMAGESIM_BUCKET", str(tmp_path / "bucket"))
    data = SmlcDataModule(chip_dir=str(chips), labels_csv=str(csv), input_size=64, num_workers=0,
                          cache_features=False, strategy="descriptor", weights="random")
    model = SkywayMultiLabelClassifier(labels=LABELS, weights="random", strategy="descriptor")
    with pytest.raises(TrainingSetupError, match="cached backbone features"):
        check_setup(model, data)
    with pytest.raises(TrainingSetupError, match="strategy"):
        check_setup(SkywayMultiLabelClassifier(labels=LABELS, weights="random"), data)


@pytest.mark.parametrize("strategy", [s for s in STRATEGIES if s != "classifier"])
def test_each_strategy_trains_exports_and_gets_its_own_version(strategy, reference_inputs, tmp_path, monkeypatch):
    from imagesim_pipeline.models.export import read_metadata, session
    from imagesim_pipeline.models.registry import model_key
    from imagesim_pipeline.models.training import (
        Benchmark,
        export_and_publish,
        make_trainer,
        model_version,
        train_and_stage,
    )

    chips, csv = reference_inputs
    monkeypatch.setenv("IMAGESIM_BUCKET", str(tmp_path / "bucket"))
    torch.manual_seed(0)
    pooling = "multiscale" if strategy == "metric" else "avg"
    data = SmlcDataModule(chip_dir=str(chips), labels_csv=str(csv), input_size=64, batch_size=32, num_workers=0,
                          pooling=pooling, strategy=strategy)
    label_weight = 3.0 if strategy == "metric" else 0.0  # the recommended metric embedding carries the labels
    model = SkywayMultiLabelClassifier(labels=data.labels, pooling=pooling, strategy=strategy, pca_dim=16,
                                       label_weight=label_weight)
    classifier = SkywayMultiLabelClassifier(labels=data.labels, pooling=pooling)
    trainer_settings = {"max_epochs": 4}
    version = model_version(model, data, trainer_settings)
    assert version != model_version(classifier, data, trainer_settings)  # never the classifier's embeddings
    if label_weight:
        without = SkywayMultiLabelClassifier(labels=data.labels, pooling=pooling, strategy=strategy)
        assert version != model_version(without, data, trainer_settings)
    run_dir = tmp_path / "runs" / version
    bucket = open_bucket(tmp_path / "bucket")
    outcome = train_and_stage(model, data, make_trainer(run_dir, max_epochs=4, accelerator="cpu"), bucket, run_dir,
                              "smlc", version, progress=lambda m: None)
    assert outcome.metrics.training.strategy == strategy
    loose = Benchmark(max_val_loss=10.0, min_val_accuracy=0.0, min_test_f2=0.0)
    done = export_and_publish(bucket, "smlc", version, loose, progress=lambda m: None)
    assert done.published and done.parity.max_abs < 1e-3
    width = feature_width("efficientnet_lite0", pooling)
    with bucket.local_copy(model_key("smlc", version, "model.onnx")) as path:
        meta = read_metadata(path)
        assert meta["strategy"] == strategy and meta["pooling"] == pooling and meta["label_weight"] == label_weight
        images = np.random.default_rng(0).random((3, 3, 64, 64), np.float32)
        logits, embedding, *_ = session(path).run(None, {"input": images})
    own = 16 if strategy == "descriptor" else width // 4
    assert embedding.shape[1] == meta["embedding_dim"] == own + (len(data.labels) if label_weight else 0)
    if label_weight:  # the unit embedding, then the unit label probabilities less 0.5 at the weight
        assert np.allclose(np.linalg.norm(embedding[:, :own], axis=1), 1, atol=1e-4)
        centred = 1 / (1 + np.exp(-logits)) - 0.5
        want = label_weight * centred / np.linalg.norm(centred, axis=1, keepdims=True)
        assert np.allclose(embedding[:, own:], want, atol=1e-4)
    if strategy == "descriptor":  # the PCA was fitted on the training chips' features and travels in the checkpoint
        comps = model.pca_components
        assert torch.allclose(comps.T @ comps, torch.eye(16), atol=1e-4)
        features = data.split_features("train")[0]
        assert torch.allclose(model.cpu().eval()(features[:4])[1], (features[:4] - model.pca_mean) @ comps, atol=1e-5)


def test_the_feature_cache_runs_the_backbone_through_onnxruntime_as_torch_does():
    from imagesim_pipeline.models.features import d4_views, onnx_extractor

    backbone = build_backbone("efficientnet_lite0", "random").eval()
    extract = onnx_extractor(backbone, "efficientnet_lite0", "multiscale", 64)
    images = torch.rand(3, 3, 64, 64)
    with torch.inference_mode():
        for view in (images, d4_views(images)[5]):  # a rotated view is a strided tensor
            want = pooled_features(backbone, "efficientnet_lite0", view, "multiscale")
            got = extract(view)
            assert got.shape == want.shape == (3, 1472)
            assert float((got - want).abs().max()) <= 1e-4 * max(1.0, float(want.abs().max()))


def test_the_label_free_embedding_never_carries_labels():
    """label_weight appends the classifier's probabilities, which learn from labels: the label-free strategy
    exports its own embedding alone, whatever the setting says."""
    import torch.nn.functional as F

    width = feature_width("efficientnet_lite0", "avg")
    free = SkywayMultiLabelClassifier(labels=LABELS, weights="random", strategy="label-free", label_weight=2.0)
    labelled = SkywayMultiLabelClassifier(labels=LABELS, weights="random", strategy="metric", label_weight=2.0)
    assert free.label_weight == 0.0 and free.embedding_dim == width // 4
    assert labelled.label_weight == 2.0 and labelled.embedding_dim == width // 4 + len(LABELS)
    features = torch.randn(4, width)
    free.eval(), labelled.eval()
    with torch.no_grad():
        logits, embedding = free(features)
        assert torch.equal(free.search_embedding(logits, embedding), embedding)
        logits, embedding = labelled(features)
        combined = labelled.search_embedding(logits, embedding)
    assert torch.allclose(combined[:, :width // 4], F.normalize(embedding, dim=1), atol=1e-6)
    assert torch.allclose(combined[:, width // 4:].norm(dim=1), torch.full((4,), 2.0), atol=1e-5)
    with pytest.raises(ValueError, match="label_weight"):
        SkywayMultiLabelClassifier(labels=LABELS, weights="random", label_weight=-1.0)

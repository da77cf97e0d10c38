"""Train and stage the SMLC; export it to ONNX and publish it (immutable) once its checks pass.

The same two steps serve the command line (:mod:`imagesim_pipeline.models.train_model`) and the
Dagster assets ``smlc_model`` and ``onnx_model``:

1. :func:`train_and_stage` fits the model (resuming a killed run from its last checkpoint),
   picks per-label F2-optimal thresholds on val, scores val and test (and the baselines, in the
   same run), and stages the checkpoint, ``metrics.json`` and the model card under
   ``models/<name>/_staging/<version>/``; ``trained.json`` then names the version.
2. :func:`export_and_publish` exports ``model.onnx``, checks it against torch on real chips, and
   when every check passes publishes the version (``models/<name>/<version>/``, immutable, its
   manifest written last) and moves ``latest.json`` to it.

The version id is the hash of the settings (:func:`model_version`); a run whose settings match a
published version is refused before training (``registry.next_version``) unless asked for
another (``force_new``), which publishes as ``<id>-2``, ``<id>-3``...
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from imagesim_pipeline.errors import ImagesimError
from imagesim_pipeline.models.data import ChipImages, SmlcDataModule, collate_skipping
from imagesim_pipeline.models.export import ExportError, Parity, check_parity, export_onnx
from imagesim_pipeline.models.features import keep_freed_memory
from imagesim_pipeline.models.registry import (
    CARD,
    CHECKPOINT,
    DEFAULT_NAME,
    METRICS,
    ONNX,
    get_pointer,
    is_published,
    model_key,
    point_latest_at_newest,
    publish,
    read_metrics,
    set_pointer,
    staging_key,
    verify,
)
from imagesim_pipeline.models.report import baselines, evaluate, model_card, report_plots
from imagesim_pipeline.models.smlc import SkywayMultiLabelClassifier
from imagesim_pipeline.models.strategies import NEEDS_CACHED_FEATURES
from imagesim_pipeline.storage import Bucket


class TrainingSetupError(ImagesimError):
    """The model and data settings of a training run contradict each other."""


def check_setup(model: SkywayMultiLabelClassifier, data: SmlcDataModule) -> None:
    """Refuse settings that would silently train something other than asked."""
    if model.hparams.unfreeze_last_stage and data.hparams.cache_features:
        raise TrainingSetupError(
            "unfreeze_last_stage trains the backbone's last stage, but cache_features feeds the head precomputed "
            "features (the backbone never runs): set cache_features to false (CLI: --data.cache_features false)")
    for setting in ("backbone", "pooling"):
        if data.hparams.cache_features and model.hparams[setting] != data.hparams[setting]:
            raise TrainingSetupError(f"the model's {setting} ({model.hparams[setting]}) differs from the data module's "
                                     f"({data.hparams[setting]}), whose cached features would not fit it")
    if model.hparams.strategy != data.hparams.strategy:
        raise TrainingSetupError(f"the model's strategy ({model.hparams.strategy}) differs from the data module's "
                                 f"({data.hparams.strategy}): link them (the CLI and the asset do)")
    if model.hparams.strategy in NEEDS_CACHED_FEATURES and not data.hparams.cache_features:
        raise TrainingSetupError(f"the {model.hparams.strategy} strategy trains on cached backbone features: set "
                                 "cache_features to true (CLI: --data.cache_features true)")

Progress = Callable[[str], None]


@dataclass
class Benchmark:
    """The reference benchmark and the project's floors, checked before a model is published."""

    max_val_loss: float = 0.3
    min_val_accuracy: float = 0.85
    min_test_f2: float = 0.5  # micro F2 at the stored thresholds
    max_onnx_diff: float = 1e-3

    def results(self, metrics: dict[str, Any]) -> dict[str, bool]:
        out = {"reference_benchmark": metrics["val_loss"] < self.max_val_loss
               and metrics["val"]["accuracy"] > self.min_val_accuracy,
               "test_f2_floor": metrics["test_at_thresholds"]["f2_micro"] >= self.min_test_f2}
        if "onnx" in metrics:
            out["onnx_parity"] = metrics["onnx"]["max_abs_diff"] <= self.max_onnx_diff
        return out


@dataclass
class TrainOutcome:
    name: str
    version: str
    metrics: dict[str, Any]
    resumed_from: str | None = None


def model_version(model: SkywayMultiLabelClassifier, data: SmlcDataModule, trainer_settings: dict[str, Any]) -> str:
    """A hash of what decides the trained model: data, hyperparameters, epochs, seed."""
    from imagesim_pipeline.models.backbones import default_weights, weights_fingerprint

    hp = dict(model.hparams)
    hp["weights"] = weights_fingerprint(hp.get("weights") or default_weights(hp["backbone"]))
    data_hp = {k: v for k, v in data.hparams.items() if k not in ("num_workers", "bucket", "weights", "backbone")}
    spec = json.dumps({"dataset": data.dataset_version, "model": hp, "data": data_hp, "trainer": trainer_settings},
                      sort_keys=True, default=str)
    return "v-" + hashlib.sha256(spec.encode()).hexdigest()[:12]


def resumable_checkpoint(run_dir: Path) -> Path | None:
    """The last checkpoint of an unfinished run in ``run_dir`` (a killed run), if any."""
    last = run_dir / "checkpoints" / "last.ckpt"
    return last if last.is_file() and not (run_dir / "finished").exists() else None


@torch.inference_mode()
def predict(model: SkywayMultiLabelClassifier, data: SmlcDataModule, split: str
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(probabilities, logits, targets) of a split, in one process, with the model in eval mode."""
    model.eval()
    logits, targets = [], []
    for batch in data.predict_loader(split):
        if len(batch[1]):
            logits.append(model(batch[0].to(model.device))[0].float().cpu())
            targets.append(batch[1].float())
    n = len(model.labels)
    lg = torch.cat(logits) if logits else torch.zeros(0, n)
    y = torch.cat(targets) if targets else torch.zeros(0, n)
    return torch.sigmoid(lg), lg, y


def evaluate_model(model: SkywayMultiLabelClassifier, data: SmlcDataModule
                   ) -> tuple[dict[str, Any], tuple[torch.Tensor, torch.Tensor]]:
    """Thresholds, val and test figures, val loss, the baselines (on cached features); test predictions."""
    val_p, val_logits, val_y = predict(model, data, "val")
    test_p, _, test_y = predict(model, data, "test")
    figures = evaluate(val_p, val_y, test_p, test_y, model.labels)
    figures["val_loss"] = float(torch.nn.functional.binary_cross_entropy_with_logits(val_logits, val_y)) \
        if len(val_y) else float("nan")
    if data.hparams.cache_features:
        sets = {s: (data._sets[s].features.numpy() if data._sets[s].features.shape[0] > 1
                    else data._sets[s].features[0].numpy(), data._sets[s].targets.numpy())
                for s in ("train", "val", "test")}
        figures["baselines"] = baselines(sets, model.labels)
    return figures, (test_p, test_y)


def train_and_stage(model: SkywayMultiLabelClassifier, data: SmlcDataModule, trainer: L.Trainer, bucket: Bucket,
                    run_dir: Path, name: str = DEFAULT_NAME, version: str = "", settings_id: str = "",
                    progress: Progress = print) -> TrainOutcome | None:
    """Fit (resuming a killed run), evaluate on rank 0, stage checkpoint, metrics, plots and card.

    The files go to ``models/<name>/_staging/<version>/`` (never read by search); ``trained.json``
    then names the version, which :func:`export_and_publish` checks and publishes. Returns None on
    the non-zero ranks of a multi-process run.
    """
    check_setup(model, data)
    keep_freed_memory()  # CPU training reallocates the same buffers every step (bench_model: cached-mallopt)
    version = version or run_dir.name
    resume = resumable_checkpoint(run_dir)
    if resume:
        progress(f"resuming the unfinished run {run_dir} from {resume}")
    else:  # a fresh run: nothing of an earlier finished one may be mistaken for this one's
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        (run_dir / "finished").unlink(missing_ok=True)
    started = time.perf_counter()
    trainer.fit(model, datamodule=data, ckpt_path=str(resume) if resume else None)
    seconds = time.perf_counter() - started
    if not trainer.is_global_zero:
        return None
    (run_dir / "finished").parent.mkdir(parents=True, exist_ok=True)
    (run_dir / "finished").write_text(str(time.time()))
    model = model.cpu()
    progress("evaluating on val (thresholds) and test, with the baselines")
    figures, (test_p, test_y) = evaluate_model(model, data)
    hp = model.hparams
    metrics = {
        "name": name, "version": version, "settings_id": settings_id or version, "labels": model.labels,
        **figures,
        "data": {"dataset_version": data.dataset_version, "input_size": data.prep.size,
                 "chips": {s: len(data._sets[s]) for s in ("train", "val", "test")},
                 "unreadable": data.unreadable_counts(),
                 "feature_cache": data.cache_key or None, "preprocessing": data.prep.to_dict(),
                 "source": data.data.source,
                 "parity_chips": (data.data.splits["test"].chips + data.data.splits["val"].chips)[:16]},
        "training": {"backbone": hp.backbone, "weights": hp.weights or "default",
                     "head": f"{model.feature_dim}→{model.feature_dim // 2}→{model.embedding_dim}→{len(model.labels)}",
                     "unfreeze_last_stage": hp.unfreeze_last_stage, "lr": hp.lr, "eta_min": hp.eta_min,
                     "strategy": hp.strategy, "pooling": hp.pooling, "embedding_dim": model.embedding_dim,
                     "epochs": trainer.current_epoch, "seconds": seconds,
                     "device": f"{trainer.num_devices}x "
                               f"{trainer.accelerator.__class__.__name__.replace('Accelerator', '')}",
                     "cached_features": bool(data.hparams.cache_features), "augmentation": data.hparams.augmentation,
                     "resumed_from": str(resume) if resume else None},
    }
    checkpoint = run_dir / "model.ckpt"
    trainer.save_checkpoint(checkpoint, weights_only=False)
    bucket.delete_prefix(staging_key(name, version, ""))  # an earlier staging of this version is replaced whole
    bucket.upload_file(checkpoint, staging_key(name, version, CHECKPOINT))
    for plot, png in report_plots(metrics, test_p, test_y).items():
        bucket.write_bytes(staging_key(name, version, f"plots/{plot}.png"), png)
    bucket.write_text(staging_key(name, version, CARD), model_card(name, version, metrics))
    bucket.write_text(staging_key(name, version, METRICS), json.dumps(metrics, indent=2))  # last: staging complete
    set_pointer(bucket, name, "trained", version)
    progress(f"staged {bucket.url(staging_key(name, version, ''))} ({CHECKPOINT}, metrics.json, {CARD}); "
             "onnx_model exports, checks and publishes it")
    return TrainOutcome(name, version, metrics, str(resume) if resume else None)


def load_checkpoint(bucket: Bucket, name: str, version: str) -> SkywayMultiLabelClassifier:
    """The checkpoint of a published version (checked against its manifest), else of a staged one."""
    key = model_key(name, version, CHECKPOINT) if is_published(bucket, name, version) \
        else staging_key(name, version, CHECKPOINT)
    if key.startswith(model_key(name, version, "")):
        verify(bucket, name, version)
    with bucket.local_copy(key) as path:
        return SkywayMultiLabelClassifier.load_from_checkpoint(path, map_location="cpu").eval()


def parity_images(metrics: dict[str, Any], count: int = 16) -> torch.Tensor:
    """Real chips of the model's dataset (test split first), preprocessed like training."""
    from imagesim_pipeline.models.data import ChipReader
    from imagesim_pipeline.models.preprocess import Preprocessing

    data = metrics["data"]
    chips = data["parity_chips"][:count]
    reader = ChipReader(data["source"], data["dataset_version"].startswith("csv:"))
    images = ChipImages(chips, np.zeros((len(chips), len(metrics["labels"])), np.uint8), reader,
                        Preprocessing(data["input_size"]))
    batch = collate_skipping([images[i] for i in range(len(images))])[0]
    if not len(batch):
        raise ExportError(f"none of the {len(chips)} parity chips could be read from {data['source']}")
    return batch


def onnx_metadata(metrics: dict[str, Any], model: SkywayMultiLabelClassifier) -> dict[str, Any]:
    """What ``model.onnx`` carries so that an encoder needs nothing else: labels, thresholds, preprocessing..."""
    return {"name": metrics["name"], "version": metrics["version"], "labels": metrics["labels"],
            "thresholds": metrics["thresholds"], "preprocessing": metrics["data"]["preprocessing"],
            "input_size": metrics["data"]["input_size"], "backbone": metrics["training"]["backbone"],
            "strategy": metrics["training"].get("strategy", "classifier"),
            "pooling": metrics["training"].get("pooling", "avg"),
            "embedding_dim": model.embedding_dim, "dataset_version": metrics["data"]["dataset_version"],
            "outputs": ["logits", "embedding", "features_8", "features_16"], "feature_strides": {"features_8": 8,
                                                                                          "features_16": 16}}


@dataclass
class Publication:
    """What :func:`export_and_publish` did: the version's metrics (with ``onnx`` and ``checks``), the parity,
    the checks, and whether the version is published (now or before)."""

    version: str
    metrics: dict[str, Any]
    parity: Parity
    checks: dict[str, bool]
    published: bool
    already: bool = False


def export_and_publish(bucket: Bucket, name: str = DEFAULT_NAME, version: str = "",
                       benchmark: Benchmark | None = None, progress: Progress = print) -> Publication:
    """Export a staged version to ONNX, check it, and publish it (immutable, manifest last) if every check passes.

    Publishing moves ``latest.json`` (what encoders encode); search keeps serving its version until
    ``similarity_index`` has built the new one's index and moves ``serving.json``. A version that is
    already published is left as it is. A version that fails a check stays staged, with its checks
    in its staged ``metrics.json``.
    """
    benchmark = benchmark or Benchmark()
    version = version or get_pointer(bucket, name, "trained")
    if is_published(bucket, name, version):
        metrics = read_metrics(bucket, name, version)
        onnx = metrics["onnx"]
        progress(f"{name}/{version} is already published: nothing to export (published versions are never rewritten)")
        if moved := point_latest_at_newest(bucket, name):
            progress(f"latest.json now names {name}/{moved}, the newest published version")
        return Publication(version, metrics, Parity(onnx["max_abs_logits"], onnx["max_abs_embedding"], onnx["images"],
                                                         onnx.get("max_rel_features", 0.0)),
                           metrics["checks"], published=True, already=True)
    metrics = read_metrics(bucket, name, version)
    model = load_checkpoint(bucket, name, version)
    with tempfile.TemporaryDirectory(prefix="imagesim-onnx-") as tmp:
        path = export_onnx(model, Path(tmp) / ONNX, metrics["data"]["input_size"], onnx_metadata(metrics, model))
        parity = check_parity(model, path, parity_images(metrics))
        onnx_bytes = path.read_bytes()
    metrics["onnx"] = {"max_abs_diff": parity.max_abs, "max_abs_logits": parity.max_abs_logits,
                       "max_abs_embedding": parity.max_abs_embedding, "max_rel_features": parity.max_abs_features,
                       "images": parity.images,
                       "bytes": len(onnx_bytes)}
    checks = benchmark.results(metrics)
    metrics["checks"] = checks
    if not all(checks.values()):  # the export stays beside the staged files, to be looked into
        bucket.write_bytes(staging_key(name, version, ONNX), onnx_bytes)
        bucket.write_text(staging_key(name, version, METRICS), json.dumps(metrics, indent=2))
        progress(f"{name}/{version} not published: failed {', '.join(k for k, ok in checks.items() if not ok)} "
                 f"(staged at {bucket.url(staging_key(name, version, ''))})")
        return Publication(version, metrics, parity, checks, published=False)
    files = {ONNX: onnx_bytes, METRICS: json.dumps(metrics, indent=2).encode(),
             CARD: model_card(name, version, metrics).encode()}
    staged = staging_key(name, version, "")
    for obj in bucket.list(staged):
        relative = obj.key[len(staged):]
        if relative not in files:  # the checkpoint and the plots
            files[relative] = bucket.read_bytes(obj.key)
    publish(bucket, name, version, files, metrics["data"]["dataset_version"], metrics.get("settings_id", version))
    bucket.delete_prefix(staged)
    set_pointer(bucket, name, "latest", version)
    progress(f"published {name}/{version} ({bucket.url(model_key(name, version, ''))}); search serves it once "
             "chip_embeddings and similarity_index have run for it")
    return Publication(version, metrics, parity, checks, published=True)


__all__ = ["Benchmark", "EpochLog", "Publication", "TrainOutcome", "checkpointing", "choose_device", "evaluate_model",
           "export_and_publish", "load_checkpoint", "make_trainer", "model_version", "onnx_metadata", "predict",
           "resumable_checkpoint", "tensorboard", "train_and_stage"]


class EpochLog(L.Callback):
    """One line per epoch (for logs without a progress bar: Dagster, CI)."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        m = trainer.callback_metrics
        fields = [f"{k.split('/')[0]} {k.split('/')[1]} {float(m[k]):.3f}" for k in
                  ("train/loss", "val/loss", "val/accuracy", "val/f2") if k in m]
        self.progress(f"  epoch {trainer.current_epoch + 1}/{trainer.max_epochs}: {', '.join(fields)}")


def checkpointing(run_dir: Path) -> L.pytorch.callbacks.ModelCheckpoint:
    """Keep the last epoch (to resume a killed run) under ``run_dir/checkpoints``."""
    return L.pytorch.callbacks.ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="last", save_top_k=1,
                                               enable_version_counter=False)


def tensorboard(run_dir: Path) -> L.pytorch.loggers.TensorBoardLogger:
    return L.pytorch.loggers.TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version="")


def choose_device(accelerator: str = "auto", devices: int | str = "auto") -> tuple[str, int | str, str]:
    """The Lightning accelerator and devices to train with, and a line saying what was chosen.

    ``auto`` trains on the CUDA GPUs there are, else on the CPU (and says so). Asking for ``gpu``/``cuda``
    where there is none, or for more GPUs than there are, fails with what to do instead.
    """
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    wanted = accelerator.lower()
    if wanted in ("gpu", "cuda") and not gpus:
        raise TrainingSetupError(
            f"accelerator {accelerator!r} asks for a GPU but this machine has none (torch.cuda.is_available() is "
            "False): run trainer_job on the trainer profile (IMAGESIM_DEPLOYMENT=aws puts it on the GPU capacity "
            "provider), or set accelerator to 'auto' or 'cpu'")
    if wanted in ("gpu", "cuda", "auto") and gpus:
        if isinstance(devices, int) and devices > gpus:
            raise TrainingSetupError(f"devices={devices} but this machine has {gpus} GPU(s): use devices='auto' "
                                     f"or at most {gpus}")
        names = ", ".join(sorted({torch.cuda.get_device_name(i) for i in range(gpus)}))
        used = gpus if devices in ("auto", -1) else devices
        return "gpu", devices, f"training on {used} of {gpus} CUDA GPU(s) ({names})"
    if wanted == "auto":
        return "cpu", "auto", ("no CUDA GPU on this machine: training on the CPU, which is slower (the trainer "
                               "profile has 4 GPUs)")
    return accelerator, devices, f"training with accelerator {accelerator!r}"


def make_trainer(run_dir: Path, max_epochs: int = 40, accelerator: str = "auto", devices: int | str = "auto",
                 strategy: str = "auto", precision: str | None = None, progress: Progress | None = None,
                 **kwargs: Any) -> L.Trainer:
    """A Trainer that checkpoints and logs to TensorBoard under ``run_dir`` (Dagster's and the tests')."""
    callbacks: list[L.Callback] = [checkpointing(run_dir)]
    if progress:
        callbacks.append(EpochLog(progress))
    return L.Trainer(max_epochs=max_epochs, accelerator=accelerator, devices=devices, strategy=strategy,
                     precision=precision, default_root_dir=str(run_dir), logger=tensorboard(run_dir),
                     callbacks=callbacks, enable_progress_bar=progress is None, enable_model_summary=False,
                     num_sanity_val_steps=0, log_every_n_steps=10, **kwargs)

"""Train and stage the SMLC; export it to ONNX and publish it (immutable) once its checks pass.

The same two steps serve the command line (:mod:`imagesim_pipeline.models.train_model`) and the
Dagster assets ``smlc_model`` and ``onnx_model`` (both train through :func:`train_model`, which picks
the version and the run folder):

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import lightning as L
import numpy as np
import torch

from imagesim_pipeline.errors import ImagesimError
from imagesim_pipeline.models.data import SmlcDataModule
from imagesim_pipeline.models.datasets import ChipImages, ChipReader, collate_skipping
from imagesim_pipeline.models.export import ExportError, Parity, check_parity, export_onnx
from imagesim_pipeline.models.features import keep_freed_memory
from imagesim_pipeline.models.metrics_record import (
    Benchmark,
    DataInfo,
    Evaluation,
    ModelMetrics,
    OnnxInfo,
    TrainingInfo,
)
from imagesim_pipeline.models.registry import (
    CARD,
    CHECKPOINT,
    DEFAULT_NAME,
    METRICS,
    ONNX,
    AlreadyPublishedError,
    get_pointer,
    is_published,
    model_key,
    next_version,
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

if TYPE_CHECKING:
    from lightning.fabric.plugins.precision.precision import _PRECISION_INPUT


class TrainingSetupError(ImagesimError):
    """The model and data settings of a training run contradict each other."""


def check_setup(model: SkywayMultiLabelClassifier, data: SmlcDataModule) -> None:
    """Refuse settings that would silently train something other than asked."""
    hp, data_hp = model.settings, data.settings
    if hp.unfreeze_last_stage and data_hp.cache_features:
        raise TrainingSetupError(
            "unfreeze_last_stage trains the backbone's last stage, but cache_features feeds the head precomputed "
            "features (the backbone never runs): set cache_features to false (CLI: --data.cache_features false)")
    for setting in ("backbone", "pooling"):
        ours, theirs = getattr(hp, setting), getattr(data_hp, setting)
        if data_hp.cache_features and ours != theirs:
            raise TrainingSetupError(f"the model's {setting} ({ours}) differs from the data module's "
                                     f"({theirs}), whose cached features would not fit it")
    if hp.strategy != data_hp.strategy:
        raise TrainingSetupError(f"the model's strategy ({hp.strategy}) differs from the data module's "
                                 f"({data_hp.strategy}): link them (the CLI and the asset do)")
    if hp.strategy in NEEDS_CACHED_FEATURES and not data_hp.cache_features:
        raise TrainingSetupError(f"the {hp.strategy} strategy trains on cached backbone features: set "
                                 "cache_features to true (CLI: --data.cache_features true)")


Progress = Callable[[str], None]
TrainerFactory = Callable[[Path], L.Trainer]  # a run folder -> the Trainer that checkpoints and logs there


@dataclass
class TrainOutcome:
    """What a training run gave: the version, its metrics, where it ran; or the published version it matched."""

    name: str
    version: str
    metrics: ModelMetrics
    run_dir: Path  # the run's checkpoints and TensorBoard logs
    already_published: bool = False
    note: str = ""  # why nothing was trained, when nothing was

    @property
    def resumed_from(self) -> str | None:
        """The checkpoint a killed run resumed from, if it did."""
        return self.metrics.training.resumed_from

    @property
    def checks(self) -> dict[str, bool]:
        """The training checks: the reference benchmark on val, and the baselines of the same run beaten."""
        return {"reference_benchmark": Benchmark().reference_benchmark(self.metrics),
                "beats_baselines": self.metrics.beats_baselines}


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


@dataclass
class Figures:
    """A trained model's figures: thresholds, val and test, val loss, the baselines; the test predictions."""

    evaluation: Evaluation
    val_loss: float
    baselines: dict[str, Evaluation] = field(default_factory=dict)  # only with cached features
    test_probs: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    test_targets: torch.Tensor = field(default_factory=lambda: torch.zeros(0))


def evaluate_model(model: SkywayMultiLabelClassifier, data: SmlcDataModule) -> Figures:
    """Thresholds, val and test figures, val loss, the baselines (on cached features); test predictions."""
    val_p, val_logits, val_y = predict(model, data, "val")
    test_p, _, test_y = predict(model, data, "test")
    val_loss = float(torch.nn.functional.binary_cross_entropy_with_logits(val_logits, val_y)) \
        if len(val_y) else float("nan")
    figures = Figures(evaluate(val_p, val_y, test_p, test_y, model.labels), val_loss, {}, test_p, test_y)
    if data.settings.cache_features:
        sets = {}
        for split in ("train", "val", "test"):
            features, targets = data.split_features(split)
            sets[split] = (features.numpy(), targets.numpy())
        figures.baselines = baselines(sets, model.labels)
    return figures


def _metrics(model: SkywayMultiLabelClassifier, data: SmlcDataModule, trainer: L.Trainer, figures: Figures,
             name: str, version: str, settings_id: str, seconds: float, resume: Path | None) -> ModelMetrics:
    hp, data_hp, evaluation = model.settings, data.settings, figures.evaluation
    splits = data.data.splits
    extra = {"baselines": figures.baselines} if data_hp.cache_features else {}  # no key without cached features
    return ModelMetrics(
        name=name, version=version, settings_id=settings_id or version, labels=model.labels,
        thresholds=evaluation.thresholds, val=evaluation.val, test=evaluation.test,
        test_at_thresholds=evaluation.test_at_thresholds, val_loss=figures.val_loss, **extra,
        data=DataInfo(dataset_version=data.dataset_version, input_size=data.prep.size, chips=data.chip_counts(),
                      unreadable=data.unreadable_counts(), feature_cache=data.cache_key or None,
                      preprocessing=data.prep.to_dict(), source=data.data.source,
                      parity_chips=(splits["test"].chips + splits["val"].chips)[:16]),
        training=TrainingInfo(
            backbone=hp.backbone, weights=hp.weights or "default",
            head=f"{model.feature_dim}→{model.feature_dim // 2}→{model.feature_dim // 4}→{len(model.labels)}",
            unfreeze_last_stage=hp.unfreeze_last_stage, lr=hp.lr, eta_min=hp.eta_min, strategy=hp.strategy,
            pooling=hp.pooling, embedding_dim=model.embedding_dim, label_weight=model.label_weight,
            epochs=trainer.current_epoch, seconds=seconds,
            device=f"{trainer.num_devices}x {trainer.accelerator.__class__.__name__.replace('Accelerator', '')}",
            cached_features=bool(data_hp.cache_features), augmentation=data_hp.augmentation,
            resumed_from=str(resume) if resume else None))


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
    figures = evaluate_model(model, data)
    metrics = _metrics(model, data, trainer, figures, name, version, settings_id, seconds, resume)
    checkpoint = run_dir / "model.ckpt"
    trainer.save_checkpoint(checkpoint, weights_only=False)
    bucket.delete_prefix(staging_key(name, version, ""))  # an earlier staging of this version is replaced whole
    bucket.upload_file(checkpoint, staging_key(name, version, CHECKPOINT))
    for plot, png in report_plots(metrics, figures.test_probs, figures.test_targets).items():
        bucket.write_bytes(staging_key(name, version, f"plots/{plot}.png"), png)
    bucket.write_text(staging_key(name, version, CARD), model_card(name, version, metrics))
    bucket.write_text(staging_key(name, version, METRICS), metrics.to_json())  # last: staging complete
    set_pointer(bucket, name, "trained", version)
    progress(f"staged {bucket.url(staging_key(name, version, ''))} ({CHECKPOINT}, metrics.json, {CARD}); "
             "onnx_model exports, checks and publishes it")
    return TrainOutcome(name, version, metrics, run_dir)


def train_model(model: SkywayMultiLabelClassifier, data: SmlcDataModule, bucket: Bucket, trainer: TrainerFactory,
                runs: Path, name: str = DEFAULT_NAME, max_epochs: int | None = 40, seed: int = 0, version: str = "",
                force_new: bool = False, progress: Progress = print) -> TrainOutcome | None:
    """One training run, as the command line and ``smlc_model`` make it: pick the version, train and stage it.

    The version is ``version`` or the hash of the settings (:func:`model_version`). Settings that
    match a published version train nothing (unless ``force_new``: then ``<id>-2``...): the outcome
    names that version (``already_published``, ``note`` says why) and ``trained.json`` moves to it, so
    that the export step finds it published. Otherwise the run goes to ``runs/<name>/<version>/``
    (a killed run resumes from there) with the Trainer ``trainer`` makes for that folder. None on
    the non-zero ranks of a multi-process run.
    """
    settings_id = version or model_version(model, data, {"max_epochs": max_epochs, "seed": seed})
    try:
        version = next_version(bucket, name, settings_id, force_new)
    except AlreadyPublishedError as exc:  # nothing to do: the published version stays as it is
        set_pointer(bucket, name, "trained", settings_id)
        return TrainOutcome(name, settings_id, read_metrics(bucket, name, settings_id), runs / name / settings_id,
                            already_published=True, note=str(exc))
    run_dir = runs / name / version
    return train_and_stage(model, data, trainer(run_dir), bucket, run_dir, name, version, settings_id, progress)


def load_checkpoint(bucket: Bucket, name: str, version: str) -> SkywayMultiLabelClassifier:
    """The checkpoint of a published version (checked against its manifest), else of a staged one."""
    key = model_key(name, version, CHECKPOINT) if is_published(bucket, name, version) \
        else staging_key(name, version, CHECKPOINT)
    if key.startswith(model_key(name, version, "")):
        verify(bucket, name, version)
    with bucket.local_copy(key) as path:
        return SkywayMultiLabelClassifier.load_from_checkpoint(path, map_location="cpu").eval()


def parity_images(metrics: ModelMetrics, count: int = 16) -> torch.Tensor:
    """Real chips of the model's dataset (test split first), preprocessed like training."""
    from imagesim_pipeline.models.preprocess import Preprocessing

    data = metrics.data
    chips = data.parity_chips[:count]
    reader = ChipReader(data.source, data.dataset_version.startswith("csv:"))
    images = ChipImages(chips, np.zeros((len(chips), len(metrics.labels)), np.uint8), reader,
                        Preprocessing(data.input_size))
    batch = collate_skipping([images[i] for i in range(len(images))])[0]
    if not len(batch):
        raise ExportError(f"none of the {len(chips)} parity chips could be read from {data.source}")
    return batch


def onnx_metadata(metrics: ModelMetrics, model: SkywayMultiLabelClassifier) -> dict[str, Any]:
    """What ``model.onnx`` carries so that an encoder needs nothing else: labels, thresholds, preprocessing..."""
    return {"name": metrics.name, "version": metrics.version, "labels": metrics.labels,
            "thresholds": metrics.thresholds, "preprocessing": metrics.data.preprocessing,
            "input_size": metrics.data.input_size, "backbone": metrics.training.backbone,
            "strategy": metrics.training.strategy, "pooling": metrics.training.pooling,
            "label_weight": metrics.training.label_weight,
            "embedding_dim": model.embedding_dim, "dataset_version": metrics.data.dataset_version,
            "outputs": ["logits", "embedding", "features_8", "features_16"], "feature_strides": {"features_8": 8,
                                                                                          "features_16": 16}}


@dataclass
class Publication:
    """What :func:`export_and_publish` did: the version's metrics (with ``onnx`` and ``checks``), the parity,
    the checks, and whether the version is published (now or before)."""

    version: str
    metrics: ModelMetrics
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
    metrics = read_metrics(bucket, name, version)
    if is_published(bucket, name, version):
        progress(f"{name}/{version} is already published: nothing to export (published versions are never rewritten)")
        if moved := point_latest_at_newest(bucket, name):
            progress(f"latest.json now names {name}/{moved}, the newest published version")
        if metrics.onnx is None:
            raise ExportError(f"{name}/{version} is published but its metrics.json has no onnx figures")
        onnx = metrics.onnx
        return Publication(version, metrics, Parity(onnx.max_abs_logits, onnx.max_abs_embedding, onnx.images,
                                                    onnx.max_rel_features),
                           metrics.checks or {}, published=True, already=True)
    model = load_checkpoint(bucket, name, version)
    with tempfile.TemporaryDirectory(prefix="imagesim-onnx-") as tmp:
        path = export_onnx(model, Path(tmp) / ONNX, metrics.data.input_size, onnx_metadata(metrics, model))
        parity = check_parity(model, path, parity_images(metrics))
        onnx_bytes = path.read_bytes()
    metrics.onnx = OnnxInfo(max_abs_diff=parity.max_abs, max_abs_logits=parity.max_abs_logits,
                            max_abs_embedding=parity.max_abs_embedding, max_rel_features=parity.max_abs_features,
                            images=parity.images, bytes=len(onnx_bytes))
    checks = benchmark.results(metrics)
    metrics.checks = checks
    if not all(checks.values()):  # the export stays beside the staged files, to be looked into
        bucket.write_bytes(staging_key(name, version, ONNX), onnx_bytes)
        bucket.write_text(staging_key(name, version, METRICS), metrics.to_json())
        progress(f"{name}/{version} not published: failed {', '.join(k for k, ok in checks.items() if not ok)} "
                 f"(staged at {bucket.url(staging_key(name, version, ''))})")
        return Publication(version, metrics, parity, checks, published=False)
    files = {ONNX: onnx_bytes, METRICS: metrics.to_json().encode(),
             CARD: model_card(name, version, metrics).encode()}
    staged = staging_key(name, version, "")
    for obj in bucket.list(staged):
        relative = obj.key[len(staged):]
        if relative not in files:  # the checkpoint and the plots
            files[relative] = bucket.read_bytes(obj.key)
    publish(bucket, name, version, files, metrics.data.dataset_version, metrics.settings)
    bucket.delete_prefix(staged)
    set_pointer(bucket, name, "latest", version)
    progress(f"published {name}/{version} ({bucket.url(model_key(name, version, ''))}); search serves it once "
             "chip_embeddings and similarity_index have run for it")
    return Publication(version, metrics, parity, checks, published=True)


__all__ = ["Benchmark", "EpochLog", "Figures", "Publication", "TrainOutcome", "TrainerFactory", "TrainingSetupError",
           "check_setup", "checkpointing", "choose_device", "evaluate_model", "export_and_publish", "load_checkpoint",
           "make_trainer", "model_version", "onnx_metadata", "parity_images", "predict", "resumable_checkpoint",
           "tensorboard", "train_and_stage", "train_model"]


class EpochLog(L.Callback):
    """One line per epoch (for logs without a progress bar: Dagster, CI)."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Log the epoch's losses, accuracy and F2."""
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
    """TensorBoard logs under ``run_dir/tensorboard``."""
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
                     precision=cast("_PRECISION_INPUT | None", precision),  # the Trainer checks the value
                     default_root_dir=str(run_dir), logger=tensorboard(run_dir),
                     callbacks=callbacks, enable_progress_bar=progress is None, enable_model_summary=False,
                     num_sanity_val_steps=0, log_every_n_steps=10, **kwargs)

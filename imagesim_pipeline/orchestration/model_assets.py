"""``smlc_model`` (train, evaluate, publish) and ``onnx_model`` (export, check, publish): training on the
trainer profile, export on the datamaker profile."""

from pathlib import Path

from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    Config,
    MaterializeResult,
    MetadataValue,
    asset,
)
from pydantic import Field

from imagesim_pipeline.models.recommended import RECOMMENDED
from imagesim_pipeline.orchestration.compute import DATAMAKER_TAGS, TRAINER_POOL, TRAINER_TAGS, ComputeResource
from imagesim_pipeline.orchestration.failures import TRANSIENT_RETRY, step_errors
from imagesim_pipeline.orchestration.label_assets import training_dataset
from imagesim_pipeline.orchestration.metadata import plot, rounded
from imagesim_pipeline.orchestration.resources import BucketResource


class SmlcTrainingConfig(Config):
    """smlc_model's settings: data, model, training and compute."""

    name: str = Field(default="smlc", description="model name: models/<name>/ in the bucket")
    dataset_version: str = Field(default="", description="dataset version (default: the latest)")
    backbone: str = Field(default="efficientnet_lite0", description="efficientnet_lite0, efficientnet_lite1 or "
                          "efficientnet_lite2 (offline ImageNet weights), or resnet50")
    weights: str = Field(default="", description="backbone weights file or URL (default: the backbone's own)")
    unfreeze_last_stage: bool = Field(default=False, description="fine-tune the backbone's last stage (images)")
    cache_features: bool = Field(default=True, description="train the head on cached backbone features")
    augmentation: str = Field(default="none", description="cached views per training chip: none or d4")
    input_size: int = Field(default=RECOMMENDED.input_size, description="side of the model input in pixels")
    pooling: str = Field(default=RECOMMENDED.pooling, description="backbone pooling: avg, or multiscale (plus a GeM "
                                                                  "pool of an earlier stage)")
    embedding_strategy: str = Field(default=RECOMMENDED.strategy, description="what search indexes: classifier, "
                                                                              "metric, label-free or descriptor")
    label_weight: float = Field(default=RECOMMENDED.label_weight, description="weight of the label probabilities "
                                "appended to the embedding search indexes (0: the embedding alone)")
    batch_size: int = 64
    max_epochs: int = 40
    lr: float = 1e-3
    eta_min: float = 1e-5
    weight_decay: float = Field(default=1e-3, description="Adam weight decay (L2) of the head")
    seed: int = 0
    accelerator: str = Field(default="auto", description="Lightning accelerator: auto, cpu, gpu")
    devices: str = Field(default="auto", description="Lightning devices: auto, a count, or -1 for all")
    strategy: str = Field(default="auto", description="Lightning strategy: auto, ddp, ...")
    precision: str = Field(default="32-true", description="32-true, bf16-mixed, 16-mixed")
    num_workers: int = Field(default=-1, description="data loader processes (-1: one less than the cores, max 4)")
    force_new: bool = Field(default=False, description="train another version although these settings are already "
                                                       "published (published versions are never rewritten)")


@asset(
    deps=[training_dataset],
    group_name="model",
    kinds={"pytorch"},
    op_tags=TRAINER_TAGS,
    pool=TRAINER_POOL,
    retry_policy=TRANSIENT_RETRY,
    check_specs=[
        AssetCheckSpec("reference_benchmark", asset="smlc_model",
                       description="The reference's benchmark on val: loss < 0.3 and accuracy > 0.85"),
        AssetCheckSpec("beats_baselines", asset="smlc_model",
                       description="Test micro F2 and mAP above the train-frequency and logistic-regression "
                                   "baselines computed in the same run"),
    ],
    description="The SMLC trained on the latest training dataset (frozen ImageNet backbone, MLP head): "
                "Lightning checkpoint, `metrics.json` and a model card staged under "
                "`models/<name>/_staging/<version>/` for onnx_model. Settings that match a published version "
                "train nothing (force_new trains another).",
)
def smlc_model(context: AssetExecutionContext, config: SmlcTrainingConfig, bucket: BucketResource,
               compute: ComputeResource) -> MaterializeResult:
    """Train and stage the SMLC (:func:`~imagesim_pipeline.models.training.train_model`); its figures and checks."""
    import lightning as L

    from imagesim_pipeline.models.data import SmlcDataModule
    from imagesim_pipeline.models.registry import CARD, model_key, staging_key
    from imagesim_pipeline.models.report import per_label_table, quality_table
    from imagesim_pipeline.models.smlc import SkywayMultiLabelClassifier
    from imagesim_pipeline.models.training import make_trainer, train_model
    from imagesim_pipeline.settings import runs_dir

    store = bucket.get_bucket()
    L.seed_everything(config.seed, verbose=False)
    with step_errors("training failed: "):
        devices = int(config.devices) if config.devices.lstrip("-").isdigit() else config.devices
        accelerator, devices, device_note = compute.training_device(config.accelerator, devices)
        data = SmlcDataModule(bucket=store.uri, dataset_version=config.dataset_version, input_size=config.input_size,
                              batch_size=config.batch_size, num_workers=config.num_workers,
                              cache_features=config.cache_features, augmentation=config.augmentation,
                              backbone=config.backbone, weights=config.weights, pooling=config.pooling,
                              strategy=config.embedding_strategy)
        data.progress = context.log.info
        model = SkywayMultiLabelClassifier(labels=data.labels, backbone=config.backbone, weights=config.weights,
                                           unfreeze_last_stage=config.unfreeze_last_stage, lr=config.lr,
                                           eta_min=config.eta_min, weight_decay=config.weight_decay,
                                           pooling=config.pooling, strategy=config.embedding_strategy,
                                           label_weight=config.label_weight)

        def trainer(run_dir: Path) -> L.Trainer:
            if accelerator == "cpu" and config.accelerator == "auto":
                context.log.warning(device_note)  # a CPU-only trainer says so, and proceeds
            else:
                context.log.info(device_note)
            return make_trainer(run_dir, config.max_epochs, accelerator, devices, config.strategy, config.precision,
                                progress=context.log.info)

        outcome = train_model(model, data, store, trainer, Path(runs_dir()), config.name, config.max_epochs,
                              config.seed, force_new=config.force_new, progress=context.log.info)
    if outcome is None:  # pragma: no cover - Dagster runs the asset in one process
        raise RuntimeError("smlc_model trains in a single process")
    if outcome.note:
        context.log.info(outcome.note)  # re-materializing with the same settings is a no-op
    metrics, version, checks = outcome.metrics, outcome.version, outcome.checks
    key = model_key if outcome.already_published else staging_key
    test, at_thresholds = metrics.test, metrics.test_at_thresholds
    plots = {}
    for name in ("f2_per_label", "pr_curves"):
        plots[f"plot_{name}"] = plot(store.read_bytes(key(config.name, version, f"plots/{name}.png")), name)
    return MaterializeResult(
        metadata=rounded({
            "version": version,
            "already_published": outcome.already_published,
            "dataset_version": metrics.data.dataset_version,
            "embedding_strategy": metrics.training.strategy,
            "pooling": metrics.training.pooling,
            "label_weight": metrics.training.label_weight,
            "input_size": metrics.data.input_size,
            "val_loss": metrics.val_loss,
            "val_accuracy": metrics.val.accuracy,
            "test_f2_micro@0.5": test.f2_micro,
            "test_f2_macro@0.5": test.f2_macro,
            "test_f2_micro@thresholds": at_thresholds.f2_micro,
            "test_f2_macro@thresholds": at_thresholds.f2_macro,
            "test_map": test.map,
            "quality_vs_baselines": MetadataValue.md(quality_table(metrics)),
            "per_label": MetadataValue.md(per_label_table(metrics)),
            "thresholds": MetadataValue.json(rounded(dict(zip(metrics.labels, metrics.thresholds, strict=False)))),
            "chips": MetadataValue.json(metrics.data.chips),
            "training_seconds": round(metrics.training.seconds, 1),
            "resumed_from": metrics.training.resumed_from or "none",
            "model_card": MetadataValue.url(store.url(key(config.name, version, CARD))),
            "tensorboard": MetadataValue.path(str(outcome.run_dir / "tensorboard")),
            **plots,
        }),
        check_results=[
            AssetCheckResult(check_name="reference_benchmark", passed=checks["reference_benchmark"], metadata=rounded({
                "val_loss": metrics.val_loss, "val_accuracy": metrics.val.accuracy})),
            AssetCheckResult(check_name="beats_baselines", passed=checks["beats_baselines"], metadata={
                baseline: MetadataValue.json(rounded({"f2_micro": b.test_at_thresholds.f2_micro, "map": b.test.map}))
                for baseline, b in metrics.baselines.items()}),
        ],
    )


class OnnxModelConfig(Config):
    """onnx_model's settings: which version, and the checks' floors."""

    name: str = Field(default="smlc", description="model name: models/<name>/ in the bucket")
    version: str = Field(default="", description="model version (default: the newest trained)")
    min_test_f2: float = Field(default=0.5, description="publishing floor: test micro F2 at the stored thresholds")
    max_val_loss: float = Field(default=0.3, description="the reference benchmark: val loss below this")
    min_val_accuracy: float = Field(default=0.85, description="the reference benchmark: val accuracy above this")
    max_onnx_diff: float = Field(default=1e-3, description="largest allowed |onnxruntime - torch| on real chips")


@asset(
    deps=[smlc_model],
    group_name="model",
    kinds={"onnx"},
    op_tags=DATAMAKER_TAGS,  # export and parity checks run on CPU: the GPU machine can scale down
    retry_policy=TRANSIENT_RETRY,
    check_specs=[
        AssetCheckSpec("onnx_parity", asset="onnx_model",
                       description="onnxruntime matches torch on real chips (logits and embedding)"),
        AssetCheckSpec("test_f2_floor", asset="onnx_model",
                       description="Test micro F2 at the stored thresholds is above the configured floor"),
    ],
    description="`model.onnx` (outputs `logits` and `embedding`, dynamic batch, labels/thresholds/"
                "normalisation in its metadata); when its checks pass the version is published, immutable, at "
                "`models/<name>/<version>/` (manifest last) and `models/<name>/latest.json` moves to it. Search "
                "serves it once similarity_index has built its index.",
)
def onnx_model(context: AssetExecutionContext, config: OnnxModelConfig, bucket: BucketResource) -> MaterializeResult:
    """Export, check and publish the trained version (:func:`~imagesim_pipeline.models.training.export_and_publish`)."""
    from imagesim_pipeline.models.registry import ONNX, model_key
    from imagesim_pipeline.models.training import Benchmark, export_and_publish
    from imagesim_pipeline.storage import layout

    store = bucket.get_bucket()
    benchmark = Benchmark(max_val_loss=config.max_val_loss, min_val_accuracy=config.min_val_accuracy,
                          min_test_f2=config.min_test_f2, max_onnx_diff=config.max_onnx_diff)
    with step_errors("ONNX export failed: "):
        done = export_and_publish(store, config.name, config.version, benchmark, progress=context.log.info)
    metrics, parity, checks, version = done.metrics, done.parity, done.checks, done.version
    onnx_bytes = metrics.onnx.bytes if metrics.onnx else 0
    return MaterializeResult(
        metadata=rounded({
            "version": version,
            "onnx": MetadataValue.url(store.url(model_key(config.name, version, ONNX))),
            "bytes": onnx_bytes,
            "max_abs_diff": parity.max_abs,
            "parity_images": parity.images,
            "published": done.published,
            "already_published": done.already,
            "promoted": done.published,  # kept for older sensors' cursors: same meaning as "published"
            "latest": store.url(layout.model_pointer_key(config.name, "latest")),
            "checks": MetadataValue.json(checks),
        }),
        check_results=[
            AssetCheckResult(check_name="onnx_parity", passed=checks["onnx_parity"], metadata=rounded({
                "max_abs_logits": parity.max_abs_logits, "max_abs_embedding": parity.max_abs_embedding,
                "tolerance": config.max_onnx_diff})),
            AssetCheckResult(check_name="test_f2_floor", passed=checks["test_f2_floor"], metadata=rounded({
                "test_f2_micro@thresholds": metrics.test_at_thresholds.f2_micro, "floor": config.min_test_f2})),
        ],
    )


__all__ = ["OnnxModelConfig", "SmlcTrainingConfig", "onnx_model", "smlc_model"]

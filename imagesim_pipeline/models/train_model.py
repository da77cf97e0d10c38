"""Train the SMLC from the command line (the reference's entry point), with Lightning's CLI.

    python -m imagesim_pipeline.models.train_model                 # every default: the latest dataset
    python -m imagesim_pipeline.models.train_model --help          # every model, data and Trainer argument
    python -m imagesim_pipeline.models.train_model --gpus=-1       # all GPUs, DDP (the reference's flag)
    python -m imagesim_pipeline.models.train_model --model.backbone resnet50 --model.weights resnet50.pth \\
        --data.cache_features false --model.unfreeze_last_stage true --trainer.max_epochs 10
    python -m imagesim_pipeline.models.train_model --model.strategy label-free   # or classifier, metric, descriptor

The defaults are the measured choice (``models/recommended.py``): 320 px input, multiscale pooling, the
``metric`` embedding strategy followed by the label probabilities (``--model.label_weight 2``);
``--data.input_size 224 --model.pooling avg --model.strategy classifier --model.label_weight 0`` trains the
reference's SMLC.

It fits the model (a killed run resumes from its last checkpoint: run the same command again),
chooses per-label thresholds on val, scores test with the baselines, stages checkpoint, metrics
and model card, then exports ``model.onnx``, checks it against torch and, when every check
passes, publishes the version under ``models/<name>/<version>/`` (immutable, manifest last) and
points ``models/<name>/latest.json`` at it. Settings that match a published version train
nothing (one line says so); ``--force-new`` trains another version beside it. Logs go to
TensorBoard under the run folder
(``--trainer.logger lightning.pytorch.loggers.WandbLogger`` for Weights & Biases).
"""

from __future__ import annotations

import sys
from pathlib import Path

from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from imagesim_pipeline.models.data import SmlcDataModule
from imagesim_pipeline.models.recommended import RECOMMENDED
from imagesim_pipeline.models.smlc import SkywayMultiLabelClassifier

HELP_DESCRIPTION = (
    "Train the SMLC, export model.onnx and publish it when its checks pass. Besides the arguments below: "
    "--gpus N (the reference's flag: N GPUs with DDP, -1 all, 0 the CPU; mapped onto --trainer.accelerator, "
    "--trainer.devices and --trainer.strategy) and --force-new (train another version of published settings). "
    "Defaults: 320 px input, multiscale pooling, the metric embedding strategy followed by the label probabilities "
    "(label_weight 2; models/recommended.py).")


def map_gpus_flag(argv: list[str]) -> list[str]:
    """``--gpus=N`` (the reference's flag, gone from today's Lightning) as accelerator/devices/strategy."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("--force-new", "--force_new") and (i + 1 == len(argv) or argv[i + 1].lower() not in
                                                      ("true", "false", "1", "0", "yes", "no")):
            out.append("--force_new=true")  # a bare flag, as the one-line refusal says
            i += 1
            continue
        if arg == "--gpus" or arg.startswith("--gpus="):
            value = arg.split("=", 1)[1] if "=" in arg else (argv[i + 1] if i + 1 < len(argv) else "")
            i += 1 if "=" in arg else 2
            try:
                gpus = int(value)
            except ValueError:
                raise SystemExit(f"error: --gpus takes a number of GPUs (-1: all); got {value!r}") from None
            if gpus == 0:
                out += ["--trainer.accelerator=cpu"]
                continue
            out += ["--trainer.accelerator=gpu", f"--trainer.devices={gpus}"]
            if gpus == -1 or gpus > 1:
                out += ["--trainer.strategy=ddp"]
            continue
        out.append(arg)
        i += 1
    return out


class SmlcCLI(LightningCLI):
    """LightningCLI with the data module's labels linked into the model and extra publishing options."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Link the model's settings into the data module and add the publishing options."""
        parser.link_arguments("model.backbone", "data.backbone")
        parser.link_arguments("model.weights", "data.weights")
        parser.link_arguments("model.pooling", "data.pooling")
        parser.link_arguments("model.strategy", "data.strategy")
        # the measured choice (bench_embeddings.py), as smlc_model's config has it
        parser.set_defaults({"data.input_size": RECOMMENDED.input_size, "model.pooling": RECOMMENDED.pooling,
                             "model.strategy": RECOMMENDED.strategy, "model.label_weight": RECOMMENDED.label_weight})
        parser.link_arguments("data.labels", "model.labels", apply_on="instantiate")
        parser.add_argument("--name", default="smlc", help="model name: models/<name>/ in the bucket")
        parser.add_argument("--version", default="", help="model version (default: a hash of data and settings)")
        parser.add_argument("--runs", default="", help="folder of training runs (default: IMAGESIM_RUNS or data/runs)")
        parser.add_argument("--export", type=bool, default=True, help="export ONNX and publish when checks pass")
        parser.add_argument("--force_new", type=bool, default=False,
                            help="train another version although these settings are already published "
                                 "(published versions are never rewritten: it becomes <id>-2, <id>-3...)")
        parser.add_argument("--min_test_f2", type=float, default=0.5,
                            help="publishing floor: test micro F2 at thresholds")


def main(argv: list[str] | None = None) -> int:
    """Train, stage, export and publish from the command line; the exit status (0 published or nothing to do)."""
    from imagesim_pipeline.errors import ImagesimError
    from imagesim_pipeline.models.training import (
        Benchmark,
        checkpointing,
        export_and_publish,
        tensorboard,
        train_model,
    )
    from imagesim_pipeline.settings import runs_dir
    from imagesim_pipeline.storage import open_bucket

    # The mapped flags go back into sys.argv: DDP relaunches this command from it on every rank.
    sys.argv = [sys.argv[0], *map_gpus_flag(list(sys.argv[1:] if argv is None else argv))]
    try:
        cli = SmlcCLI(SkywayMultiLabelClassifier, SmlcDataModule, run=False, seed_everything_default=0,
                      trainer_defaults={"max_epochs": 40, "num_sanity_val_steps": 0, "log_every_n_steps": 10},
                      save_config_kwargs={"overwrite": True},
                      parser_kwargs={"description": HELP_DESCRIPTION})
    except ImagesimError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    config, model, data, trainer = cli.config, cli.model, cli.datamodule, cli.trainer
    if not isinstance(model, SkywayMultiLabelClassifier) or not isinstance(data, SmlcDataModule):
        raise TypeError("SmlcCLI makes an SMLC and its data module")
    data.progress = print
    bucket = open_bucket(data.settings.bucket or None) if not data.settings.chip_dir else open_bucket()

    def run_trainer(run_dir: Path) -> Trainer:
        # Checkpoints and TensorBoard logs live in the run folder, so the same command resumes a killed run.
        trainer.callbacks.append(checkpointing(run_dir))  # type: ignore[attr-defined]  # set by Lightning, undeclared
        if config.trainer.logger in (None, True):
            trainer.loggers = [tensorboard(run_dir)]
        return trainer

    try:
        outcome = train_model(model, data, bucket, run_trainer, Path(config.runs or runs_dir()), config.name,
                              trainer.max_epochs, config.seed_everything, config.version, config.force_new)
        if outcome is None:  # a non-zero rank of a multi-process run
            return 0
        if outcome.already_published:  # nothing to do: the published version stays as it is
            print(outcome.note, file=sys.stderr)
            return 0
        from imagesim_pipeline.models.report import quality_table

        print(quality_table(outcome.metrics))
        if config.export:
            done = export_and_publish(bucket, config.name, outcome.version, Benchmark(min_test_f2=config.min_test_f2))
            print("checks: " + ", ".join(f"{k} {'passed' if ok else 'FAILED'}" for k, ok in done.checks.items()))
            return 0 if done.published else 1
    except ImagesimError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

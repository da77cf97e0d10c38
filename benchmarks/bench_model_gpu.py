"""Benchmark on a CUDA GPU: backbone encoding images/s and SMLC training epoch times, by precision.

Needs a CUDA GPU (it stops with a message without one); run it on the GPU trainer. Data: the
reference's inputs, a chip folder and its ``sparse_label_encodings.csv`` (``--chip-dir``,
``--labels-csv``; any dataset version's chips with its CSV will do), split by spatial blocks as in
training. Every figure sits next to a baseline measured in the same run.

1. Encoding (the feature-cache step, efficientnet_lite0 at 224 px), images/s:
   * model only: a batch of normalised images already on the device, timed after warm-up with
     ``torch.cuda.synchronize``; CPU fp32 on all the machine's cores is the baseline; on CUDA
     fp32 (TF32 off), TF32, bf16 and fp16 autocast (channels-last). Each reduced precision's
     features are compared with CUDA fp32's (max |diff| relative to the feature scale, and the
     smallest cosine similarity);
   * end to end: ``features.encode_images`` (the cache's own code: JPEG decode in ``--workers``
     loader processes, pinned memory, float32 on the GPU) over the chips ``--repeat`` times, against
     the same on the CPU over one pass.
2. Training epochs with Lightning (``accelerator="gpu"``): the full image path (frozen backbone in
   the loop: decode, D4 augmentation, forward) at precision 32-true, bf16-mixed and 16-mixed; the
   last stage unfrozen (bf16-mixed); and the head on cached features, on the GPU and on the CPU.
   The train split is repeated ``--repeat`` times per epoch so an epoch is long enough to time; the
   steady state is the median of the epochs after the first.

Usage: python benchmarks/bench_model_gpu.py --chip-dir DIR --labels-csv CSV [--batch-size 256]
       [--workers 12] [--repeat 8] [--epochs 4] [--json OUT]
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import statistics
import tempfile
import time
import warnings

import torch


def _quiet() -> None:
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _rate(fn, images: int, seconds: float = 3.0) -> float:
    """Images/s of ``fn()`` (one batch of ``images``) over at least ``seconds``, after a warm-up."""
    for _ in range(3):
        fn()
    _sync()
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        fn()
        runs += 1
        _sync()
    return runs * images / (time.perf_counter() - started)


def _decoded_batch(data, prep, n: int) -> torch.Tensor:
    from imagesim_pipeline.models.preprocess import decode, to_input

    reader, chips = data.reader(), data.splits["train"].chips
    return torch.stack([to_input(decode(reader(chips[i % len(chips)])), prep) for i in range(n)])


@torch.inference_mode()
def encoding(data, prep, batch_size: int, workers: int, repeat: int) -> dict:
    from imagesim_pipeline.models.backbones import build_backbone
    from imagesim_pipeline.models.datasets import ChipImages
    from imagesim_pipeline.models.features import encode_images

    out: dict = {}
    batch = _decoded_batch(data, prep, batch_size)
    cpu = build_backbone("efficientnet_lite0").eval()
    torch.set_num_threads(os.cpu_count() or 1)
    out["model_only_cpu_fp32"] = _rate(lambda: cpu(batch), batch_size, 5.0)
    gpu = build_backbone("efficientnet_lite0").eval().cuda()
    x = batch.cuda()
    x_cl = x.contiguous(memory_format=torch.channels_last)
    gpu_cl = build_backbone("efficientnet_lite0").eval().cuda().to(memory_format=torch.channels_last)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    reference = gpu(x).float()
    out["model_only_cuda_fp32"] = _rate(lambda: gpu(x), batch_size)
    out["cuda_fp32_vs_cpu_max_abs"] = float((reference.cpu() - cpu(batch)).abs().max())
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cuda.matmul.allow_tf32 = True
    variants = {"tf32": (gpu, x, None), "bf16": (gpu_cl, x_cl, torch.bfloat16), "fp16": (gpu_cl, x_cl, torch.float16)}
    scale = float(reference.abs().mean())
    for name, (model, inp, dtype) in variants.items():
        def run(model=model, inp=inp, dtype=dtype):
            if dtype is None:
                return model(inp)
            with torch.autocast("cuda", dtype=dtype):
                return model(inp)
        out[f"model_only_cuda_{name}"] = _rate(run, batch_size)
        got = run().float()
        out[f"{name}_max_abs_over_mean_abs"] = float((got - reference).abs().max()) / scale
        out[f"{name}_min_cosine"] = float(torch.nn.functional.cosine_similarity(got, reference).min())
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    # end to end through the cache's own encoder
    train = data.splits["train"]
    reader = data.reader()
    many = ChipImages(train.chips * repeat, train.targets.repeat(repeat, axis=0), reader, prep)
    started = time.perf_counter()
    feats, _ = encode_images(gpu, many, batch_size, workers, device="cuda")
    out["end_to_end_cuda_chips_s"] = feats.shape[1] / (time.perf_counter() - started)
    once = ChipImages(train.chips, train.targets, reader, prep)
    started = time.perf_counter()
    feats, _ = encode_images(cpu, once, 64, workers, device="cpu")
    out["end_to_end_cpu_chips_s"] = feats.shape[1] / (time.perf_counter() - started)
    return out


def training(chip_dir: str, labels_csv: str, batch_size: int, workers: int, repeat: int, epochs: int) -> dict:
    import lightning as L

    from imagesim_pipeline.models.data import SmlcDataModule, SplitData
    from imagesim_pipeline.models.smlc import SkywayMultiLabelClassifier

    class EpochTimer(L.Callback):
        def __init__(self) -> None:
            self.starts: list[float] = []
            self.chips = 0
            self.end = 0.0

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            _sync()
            self.starts.append(time.perf_counter())

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if trainer.current_epoch == 0:
                self.chips += len(batch[1])

        def on_train_end(self, trainer, pl_module) -> None:
            _sync()
            self.end = time.perf_counter()

    def fit(cached: bool, precision: str, accelerator: str = "gpu", unfreeze: bool = False) -> dict:
        L.seed_everything(0, verbose=False)
        data = SmlcDataModule(chip_dir=chip_dir, labels_csv=labels_csv, batch_size=batch_size, num_workers=workers,
                              cache_features=cached)
        train = data.data.splits["train"]
        data.data.splits["train"] = SplitData(train.chips * repeat, train.targets.repeat(repeat, axis=0))
        data.setup("fit")
        model = SkywayMultiLabelClassifier(labels=data.labels, unfreeze_last_stage=unfreeze)
        timer = EpochTimer()
        trainer = L.Trainer(max_epochs=epochs, accelerator=accelerator, devices=1, precision=precision, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            num_sanity_val_steps=0, limit_val_batches=0, callbacks=[timer])
        trainer.fit(model, datamodule=data)
        seconds = [b - a for a, b in itertools.pairwise(timer.starts + [timer.end])]
        steady = statistics.median(seconds[1:]) if len(seconds) > 1 else seconds[0]
        return {"epoch_s": round(steady, 3), "first_epoch_s": round(seconds[0], 3), "chips": timer.chips,
                "chips_s": round(timer.chips / steady, 1)}

    out = {}
    for precision in ("32-true", "bf16-mixed", "16-mixed"):
        out[f"full_gpu_{precision}"] = fit(False, precision)
    out["full_gpu_unfreeze_last_stage_bf16-mixed"] = fit(False, "bf16-mixed", unfreeze=True)
    out["cached_gpu_32-true"] = fit(True, "32-true")
    out["cached_cpu_32-true"] = fit(True, "32-true", accelerator="cpu")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chip-dir", required=True)
    parser.add_argument("--labels-csv", required=True)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 4))
    parser.add_argument("--repeat", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_model_gpu needs a CUDA GPU; bench_model.py measures the CPU paths")
    _quiet()
    from imagesim_pipeline.models.data import load_reference_inputs
    from imagesim_pipeline.models.preprocess import Preprocessing

    os.environ.setdefault("IMAGESIM_BUCKET", tempfile.mkdtemp(prefix="bench-gpu-bucket-"))  # the feature cache
    data = load_reference_inputs(args.chip_dir, args.labels_csv)
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, {os.cpu_count()} CPU cores; "
          f"{sum(len(s.chips) for s in data.splits.values())} chips, train {len(data.splits['train'].chips)}")
    enc = encoding(data, Preprocessing(size=224), args.batch_size, args.workers, args.repeat)
    print("\nencoding efficientnet_lite0 @224, images/s (model only: batch on the device)")
    base = enc["model_only_cpu_fp32"]
    print(f"  {'CPU fp32 (baseline)':<22} {base:9.0f}   1.0x")
    for name in ("fp32", "tf32", "bf16", "fp16"):
        rate = enc[f"model_only_cuda_{name}"]
        extra = "" if name == "fp32" else (f"   features vs fp32: max|diff|/mean|f| {enc[f'{name}_max_abs_over_mean_abs']:.2e}, "
                                           f"min cosine {enc[f'{name}_min_cosine']:.6f}")
        print(f"  {'CUDA ' + name:<22} {rate:9.0f} {rate / base:6.1f}x{extra}")
    print(f"  CUDA fp32 vs CPU fp32 features: max |diff| {enc['cuda_fp32_vs_cpu_max_abs']:.2e}")
    print(f"  end to end (encode_images: decode in {args.workers} workers + fp32 forward): "
          f"CUDA {enc['end_to_end_cuda_chips_s']:.0f} chips/s vs CPU {enc['end_to_end_cpu_chips_s']:.0f} chips/s "
          f"({enc['end_to_end_cuda_chips_s'] / enc['end_to_end_cpu_chips_s']:.1f}x)")
    tr = training(args.chip_dir, args.labels_csv, args.batch_size, args.workers, args.repeat, args.epochs)
    print(f"\ntraining epochs (train split x{args.repeat}, batch {args.batch_size}, Lightning, steady-state median)")
    for name, r in tr.items():
        print(f"  {name:<42} {r['epoch_s']:8.3f} s/epoch  {r['chips_s']:9.0f} chips/s  (first epoch {r['first_epoch_s']:.2f} s)")
    full32 = tr["full_gpu_32-true"]["epoch_s"]
    print(f"  bf16-mixed vs 32-true (full path): {full32 / tr['full_gpu_bf16-mixed']['epoch_s']:.2f}x; "
          f"cached head on GPU vs full path fp32: {full32 / tr['cached_gpu_32-true']['epoch_s']:.0f}x; "
          f"cached head GPU vs CPU: {tr['cached_cpu_32-true']['epoch_s'] / tr['cached_gpu_32-true']['epoch_s']:.1f}x")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"encoding": enc, "training": tr, "device": torch.cuda.get_device_name(0)}, fh, indent=2)


if __name__ == "__main__":
    main()

"""The SMLC head's weight decay, chosen on val: val loss and val mAP per setting, test never looked at.

Trains the head on a dataset version's cached backbone features (the bucket's feature cache, as
``smlc_model`` does; computed first when missing) for each ``--weight-decay`` with every other
setting at its default (Adam 1e-3, cosine to 1e-5, 40 epochs, batch 64, seed 0), then prints val
loss, val accuracy, val micro F2 at 0.5 and val mAP. The default weight decay (1e-3) was picked
from this table on the demo dataset.

Usage: python benchmarks/tune_head.py [--bucket URI] [--weight-decay 0,1e-4,1e-3] [--epochs 40]
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bucket", default="", help="bucket root (default: the configured bucket)")
    parser.add_argument("--weight-decay", default="0,1e-4,1e-3", help="comma-separated values to compare")
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)

    import lightning as L
    import torch

    from imagesim_pipeline.models.data import SmlcDataModule
    from imagesim_pipeline.models.metrics import score
    from imagesim_pipeline.models.smlc import SkywayMultiLabelClassifier
    from imagesim_pipeline.models.training import predict

    print(f"{'weight decay':>12}  {'val loss':>8}  {'val acc':>7}  {'val F2@0.5':>10}  {'val mAP':>7}  {'fit s':>6}")
    for wd in (float(v) for v in args.weight_decay.split(",")):
        L.seed_everything(0, verbose=False)
        data = SmlcDataModule(bucket=args.bucket, num_workers=0)
        model = SkywayMultiLabelClassifier(labels=data.labels, weight_decay=wd)
        trainer = L.Trainer(max_epochs=args.epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
        started = time.perf_counter()
        trainer.fit(model, datamodule=data)
        seconds = time.perf_counter() - started
        probs, logits, y = predict(model.eval(), data, "val")
        loss = float(torch.nn.functional.binary_cross_entropy_with_logits(logits, y))
        val = score(probs, y, data.labels)
        print(f"{wd:>12g}  {loss:>8.3f}  {val['accuracy']:>7.3f}  {val['f2_micro']:>10.3f}  {val['map']:>7.3f}  "
              f"{seconds:>6.1f}", flush=True)


if __name__ == "__main__":
    main()

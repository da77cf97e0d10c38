"""Baselines computed in the same run as the model, the quality table, and the model card.

Baselines, scored like the model (at 0.5 and at their own F2-optimal thresholds chosen on val):

* ``train_frequency``: every chip gets each label's frequency in train as its probability;
* ``logistic_regression``: one scikit-learn logistic regression per label on the same frozen
  backbone features (standardised), the classic linear probe.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from imagesim_pipeline.models.metrics_record import Evaluation, ModelMetrics, Scores

if TYPE_CHECKING:  # torch and the metrics are imported where used: the tables (`imagesim model report`) need neither
    import torch

HEADLINE = ("f2_micro", "f2_macro", "map", "accuracy")


def evaluate(val_probs: torch.Tensor, val_targets: torch.Tensor, test_probs: torch.Tensor,
             test_targets: torch.Tensor, labels: Sequence[str]) -> Evaluation:
    """Thresholds from val; test figures at 0.5 and at those thresholds."""
    from imagesim_pipeline.models.metrics import f2_optimal_thresholds, score

    thresholds = f2_optimal_thresholds(val_probs, val_targets)
    return Evaluation(thresholds=thresholds,
                      val=Scores.model_validate(score(val_probs, val_targets, labels)),
                      test=Scores.model_validate(score(test_probs, test_targets, labels)),
                      test_at_thresholds=Scores.model_validate(score(test_probs, test_targets, labels, thresholds)))


def frequency_baseline(train_targets: np.ndarray, n_val: int, n_test: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(val, test) probabilities: each label's frequency in train, for every chip."""
    import torch

    freq = torch.from_numpy(train_targets.astype(np.float32).mean(0))
    return freq.expand(n_val, -1).clone(), freq.expand(n_test, -1).clone()


def logistic_baseline(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, test_x: np.ndarray,
                      seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(val, test) probabilities of one standardised logistic regression per label on the features."""
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train_x)
    tx, vx, sx = scaler.transform(train_x), scaler.transform(val_x), scaler.transform(test_x)
    val_p = np.zeros((len(vx), train_y.shape[1]), np.float32)
    test_p = np.zeros((len(sx), train_y.shape[1]), np.float32)
    for j in range(train_y.shape[1]):
        y = train_y[:, j]
        if y.min() == y.max():  # one class only in train: predict it
            val_p[:, j], test_p[:, j] = float(y[0]), float(y[0])
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence warnings on separable labels
            clf = LogisticRegression(max_iter=300, C=0.1, random_state=seed).fit(tx, y)
        val_p[:, j], test_p[:, j] = clf.predict_proba(vx)[:, 1], clf.predict_proba(sx)[:, 1]
    return torch.from_numpy(val_p), torch.from_numpy(test_p)


def baselines(features: dict[str, tuple[np.ndarray, np.ndarray]], labels: Sequence[str]) -> dict[str, Evaluation]:
    """Both baselines from split -> (features (N, D) or (views, N, D), 0/1 targets)."""
    import torch

    (train_x, train_y), (val_x, val_y), (test_x, test_y) = (features[s] for s in ("train", "val", "test"))
    if train_x.ndim == 3:
        train_x = train_x[0]  # the unaugmented view
    val_t, test_t = torch.from_numpy(val_y.astype(np.float32)), torch.from_numpy(test_y.astype(np.float32))
    out = {}
    for name, (vp, tp) in {"train_frequency": frequency_baseline(train_y, len(val_y), len(test_y)),
                           "logistic_regression": logistic_baseline(train_x, train_y, val_x, test_x)}.items():
        out[name] = evaluate(vp, val_t, tp, test_t, labels)
    return out


def _fmt(value: float | None) -> str:
    return "—" if value is None or value != value else f"{value:.3f}"


def quality_table(metrics: ModelMetrics) -> str:
    """Markdown: the model and the baselines on test, at 0.5 and at the val-chosen thresholds."""
    rows = [("SMLC", metrics.test, metrics.test_at_thresholds)] + [
        (name.replace("_", " "), b.test, b.test_at_thresholds) for name, b in metrics.baselines.items()]
    lines = ["| model | micro F2 @0.5 | macro F2 @0.5 | micro F2 @thr | macro F2 @thr | mAP | accuracy @0.5 |",
             "|---|---|---|---|---|---|---|"]
    for name, t, tt in rows:
        lines.append(f"| {name} | {_fmt(t.f2_micro)} | {_fmt(t.f2_macro)} | {_fmt(tt.f2_micro)} | "
                     f"{_fmt(tt.f2_macro)} | {_fmt(t.map)} | {_fmt(t.accuracy)} |")
    return "\n".join(lines)


def per_label_table(metrics: ModelMetrics) -> str:
    """Markdown: per label, its threshold, test F2 at 0.5 and at it, test AP, and the support in test and val."""
    test, at_thr = metrics.test.per_label, metrics.test_at_thresholds.per_label
    lines = ["| label | threshold | test F2 @0.5 | test F2 @thr | test AP | test support | val support |",
             "|---|---|---|---|---|---|---|"]
    for i, (name, per) in enumerate(test.items()):
        lines.append(f"| {name} | {metrics.thresholds[i]:.2f} | {_fmt(per.f2)} | {_fmt(at_thr[name].f2)} | "
                     f"{_fmt(per.ap)} | {per.support} | {metrics.val.per_label[name].support} |")
    return "\n".join(lines)


def model_card(name: str, version: str, metrics: ModelMetrics) -> str:
    """A short markdown model card: data, training, quality against the baselines, per label."""
    data, training = metrics.data, metrics.training
    counts = ", ".join(f"{s} {n}" for s, n in data.chips.items())
    unreadable = ", ".join(f"{s} {n}" for s, n in data.unreadable.items()) if data.unreadable is not None \
        else "not recorded (metrics written before they were counted per split)"
    return "\n".join([
        f"# {name} {version}",
        "",
        "SkywayMultiLabelClassifier: a frozen ImageNet backbone with an MLP head "
        f"({training.backbone} → {training.head}), multi-label over {len(metrics.labels)} labels.",
        f"Embedding for search: strategy `{training.strategy}`, "
        f"{'' if training.embedding_dim is None else training.embedding_dim}-d, on `{training.pooling}`-pooled "
        "backbone features" + (f" (the strategy's embedding followed by the label probabilities at weight "
                               f"{training.label_weight})." if training.label_weight > 0 else "."),
        "",
        "## Data",
        f"- dataset version `{data.dataset_version}` ({counts} chips; splits by spatial block)",
        f"- input {data.input_size} px, ImageNet normalisation; unreadable chips left out: {unreadable}",
        "",
        "## Training",
        f"- {training.epochs} epochs, Adam lr {training.lr}, cosine to {training.eta_min}, "
        f"{'cached backbone features' if training.cached_features else 'images'} "
        f"(augmentation {training.augmentation}), {training.seconds:.0f} s on {training.device}",
        f"- validation: loss {metrics.val_loss:.3f}, accuracy {metrics.val.accuracy:.3f}, "
        f"micro F2 {metrics.val.f2_micro:.3f}",
        "",
        "## Quality on the test split (never trained on), with baselines from the same run",
        "",
        quality_table(metrics),
        "",
        "Thresholds are per label, chosen on val for the best F2. A label with no positives in a split is left "
        "out of that split's macro F2 and mAP (—).",
        "",
        per_label_table(metrics),
        "",
    ])


def report_plots(metrics: ModelMetrics, test_probs: torch.Tensor, test_targets: torch.Tensor) -> dict[str, bytes]:
    """PNGs: test F2 per label (model at 0.5 and thresholds, logistic baseline) and test PR curves."""
    import io

    from matplotlib.figure import Figure  # no pyplot: the caller's backend (a notebook's) stays as it is
    from torchmetrics.functional.classification import multilabel_precision_recall_curve

    labels = metrics.labels
    out = {}

    def png(fig: Figure) -> bytes:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
        return buffer.getvalue()

    fig = Figure(figsize=(9, 3.5))
    ax = fig.subplots()
    x = np.arange(len(labels))
    series = [("SMLC @0.5", metrics.test), ("SMLC @thresholds", metrics.test_at_thresholds)]
    if "logistic_regression" in metrics.baselines:
        series.append(("logistic regression @thresholds",
                       metrics.baselines["logistic_regression"].test_at_thresholds))
    for k, (name, figures) in enumerate(series):
        ax.bar(x + (k - 1) * 0.27, [figures.per_label[n].f2 or 0 for n in labels], 0.27, label=name)
    ax.set_xticks(x, labels, rotation=40, ha="right")
    ax.set_ylabel("test F2")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    out["f2_per_label"] = png(fig)

    fig = Figure(figsize=(6, 5))
    ax = fig.subplots()
    if len(test_targets):
        with warnings.catch_warnings():  # labels without positives: not drawn
            warnings.simplefilter("ignore", UserWarning)
            precision, recall, _ = multilabel_precision_recall_curve(test_probs, test_targets.long(),
                                                                     num_labels=len(labels))
        from matplotlib import colormaps

        colours = colormaps["tab20"]  # one colour per label (the default cycle repeats after 10)
        for j, name in enumerate(labels):
            if test_targets[:, j].sum() > 0:
                ax.plot(recall[j].numpy(), precision[j].numpy(), label=name, linewidth=1, color=colours(j % 20))
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("test precision-recall per label")
    ax.legend(fontsize=7, ncol=2)
    out["pr_curves"] = png(fig)
    return out


__all__ = ["report_plots", "baselines", "evaluate", "model_card", "per_label_table", "quality_table"]

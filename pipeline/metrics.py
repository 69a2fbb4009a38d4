"""Evaluation numbers for report.json and their text and PNG renderings."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix


def classification_report(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, balanced accuracy, per-class precision/recall/F1/support, confusion matrix.

    Balanced accuracy is the mean recall over the classes present in ``y_true``;
    the confusion matrix has rows = true class, columns = predicted class, over all
    ``classes`` (so its shape never depends on which classes a split happens to hold).
    """
    cm = confusion_matrix(y_true, y_pred, labels=np.arange(len(classes)))
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    per_class = {}
    recalls = []
    for i, name in enumerate(classes):
        tp = int(cm[i, i])
        precision = tp / predicted[i] if predicted[i] else 0.0
        recall = tp / support[i] if support[i] else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": int(support[i])}
        if support[i]:
            recalls.append(recall)
    return {
        "n": int(len(y_true)),
        "accuracy": float((y_true == y_pred).mean()) if len(y_true) else 0.0,
        "balanced_accuracy": float(np.mean(recalls)) if recalls else 0.0,
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
    }


def format_report(split: str, report: dict) -> list[str]:
    """A readable table of one split's report."""
    lines = [f"{split}: accuracy {report['accuracy']:.4f}, balanced accuracy {report['balanced_accuracy']:.4f} "
             f"({report['n']} images)",
             f"  {'class':<20} {'precision':>9} {'recall':>7} {'f1':>7} {'support':>8}"]
    for name, m in report["per_class"].items():
        lines.append(f"  {name:<20} {m['precision']:>9.3f} {m['recall']:>7.3f} {m['f1']:>7.3f} {m['support']:>8d}")
    lines.append("  confusion (rows true, columns predicted): " + " ".join(str(r) for r in report["confusion_matrix"]))
    return lines


def save_confusion_png(report: dict, classes: list[str], path: str) -> str | None:
    """Draw the confusion matrix when matplotlib is installed (the ``plot`` extra); else do nothing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    cm = np.asarray(report["confusion_matrix"])
    fig, ax = plt.subplots(figsize=(1.2 + 0.5 * len(classes), 1.0 + 0.5 * len(classes)))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > cm.max() / 2 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

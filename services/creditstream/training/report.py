"""The model report figure: ROC curves and a calibration curve."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.calibration import calibration_curve
from sklearn.metrics import roc_auc_score, roc_curve


def plot_report(
    path: Path,
    y_test: np.ndarray,
    p_test: np.ndarray,
    y_train: np.ndarray,
    p_oof: np.ndarray,
    threshold: float,
    *,
    title: str,
) -> None:
    """Write a PNG with hold-out and out-of-fold ROC curves and the hold-out calibration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (roc_axes, calibration_axes) = plt.subplots(1, 2, figsize=(11, 5))
    for label, y, p in (("hold-out", y_test, p_test), ("out-of-fold (train)", y_train, p_oof)):
        fpr, tpr, _ = roc_curve(y, p)
        roc_axes.plot(fpr, tpr, label=f"{label}  AUC {roc_auc_score(y, p):.4f}")
    predicted = p_test >= threshold
    fpr_at = float(np.mean(predicted[y_test == 0]))
    tpr_at = float(np.mean(predicted[y_test == 1]))
    roc_axes.scatter(
        [fpr_at], [tpr_at], color="black", zorder=3, label=f"threshold {threshold:.3f} (hold-out)"
    )
    roc_axes.plot([0, 1], [0, 1], color="grey", linestyle=":")
    roc_axes.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    roc_axes.legend(loc="lower right")

    observed, mean_predicted = calibration_curve(y_test, p_test, n_bins=10, strategy="quantile")
    calibration_axes.plot(mean_predicted, observed, marker="o", label="hold-out (deciles)")
    calibration_axes.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect")
    calibration_axes.set(
        xlabel="mean predicted P(default)", ylabel="observed default rate", title="Calibration"
    )
    calibration_axes.legend(loc="upper left")
    figure.suptitle(f"creditstream credit_default {title}")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)

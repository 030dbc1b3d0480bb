"""Hold-out split, candidate models, CV selection and threshold choice (no file I/O)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import precision_recall_curve, roc_auc_score
from sklearn.model_selection import StratifiedKFold, train_test_split
from sklearn.pipeline import Pipeline

from creditstream.contract import FEATURES, ID_FIELD, LABEL_FIELD
from creditstream.training.features import CreditFeatures

# NOTE: the split is part of the model's definition (and of the reference figures in
# REFERENCE.md); it does not follow Settings.seed.
SPLIT: Final[dict[str, Any]] = {
    "order": f"rows sorted by {ID_FIELD}",
    "method": "sklearn.model_selection.train_test_split",
    "test_size": 0.2,
    "stratify": LABEL_FIELD,
    "random_state": 42,
}
CV_FOLDS: Final = 5


@dataclass(frozen=True)
class Candidate:
    """One feature set + hyper-parameter combination compared by CV on the training part."""

    name: str
    engineered: bool
    params: dict[str, Any]

    def build(self, seed: int) -> Pipeline:
        """An unfitted pipeline: features → gradient boosting."""
        booster = HistGradientBoostingClassifier(
            early_stopping=False, random_state=seed, **self.params
        )
        return Pipeline([("features", CreditFeatures(self.engineered)), ("booster", booster)])


_SMALL_STEPS: Final = {
    "learning_rate": 0.03,
    "max_iter": 400,
    "max_leaf_nodes": 15,
    "min_samples_leaf": 200,
    "l2_regularization": 1.0,
}
_LARGER_STEPS: Final = {
    "learning_rate": 0.05,
    "max_iter": 300,
    "max_leaf_nodes": 15,
    "min_samples_leaf": 100,
    "l2_regularization": 1.0,
}
CANDIDATES: Final[tuple[Candidate, ...]] = (
    Candidate("raw-lr0.05", False, _LARGER_STEPS),
    Candidate("raw-lr0.03", False, _SMALL_STEPS),
    Candidate("engineered-lr0.05", True, _LARGER_STEPS),
    Candidate("engineered-lr0.03", True, _SMALL_STEPS),
)


@dataclass
class Split:
    """The hold-out split: float32 features, labels and IDs of both parts."""

    X_train: np.ndarray
    y_train: np.ndarray
    ids_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    ids_test: np.ndarray


def features_of(frame: Any) -> np.ndarray:
    """The [n, 23] float32 raw feature matrix in FEATURES order (what the ONNX input gets)."""
    return frame.loc[:, list(FEATURES)].to_numpy(dtype=np.float32)


def split_holdout(frame: Any) -> Split:
    """Sort by ID, then the stratified 80/20 split defined in SPLIT."""
    ordered = frame.sort_values(ID_FIELD, kind="stable").reset_index(drop=True)
    X = features_of(ordered)
    y = ordered[LABEL_FIELD].to_numpy(dtype=np.int64)
    ids = ordered[ID_FIELD].to_numpy()
    X_train, X_test, y_train, y_test, ids_train, ids_test = train_test_split(
        X, y, ids, test_size=SPLIT["test_size"], stratify=y, random_state=SPLIT["random_state"]
    )
    return Split(X_train, y_train, ids_train, X_test, y_test, ids_test)


@dataclass
class CandidateScore:
    """CV result of one candidate: per-fold AUCs and its out-of-fold probabilities."""

    candidate: Candidate
    fold_aucs: list[float]
    oof: np.ndarray = field(repr=False)

    @property
    def mean(self) -> float:
        """Mean fold AUC."""
        return float(np.mean(self.fold_aucs))

    @property
    def std(self) -> float:
        """Standard deviation of the fold AUCs."""
        return float(np.std(self.fold_aucs))


def cross_validate(candidate: Candidate, X: np.ndarray, y: np.ndarray, seed: int) -> CandidateScore:
    """Stratified K-fold on the training part only: fold AUCs and out-of-fold probabilities."""
    folds = StratifiedKFold(n_splits=CV_FOLDS, shuffle=True, random_state=seed)
    oof = np.zeros(len(y), dtype=np.float64)
    aucs: list[float] = []
    for fit_rows, val_rows in folds.split(X, y):
        model = candidate.build(seed).fit(X[fit_rows], y[fit_rows])
        oof[val_rows] = model.predict_proba(X[val_rows])[:, 1]
        aucs.append(float(roc_auc_score(y[val_rows], oof[val_rows])))
    return CandidateScore(candidate, aucs, oof)


def select_candidate(
    X: np.ndarray, y: np.ndarray, seed: int, candidates: tuple[Candidate, ...] = CANDIDATES
) -> tuple[CandidateScore, list[CandidateScore]]:
    """Cross-validate every candidate on the training part; the best mean AUC wins."""
    scores = [cross_validate(candidate, X, y, seed) for candidate in candidates]
    best = max(scores, key=lambda score: score.mean)
    return best, scores


def choose_threshold(y: np.ndarray, probabilities: np.ndarray) -> float:
    """The probability cut (is_default = p >= t) maximising F1 on validation predictions."""
    precision, recall, thresholds = precision_recall_curve(y, probabilities)
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    # NOTE: the last precision/recall pair has no threshold (recall 0 by convention).
    return float(thresholds[int(np.argmax(f1[:-1]))])

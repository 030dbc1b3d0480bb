"""`creditstream train`: select by CV, fit, export ONNX, evaluate, write the model card and plot."""

from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import dataclass
from importlib.metadata import version as package_version
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
from sklearn.metrics import brier_score_loss, f1_score, precision_score, recall_score, roc_auc_score

from creditstream.contract import FEATURE_SPECS, FEATURES, LABEL_FIELD
from creditstream.data.dataset import DatasetError, content_sha256, file_sha256, load_dataset
from creditstream.data.download import PINNED_CONTENT_SHA256
from creditstream.stages.graphs import FEATURES_FILE, write_stage_graphs
from creditstream.stages.graphs import MODEL_FILE as STAGE_MODEL_FILE
from creditstream.synthetic import build_synthetic_section
from creditstream.training.features import ENGINEERED_FEATURES, register_converter
from creditstream.training.pipeline import (
    CV_FOLDS,
    SPLIT,
    CandidateScore,
    Split,
    choose_threshold,
    features_of,
    select_candidate,
    split_holdout,
)

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

    from creditstream.settings import Settings

MODEL_FILE: Final = "credit_default.onnx"
CARD_FILE: Final = "model_card.json"
REPORT_FILE: Final = "model_report.png"
MODEL_NAME: Final = "credit_default"
MODEL_BASE_VERSION: Final = "1.0.0"
INPUT_NAME: Final = "features"
OPSET: Final[dict[str, int]] = {"": 17, "ai.onnx.ml": 3}
CARD_SCHEMA_VERSION: Final = 1
_LIBRARIES: Final = (
    "scikit-learn",
    "skl2onnx",
    "onnx",
    "onnxruntime",
    "numpy",
    "pandas",
    "protobuf",
)


@dataclass
class TrainingResult:
    """Everything a caller or test needs after `run_training`."""

    card: dict[str, Any]
    pipeline: Pipeline
    split: Split
    onnx_bytes: bytes
    paths: dict[str, Path]


def export_onnx(pipeline: Pipeline) -> bytes:
    """Convert the fitted pipeline: input `features` float32 [N, 23], plain [N, 2] probabilities."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    register_converter()
    booster = pipeline.named_steps["booster"]
    model = convert_sklearn(
        pipeline,
        name=MODEL_NAME,
        initial_types=[(INPUT_NAME, FloatTensorType([None, len(FEATURES)]))],
        options={id(booster): {"zipmap": False}},
        target_opset=OPSET,
    )
    model.doc_string = "creditstream default risk: raw UCI fields in, P(default) in column 1"
    # NOTE: skl2onnx collects opset imports in a set, so their order (and the file's sha256,
    # hence the model version) would change with PYTHONHASHSEED; sort them.
    imports = sorted((entry.domain, entry.version) for entry in model.opset_import)
    del model.opset_import[:]
    for domain, version in imports:
        model.opset_import.add(domain=domain, version=version)
    return bytes(model.SerializeToString())


def onnx_opsets(onnx_bytes: bytes) -> dict[str, int]:
    """The opset imports actually used by a serialised model, keyed by domain."""
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    return {entry.domain or "ai.onnx": entry.version for entry in model.opset_import}


def onnx_probabilities(onnx_bytes: bytes, X: np.ndarray) -> np.ndarray:
    """P(default) from the ONNX model (float32), as the consumer computes it."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    (probabilities,) = session.run(["probabilities"], {INPUT_NAME: X.astype(np.float32)})
    return np.asarray(probabilities)[:, 1]


def _rounded(value: float) -> float:
    return float(round(value, 6))


def _threshold_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    predicted = (p >= threshold).astype(np.int64)
    return {
        "auc": float(roc_auc_score(y, p)),
        "f1": float(f1_score(y, predicted)),
        "precision": float(precision_score(y, predicted, zero_division=0)),
        "recall": float(recall_score(y, predicted)),
        "brier": float(brier_score_loss(y, p)),
        "positive_rate": float(predicted.mean()),
        "rows": len(y),
    }


def _library_versions() -> dict[str, str]:
    versions = {name: package_version(name) for name in _LIBRARIES}
    versions["python"] = platform.python_version()
    return versions


def _candidate_rows(scores: list[CandidateScore], best: CandidateScore) -> list[dict[str, Any]]:
    return [
        {
            "name": score.candidate.name,
            "engineered_features": score.candidate.engineered,
            "params": score.candidate.params,
            "cv_auc_mean": score.mean,
            "cv_auc_std": score.std,
            "chosen": score is best,
        }
        for score in scores
    ]


def check_pinned(frame: Any, data_path: Path, expected_content_sha256: str | None) -> str:
    """The data's content sha256, if it is the pinned data set (None: any data, on purpose)."""
    digest = content_sha256(frame)
    if expected_content_sha256 is not None and digest != expected_content_sha256:
        raise DatasetError(
            data_path,
            [
                f"content sha256 {digest} does not match the pinned digest "
                f"{expected_content_sha256} of the UCI data set 350 ({len(frame)} rows); "
                "refusing to train on it (--allow-unpinned-data trains on other data on purpose)"
            ],
        )
    return digest


def run_training(
    settings: Settings,
    data_path: Path,
    out_dir: Path,
    *,
    plot: bool = True,
    expected_content_sha256: str | None = PINNED_CONTENT_SHA256,
) -> TrainingResult:
    """Train on the hold-out split of `data_path`, write the artefacts into `out_dir`.

    The data must be the pinned data set (content digest) unless `expected_content_sha256` is
    None.
    """
    started = time.perf_counter()
    frame = load_dataset(data_path, expect_full=False)
    data_digest = check_pinned(frame, data_path, expected_content_sha256)
    split = split_holdout(frame)
    seed = settings.seed

    # NOTE: everything up to the final fit sees only the training part.
    best, scores = select_candidate(split.X_train, split.y_train, seed)
    threshold = choose_threshold(split.y_train, best.oof)
    pipeline = best.candidate.build(seed).fit(split.X_train, split.y_train)
    fitted_at = time.perf_counter()

    onnx_bytes = export_onnx(pipeline)
    onnx_sha256 = hashlib.sha256(onnx_bytes).hexdigest()
    p_test_onnx = onnx_probabilities(onnx_bytes, split.X_test)
    p_test_sklearn = pipeline.predict_proba(split.X_test)[:, 1]
    parity = float(np.max(np.abs(p_test_onnx.astype(np.float64) - p_test_sklearn)))
    all_X = features_of(frame)
    all_y = frame[LABEL_FIELD].to_numpy(dtype=np.int64)
    p_all_onnx = onnx_probabilities(onnx_bytes, all_X)

    holdout = _threshold_metrics(split.y_test, p_test_sklearn, threshold)
    validation = _threshold_metrics(split.y_train, best.oof, threshold)
    card: dict[str, Any] = {
        "schema_version": CARD_SCHEMA_VERSION,
        "name": MODEL_NAME,
        "version": f"{MODEL_BASE_VERSION}+{onnx_sha256[:12]}",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "task": "P(default payment next month) of a credit-card client (UCI data set 350)",
        "onnx": {
            "file": MODEL_FILE,
            "sha256": onnx_sha256,
            "opset": onnx_opsets(onnx_bytes),
            "input": {
                "name": INPUT_NAME,
                "dtype": "float32",
                "shape": [None, len(FEATURES)],
                "columns": list(FEATURES),
            },
            "outputs": {
                "label": "int64 [N]: argmax class (ignores the card's threshold)",
                "probabilities": "float32 [N, 2]: column 1 = P(default)",
            },
            "preprocessing": "inside the graph (raw fields in)",
        },
        "data": {
            "file": data_path.name,
            "file_sha256": file_sha256(data_path),
            "content_sha256": data_digest,
            "rows": len(frame),
            "default_rate": float(all_y.mean()),
        },
        "split": {
            **SPLIT,
            "train_rows": len(split.y_train),
            "test_rows": len(split.y_test),
            "test_ids_sha256": hashlib.sha256(
                ",".join(str(i) for i in sorted(split.ids_test.tolist())).encode()
            ).hexdigest(),
        },
        "selection": {
            "method": f"StratifiedKFold(n_splits={CV_FOLDS}, shuffle=True, random_state={seed}) "
            "on the training part only; highest mean AUC wins",
            "candidates": _candidate_rows(scores, best),
            "chosen": best.candidate.name,
            "estimator": "sklearn HistGradientBoostingClassifier, fitted on float32-cast data",
        },
        "features": {
            "input": list(FEATURES),
            "engineered": list(ENGINEERED_FEATURES) if best.candidate.engineered else [],
            "ranges": {
                name: {"minimum": spec.minimum, "maximum": spec.maximum, "integer": spec.integer}
                for name, spec in FEATURE_SPECS.items()
            },
        },
        "threshold": {
            "value": threshold,
            "rule": "is_default = probability >= threshold",
            "chosen_on": f"out-of-fold probabilities of the chosen candidate ({CV_FOLDS}-fold CV "
            "on the training part), maximising F1; the hold-out is not used",
        },
        "metrics": {
            "holdout": holdout,
            "cv": {
                "auc_mean": best.mean,
                "auc_std": best.std,
                "fold_aucs": best.fold_aucs,
                "out_of_fold_at_threshold": validation,
            },
            "full_data": {
                "auc": float(roc_auc_score(all_y, p_all_onnx)),
                "rows": len(all_y),
                "note": "AUC of the ONNX model's float32 probabilities over every row, training "
                "rows included (optimistic; a pipeline check, not a quality figure); onnxruntime "
                "CPU with 1 intra-op thread (more threads move it by ~1e-8)",
            },
        },
        "parity": {
            "holdout_max_abs_diff": parity,
            "note": "max |p_onnx - p_sklearn| over the hold-out, onnxruntime CPU, float32 input",
        },
        "synthetic": build_synthetic_section(split.X_train),
        "libraries": _library_versions(),
        "training": {
            "seed": seed,
            "fit_seconds": _rounded(fitted_at - started),
        },
    }

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"model": out_dir / MODEL_FILE, "card": out_dir / CARD_FILE}
    paths["model"].write_bytes(onnx_bytes)
    if plot:
        from creditstream.training.report import plot_report

        paths["report"] = out_dir / REPORT_FILE
        plot_report(
            paths["report"],
            split.y_test,
            p_test_sklearn,
            split.y_train,
            best.oof,
            threshold,
            title=card["version"],
        )
    card["training"]["total_seconds"] = _rounded(time.perf_counter() - started)
    paths["card"].write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    # NOTE: the staged pipeline's two graphs are cut out of the fused bytes just written, and
    # the card lists all three with their sha256 (issue 11).
    card["graphs"] = write_stage_graphs(out_dir, CARD_FILE)
    paths["features"] = out_dir / FEATURES_FILE
    paths["model_graph"] = out_dir / STAGE_MODEL_FILE
    return TrainingResult(card, pipeline, split, onnx_bytes, paths)

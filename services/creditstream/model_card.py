"""Read the model card (JSON only: the consumer imports this without pandas or scikit-learn)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ModelCardError(ValueError):
    """The model card is missing, not JSON, or lacks a required field."""


@dataclass(frozen=True)
class ModelCard:
    """The fields the serving side needs, plus the whole document."""

    version: str
    threshold: float
    onnx_sha256: str | None
    document: dict[str, Any] = field(repr=False)


def load_model_card(path: Path | str) -> ModelCard:
    """Load a model card and return its version and decision threshold."""
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelCardError(f"no model card at {path}") from exc
    except json.JSONDecodeError as exc:
        raise ModelCardError(f"model card {path} is not JSON: {exc}") from exc
    try:
        version = str(document["version"])
        threshold = float(document["threshold"]["value"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelCardError(f"model card {path} lacks version or threshold.value: {exc}") from exc
    if not 0.0 <= threshold <= 1.0:
        raise ModelCardError(f"model card {path}: threshold {threshold} outside [0, 1]")
    onnx_sha256 = document.get("onnx", {}).get("sha256")
    return ModelCard(version, threshold, onnx_sha256, document)

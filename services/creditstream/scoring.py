"""ONNX Runtime model adapter: raw features in, P(default) out (preprocessing is in the graph)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from creditstream.contract import N_FEATURES

if TYPE_CHECKING:
    from creditstream.settings import Settings

INPUT_NAME = "features"


class ModelError(RuntimeError):
    """The model file or card is missing or breaks the ONNX contract."""


class Scorer(Protocol):
    """What the consumer needs from a model: P(default) for a float32 [N, 23] matrix."""

    version: str
    threshold: float

    def predict_default_probability(self, features: np.ndarray) -> np.ndarray:
        """Probability of default for each row."""
        ...


def read_model_identity(
    card_path: Path, threshold_override: float | None = None
) -> tuple[str, float]:
    """Version and decision threshold from the model card (JSON only: no training libraries)."""
    from creditstream.model_card import ModelCardError, load_model_card

    try:
        card = load_model_card(card_path)
    except ModelCardError as exc:
        raise ModelError(
            f"{exc}; run `creditstream train` or set CREDITSTREAM_MODEL_CARD_PATH"
        ) from exc
    return card.version, card.threshold if threshold_override is None else threshold_override


class OnnxScorer:
    """An onnxruntime session checked against the contract: input `features` float32 [N, 23]."""

    def __init__(
        self, model_path: Path, version: str, threshold: float, *, threads: int = 1
    ) -> None:
        import onnxruntime as ort

        if not model_path.is_file():
            raise ModelError(f"ONNX model not found at {model_path}; set CREDITSTREAM_MODEL_PATH")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            str(model_path), options, providers=["CPUExecutionProvider"]
        )
        inputs = self._session.get_inputs()
        if len(inputs) != 1 or inputs[0].name != INPUT_NAME or inputs[0].shape[-1] != N_FEATURES:
            found = [(i.name, i.shape) for i in inputs]
            raise ModelError(
                f"{model_path}: expected one input {INPUT_NAME!r} [N, {N_FEATURES}], found {found}"
            )
        outputs = self._session.get_outputs()
        self._probability_output = next(
            (o.name for o in outputs if o.name.startswith("prob")), outputs[-1].name
        )
        self.version = version
        self.threshold = threshold

    @classmethod
    def from_settings(cls, settings: Settings) -> OnnxScorer:
        """Load the model and its card as configured."""
        version, threshold = read_model_identity(
            settings.resolved_model_card_path, settings.threshold
        )
        return cls(settings.model_path, version, threshold, threads=settings.inference_threads)

    def predict_default_probability(self, features: np.ndarray) -> np.ndarray:
        """One ONNX call for the whole batch; column 1 of the [N, 2] probability output."""
        (probabilities,) = self._session.run([self._probability_output], {INPUT_NAME: features})
        return np.asarray(probabilities)[:, 1]

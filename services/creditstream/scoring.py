"""ONNX Runtime model adapter: raw features in, P(default) out (preprocessing is in the graph)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from creditstream.contract import N_FEATURES

if TYPE_CHECKING:
    from creditstream.model_card import ModelCard
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


def read_model_card(card_path: Path) -> ModelCard:
    """The model card (JSON only: no training libraries); it must pin the model's sha256."""
    from creditstream.model_card import ModelCardError, load_model_card

    try:
        card = load_model_card(card_path)
    except ModelCardError as exc:
        raise ModelError(
            f"{exc}; run `creditstream train` or set CREDITSTREAM_MODEL_CARD_PATH"
        ) from exc
    if not card.onnx_sha256:
        raise ModelError(
            f"model card {card_path} has no onnx.sha256: the model cannot be verified, "
            "refusing to serve it"
        )
    return card


def verified_model_bytes(model_path: Path, expected_sha256: str, card_path: Path) -> bytes:
    """The model file's bytes, if their sha256 is the card's (else ModelError).

    NOTE: the bytes checked are the bytes loaded: no window to swap the file in between.
    """
    try:
        model = model_path.read_bytes()
    except FileNotFoundError as exc:
        raise ModelError(
            f"ONNX model not found at {model_path}; set CREDITSTREAM_MODEL_PATH"
        ) from exc
    actual = hashlib.sha256(model).hexdigest()
    if actual != expected_sha256.lower():
        raise ModelError(
            f"{model_path}: sha256 {actual} does not match the model card's onnx.sha256 "
            f"{expected_sha256} ({card_path}); refusing to serve a model the card does not "
            "describe (a wrong image or model override?)"
        )
    return model


class OnnxScorer:
    """An onnxruntime session checked against the contract: input `features` float32 [N, 23]."""

    def __init__(
        self, model: bytes, version: str, threshold: float, *, threads: int = 1, name: str = ""
    ) -> None:
        import onnxruntime as ort

        model_path = name or "the model"
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # NOTE: onnxruntime raises its own, undocumented types
            raise ModelError(f"{model_path}: not a loadable ONNX model: {exc}") from exc
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
        """Load the model its card describes (sha256 checked) with the card's identity."""
        card_path = settings.resolved_model_card_path
        card = read_model_card(card_path)
        assert card.onnx_sha256 is not None  # read_model_card refuses a card without it
        model = verified_model_bytes(settings.model_path, card.onnx_sha256, card_path)
        threshold = card.threshold if settings.threshold is None else settings.threshold
        return cls(
            model,
            card.version,
            threshold,
            threads=settings.inference_threads,
            name=str(settings.model_path),
        )

    def predict_default_probability(self, features: np.ndarray) -> np.ndarray:
        """One ONNX call for the whole batch; column 1 of the [N, 2] probability output."""
        (probabilities,) = self._session.run([self._probability_output], {INPUT_NAME: features})
        return np.asarray(probabilities)[:, 1]

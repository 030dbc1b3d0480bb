"""`creditstream stage preprocess|features|score`: build a stage from the settings and serve it.

The score stage IS the fused consumer (same settlement, store, results publishing and replies)
reading engineered vectors from its stage queue (`consumer.InputMode`); the shadow score stage
is the same with its own queue, ids and model version, and no publishing or replies.
"""

from __future__ import annotations

import hashlib
import logging
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from creditstream.broker import BROKER_DOWN_ERRORS
from creditstream.metrics import HealthServer, HealthState
from creditstream.scoring import ModelError, read_model_card
from creditstream.stages.graphs import ENGINEERED, FEATURES_FILE, FUSED_INPUT, MODEL_FILE
from creditstream.stages.metrics import StageMetrics, now_us, trace_of
from creditstream.stages.topology import SHADOW_VERSION_PREFIX, stage_settings
from creditstream.stages.transforms import decode_engineered, features_batch, preprocess

if TYPE_CHECKING:
    from creditstream.codec import DecodedMessage
    from creditstream.settings import Settings

log = logging.getLogger(__name__)


def _session(model: bytes, threads: int, name: str) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelError(f"{name}: not a loadable ONNX model: {exc}") from exc


def graph_bytes(settings: Settings, role: str, path: Path | None = None) -> tuple[bytes, str]:
    """A stage graph (role features|model) and its version, checked against the model card.

    The default file sits beside the fused model; its sha256 must be the card's (as the fused
    consumer checks its model). An explicit `path` (a challenger) that the card does not list
    is served under the version `model+<sha256[:12]>`.
    """
    card_path = settings.resolved_model_card_path
    card = read_model_card(card_path)
    listed = card.document.get("graphs", {}).get(role, {})
    default = settings.model_path.with_name(FEATURES_FILE if role == "features" else MODEL_FILE)
    target = path or default
    try:
        data = target.read_bytes()
    except FileNotFoundError as exc:
        raise ModelError(f"{role} graph not found at {target}; run `creditstream train`") from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest == listed.get("sha256"):
        return data, card.version
    if path is None:
        raise ModelError(
            f"{target}: sha256 {digest} is not the model card's graphs.{role}.sha256 "
            f"{listed.get('sha256')} ({card_path}); refusing to serve it"
        )
    return data, f"model+{digest[:12]}"


@dataclass
class GraphScorer:
    """The Scorer protocol on the model graph: engineered [N, 38] in, P(default) out."""

    session: Any
    version: str
    threshold: float
    width: int

    @classmethod
    def load(cls, settings: Settings, path: Path | None, *, shadow: bool) -> GraphScorer:
        data, version = graph_bytes(settings, "model", path)
        session = _session(data, settings.inference_threads, str(path or "model graph"))
        (inp,) = session.get_inputs()
        if inp.name != ENGINEERED or not isinstance(inp.shape[-1], int):
            raise ModelError(f"model graph: expected one input {ENGINEERED!r} [N, k], got {inp}")
        card = read_model_card(settings.resolved_model_card_path)
        threshold = card.threshold if settings.threshold is None else settings.threshold
        return cls(
            session,
            SHADOW_VERSION_PREFIX + version if shadow else version,
            threshold,
            inp.shape[-1],
        )

    def predict_default_probability(self, features: np.ndarray) -> np.ndarray:
        """One ONNX call; column 1 of the probabilities."""
        (probabilities,) = self.session.run(["probabilities"], {ENGINEERED: features})
        return np.asarray(probabilities)[:, 1]


def _serve(settings: Settings, stage: str, worker: Any, health: HealthState, metrics: Any) -> int:
    server = None
    if settings.http_port:
        server = HealthServer.from_settings(settings, health, metrics).start()
        log.info("health and metrics on %s:%d", server.host, server.port)

    def _on_signal(signum: int, _frame: Any) -> None:
        log.info("received %s: draining stage %s", signal.Signals(signum).name, stage)
        worker.request_stop()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        return int(worker.run())
    finally:
        if server is not None:
            server.stop()


def run_stage(
    settings: Settings, stage: str, *, model: Path | None = None, shadow: bool = False
) -> int:
    """Serve one stage until idle or stopped; the process exit code."""
    from creditstream.stages.worker import StageWorker

    if shadow and stage != "score":
        log.error("--shadow applies to the score stage only")
        return 2
    metrics, health = StageMetrics(stage), HealthState()
    if stage == "preprocess":

        def transform(batch: list[tuple[bytes, str | None]]) -> list[Any]:
            return [
                preprocess(
                    body,
                    content_type,
                    max_body_bytes=settings.max_body_bytes,
                    max_records=settings.max_records_per_message,
                )
                for body, content_type in batch
            ]

        worker = StageWorker(settings, stage, transform, metrics, health)
        return _serve(settings, stage, worker, health, metrics)
    if stage == "features":
        try:
            data, version = graph_bytes(settings, "features", model)
            card = read_model_card(settings.resolved_model_card_path)
            if version != card.version:
                # NOTE: the score stage labels rows with its model's version; features from a
                # graph the card does not list would be stored under the champion's name.
                raise ModelError(
                    f"{model}: a features graph the model card does not list; the staged "
                    "pipeline serves the card's features graph only"
                )
            session = _session(data, settings.inference_threads, "features graph")
        except ModelError as exc:
            log.error("%s", exc)
            return 2

        def engineer(X: np.ndarray) -> np.ndarray:
            (out,) = session.run([ENGINEERED], {FUSED_INPUT: X})
            return np.asarray(out)

        worker = StageWorker(
            settings,
            stage,
            lambda batch: features_batch([b for b, _ in batch], engineer),
            metrics,
            health,
        )
        return _serve(settings, stage, worker, health, metrics)
    if stage == "score":
        return _run_score(settings, model or settings.stage_model_path, shadow, metrics, health)
    log.error("unknown stage %r", stage)
    return 2


def _declare_shadow(settings: Settings) -> None:
    from creditstream.broker import connect
    from creditstream.stages.topology import bind_shadow

    connection = connect(settings, name="creditstream-stage-score-shadow-setup")
    try:
        bind_shadow(connection.channel(), settings)
    finally:
        connection.close()


def _run_score(
    settings: Settings,
    model: Path | None,
    shadow: bool,
    metrics: StageMetrics,
    health: HealthState,
) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from creditstream.consumer import Consumer, InputMode
    from creditstream.store import ResultsStore

    try:
        scorer = GraphScorer.load(settings, model, shadow=shadow)
    except ModelError as exc:
        log.error("%s", exc)
        return 2
    decode = decode_engineered(scorer.width)

    def traced(body: bytes, content_type: str | None, headers: dict[str, Any]) -> DecodedMessage:
        trace = trace_of(headers)
        metrics.waited(trace, now_us())
        decoded = decode(body, content_type, headers)
        metrics.stage_records.labels("score", "in").inc(len(decoded.records))
        return decoded

    mode = InputMode(
        decode=traced,
        id_suffix=f"|{scorer.version}" if shadow else "",
        publishes=not shadow,
        replies=not shadow,
        stage="score-shadow" if shadow else "score",
    )
    if shadow:
        # NOTE: the shadow queue gets its copy of the features through this binding; declared
        # here too so a shadow started before the features stage misses nothing after it.
        try:
            _declare_shadow(settings)
        except BROKER_DOWN_ERRORS as exc:
            log.warning(
                "could not declare the shadow binding yet (%s); the features stage does", exc
            )
    store = ResultsStore.from_settings(settings)
    try:
        store.create_schema()
        health.store_ok = True
    except SQLAlchemyError as exc:
        log.warning("results store not reachable at start (%s)", str(exc).splitlines()[0][:200])
    consumer = Consumer(
        stage_settings(settings, "score", shadow=shadow), scorer, store, metrics, health, mode=mode
    )
    try:
        return _serve(settings, "score", consumer, health, metrics)
    finally:
        store.dispose()

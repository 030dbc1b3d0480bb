"""The seed-style baseline: the naive design creditstream replaces.

One record per message; a scikit-learn pipeline `predict_proba` per record; one INSERT and
COMMIT per record; one ack per message. The pipeline is the project's own model family (the
chosen training candidate, fitted on the training split by `creditstream.training`), pickled
under `.cache/bench/` at bench time and never committed. Same queue type and prefetch as
creditstream, so only the per-record design differs.

Run as its own process: `python -m creditstream.bench.seed_style --model PKL --expect N`;
settings come from CREDITSTREAM_* variables; one JSON line with the timing goes to stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import pickle
import sys
import time
from pathlib import Path
from typing import Any

from creditstream.settings import Settings

log = logging.getLogger(__name__)


def seed_style_model_path(settings: Settings, cache_dir: Path) -> Path:
    """Fit (once per model version) and pickle the scikit-learn pipeline; return its path."""
    from creditstream.model_card import load_model_card

    card = load_model_card(settings.resolved_model_card_path)
    target = cache_dir / f"seed-style-{card.version.replace('+', '-')}.pkl"
    if target.is_file():
        return target
    from creditstream.data.dataset import load_dataset
    from creditstream.training.pipeline import CANDIDATES, split_holdout

    chosen = card.document.get("selection", {}).get("chosen")
    candidate = next((c for c in CANDIDATES if c.name == chosen), CANDIDATES[-1])
    split = split_holdout(load_dataset(settings.data_path))
    log.info("fitting the seed-style pipeline %s on %d rows", candidate.name, len(split.y_train))
    pipeline = candidate.build(settings.seed).fit(split.X_train, split.y_train)
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".tmp")
    partial.write_bytes(pickle.dumps(pipeline))
    partial.replace(target)
    return target


def drain_seed_style(
    settings: Settings, model_path: Path, expect: int, max_seconds: float
) -> dict[str, Any]:
    """Consume up to `expect` messages the naive way (bounded by `max_seconds`); time it."""
    import numpy as np
    from sqlalchemy import create_engine, insert

    from creditstream.broker import connect
    from creditstream.contract import FEATURES, ID_FIELD
    from creditstream.model_card import load_model_card
    from creditstream.store import ResultsStore

    # NOTE: the pickle is one this bench run wrote itself (seed_style_model_path).
    pipeline = pickle.loads(model_path.read_bytes())
    card = load_model_card(settings.resolved_model_card_path)
    engine = create_engine(settings.database_url.get_secret_value())
    store = ResultsStore(engine, settings.database_schema)
    store.create_schema()
    table = store.table
    state: dict[str, Any] = {"received": 0, "first": None, "last": 0.0}
    connection = connect(settings, name="creditstream-bench-seed-style", wait_s=10)
    channel = connection.channel()
    channel.basic_qos(prefetch_count=settings.prefetch)

    def on_message(ch: Any, method: Any, props: Any, body: bytes) -> None:
        received_at = time.time()
        if state["first"] is None:
            state["first"] = received_at
        record = json.loads(body)
        row = np.array([[record[name] for name in FEATURES]], dtype=np.float32)
        probability = float(pipeline.predict_proba(row)[0, 1])
        scored_at = time.time()
        with engine.begin() as conn:  # one INSERT + COMMIT per record
            conn.execute(
                insert(table).values(
                    request_id=props.message_id,
                    message_id=props.message_id,
                    record_id=str(record[ID_FIELD]),
                    probability=probability,
                    is_default=probability >= card.threshold,
                    threshold=card.threshold,
                    model_version=card.version,
                    received_at=_utc(received_at),
                    scored_at=_utc(scored_at),
                )
            )
        ch.basic_ack(method.delivery_tag)
        state["received"] += 1
        state["last"] = time.time()
        if state["received"] >= expect or state["last"] - state["first"] > max_seconds:
            ch.stop_consuming()

    channel.basic_consume(settings.requests_queue, on_message_callback=on_message)
    try:
        channel.start_consuming()
    finally:
        connection.close()
        engine.dispose()
    return {
        "messages": state["received"],
        "records": state["received"],
        "first_receive": state["first"],
        "last_ack": state["last"],
    }


def _utc(epoch_seconds: float) -> Any:
    import datetime as dt

    return dt.datetime.fromtimestamp(epoch_seconds, tz=dt.UTC)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the seed-style process."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--expect", type=int, required=True)
    parser.add_argument("--max-seconds", type=float, default=30.0)
    args = parser.parse_args(argv)
    result = drain_seed_style(Settings(), args.model, args.expect, args.max_seconds)
    print(json.dumps(result), flush=True)
    return 0 if result["messages"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())

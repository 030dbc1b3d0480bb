"""Micro-batcher: features in message order, predictions split back, replies shaped."""

from __future__ import annotations

import numpy as np
import pytest

from creditstream.batcher import MicroBatch, PendingMessage, reply_body, request_id_for
from creditstream.codec import Rejection, ValidRecord

pytestmark = pytest.mark.unit


def record(record_id: int, index: int = 0, value: float = 1.0) -> ValidRecord:
    return ValidRecord(record_id, index, tuple([value] * 23))


def message(
    tag: int,
    records: list[ValidRecord],
    *,
    is_batch: bool = False,
    rejections: list[Rejection] | None = None,
) -> PendingMessage:
    return PendingMessage(tag, f"m{tag}", records, rejections or [], is_batch, received_at=100.0)


def test_full_and_due() -> None:
    batch = MicroBatch(max_records=3)
    assert not batch and not batch.is_due(1e9, 0.02)
    batch.add(message(1, [record(1)]), now=100.0)
    assert not batch.is_full
    assert not batch.is_due(100.01, 0.02)
    assert batch.is_due(100.03, 0.02)
    batch.add(message(2, [record(2, 0), record(3, 1)], is_batch=True), now=100.01)
    assert batch.is_full and batch.n_records == 3 and batch.last_delivery_tag == 2


def test_features_keep_message_and_record_order() -> None:
    batch = MicroBatch(10)
    batch.add(message(1, [record(1, value=1.0)]), now=0.0)
    batch.add(message(2, [record(2, 0, 2.0), record(3, 1, 3.0)], is_batch=True), now=0.0)
    features = batch.features()
    assert features.dtype == np.float32 and features.shape == (3, 23)
    assert features[:, 0].tolist() == [1.0, 2.0, 3.0]


def test_predictions_split_per_message_with_idempotency_keys() -> None:
    batch = MicroBatch(10)
    batch.add(message(1, [record(1)]), now=0.0)
    batch.add(message(2, [record(2, 0), record(3, 2)], is_batch=True), now=0.0)
    per_message = batch.predictions(
        [0.1, 0.5, 0.9], threshold=0.5, model_version="v1", scored_at=101.0
    )
    assert [[p.request_id for p in ps] for ps in per_message] == [["/m1"], ["/m2#0", "/m2#2"]]
    assert [p.is_default for ps in per_message for p in ps] == [False, True, True]
    with pytest.raises(ValueError, match="2 probabilities for 3 records"):
        batch.predictions([0.1, 0.2], threshold=0.5, model_version="v1", scored_at=1.0)


@pytest.mark.parametrize(
    ("message_id", "index", "is_batch", "publisher", "expected"),
    [
        pytest.param("abc", 0, False, "alice", "alice/abc", id="single"),
        pytest.param("abc", 3, True, "alice", "alice/abc#3", id="batch"),
        pytest.param("abc", 3, True, "bob", "bob/abc#3", id="other-account"),
        pytest.param("a", 0, True, "u", "u/a#0", id="batch-a-record-0"),
    ],
)
def test_request_id(
    message_id: str, index: int, is_batch: bool, publisher: str, expected: str
) -> None:
    assert request_id_for(message_id, index, is_batch, publisher) == expected


def test_single_and_batch_keys_never_collide() -> None:
    # NOTE: message ids hold neither '/' nor '#' (creditstream.guard refuses them).
    single = {request_id_for(m, 0, False, u) for u in ("u", "u/x", "u#0") for m in ("a", "x")}
    batch = {
        request_id_for(m, i, True, u) for u in ("u", "u/x") for m in ("a", "x") for i in (0, 1)
    }
    assert not single & batch


def test_reply_interleaves_predictions_and_rejections_in_record_order() -> None:
    rejection = Rejection("out-of-range", "SEX=9 outside [1, 2]", index=1)
    pending = message(5, [record(1, 0), record(2, 2)], is_batch=True, rejections=[rejection])
    batch = MicroBatch(10)
    batch.add(pending, now=0.0)
    (predictions,) = batch.predictions([0.2, 0.7], threshold=0.5, model_version="v", scored_at=1.0)
    body = reply_body(pending, predictions)
    assert [entry.get("record_id", entry.get("error")) for entry in body] == [1, "out-of-range", 2]


def test_reply_for_single_record_is_an_object() -> None:
    pending = message(1, [record(9)])
    batch = MicroBatch(10)
    batch.add(pending, now=0.0)
    (predictions,) = batch.predictions([0.2], threshold=0.5, model_version="v", scored_at=1.0)
    assert reply_body(pending, predictions)["record_id"] == 9

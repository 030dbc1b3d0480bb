"""The consumer's failure rules as a table, with the fault injectors the table needs.

The same table runs against a fake channel (tests/unit/core/test_settlement.py) and against the
real broker (tests/integration/test_settlement_rules.py): what a rule expects does not depend on
which broker settles it.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy.exc import DataError, OperationalError

from creditstream.client import SMOKE_RECORD
from creditstream.codec import RejectReason
from creditstream.settlement import STORE_REJECTED

POISON_LIMIT_BAL = 777_000
REFUSED_PREFIX = "refuse-"


def good(record_id: int | str, **changes: Any) -> dict[str, Any]:
    """A valid record with this ID (and any feature changed)."""
    return {**SMOKE_RECORD, "ID": record_id, **changes}


@dataclass(frozen=True)
class Rule:
    """Messages in, and what must come out once they are all settled."""

    name: str
    messages: Sequence[tuple[bytes, str]]  # (body, message_id)
    stored: frozenset[str]
    dead: Counter[str]
    scoring_failures_before_success: int = 0
    store_transient_failures: int = 0
    returned_at_least: int = 0  # deliveries returned (retry) before the rule settles


def _body(value: Any) -> bytes:
    return json.dumps(value).encode()


RULES = [
    Rule("good-single", [(_body(good("a")), "m-a")], frozenset({"a"}), Counter()),
    Rule(
        "bad-body-dead-lettered-once",
        [(b"{oops", "m-bad"), (_body(good("b")), "m-b")],
        frozenset({"b"}),
        Counter({RejectReason.MALFORMED_JSON: 1}),
    ),
    Rule(
        "bad-record-alone-batch-mates-stored",
        [(_body([good("c1"), good("c2", PAY_0=11), good("c3")]), "m-c")],
        frozenset({"c1", "c3"}),
        Counter({RejectReason.RANGE: 1}),
    ),
    Rule(
        "store-refuses-one-record",
        [
            (_body(good(f"{REFUSED_PREFIX}d")), "m-d"),
            (_body(good("e")), "m-e"),
            (_body([good("f1"), good(f"{REFUSED_PREFIX}f2")]), "m-f"),
        ],
        frozenset({"e", "f1"}),
        Counter({STORE_REJECTED: 2}),
    ),
    Rule(
        "store-outage-holds-then-stores",
        [(_body(good("g")), "m-g"), (_body(good("h")), "m-h")],
        frozenset({"g", "h"}),
        Counter(),
        store_transient_failures=2,
    ),
    Rule(
        "scoring-fault-returns-the-delivery",
        [
            (_body(good("p", LIMIT_BAL=POISON_LIMIT_BAL)), "m-p"),
            (_body(good("i")), "m-i"),
        ],
        frozenset({"p", "i"}),
        Counter(),
        scoring_failures_before_success=2,
        returned_at_least=1,
    ),
    Rule(
        "all-rejected-batch-message",
        [(_body([good("j", SEX=9), {"ID": "k"}]), "m-jk")],
        frozenset(),
        Counter({RejectReason.RANGE: 1, RejectReason.MISSING: 1}),
    ),
]


@dataclass
class FlakyScorer:
    """Fails (a non-input error) on batches holding the poison record, the first N times."""

    inner: Any
    failures_left: int
    failures: int = 0
    version: str = field(init=False)
    threshold: float = field(init=False)

    def __post_init__(self) -> None:
        self.version, self.threshold = self.inner.version, self.inner.threshold

    def predict_default_probability(self, features: np.ndarray) -> np.ndarray:
        if self.failures_left > 0 and (features[:, 0] == POISON_LIMIT_BAL).any():
            self.failures_left -= 1
            self.failures += 1
            raise RuntimeError("simulated model failure")
        return self.inner.predict_default_probability(features)


class ConstantScorer:
    """A scorer without a model (unit tests): every record scores 0.25."""

    version, threshold = "const-1", 0.5

    def predict_default_probability(self, features: np.ndarray) -> np.ndarray:
        return np.full(len(features), 0.25, dtype=np.float32)


class FaultyStore:
    """Wraps a results store: refuses records whose ID starts with `refuse-` (as PostgreSQL
    refuses a NUL), and fails the first N writes as if the database were away."""

    def __init__(self, inner: Any, transient_failures: int = 0) -> None:
        self.inner = inner
        self.transient_left = transient_failures
        self.transient_raised = 0

    def write(self, predictions: Sequence[Any], event_of: Any = None) -> int:
        if self.transient_left > 0:
            self.transient_left -= 1
            self.transient_raised += 1
            raise OperationalError("INSERT", None, ConnectionError("connection refused"))
        if any(str(p.record_id).startswith(REFUSED_PREFIX) for p in predictions):
            raise DataError("INSERT", None, ValueError("value refused by the test store"))
        return int(self.inner.write(predictions, event_of))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class MemoryStore:
    """An idempotent in-memory results store (request_id → prediction)."""

    def __init__(self) -> None:
        self.rows: dict[str, Any] = {}
        self.outbox: list[Any] = []  # events committed with their rows (as ResultsStore does)

    def write(self, predictions: Sequence[Any], event_of: Any = None) -> int:
        new = {p.request_id: p for p in predictions if p.request_id not in self.rows}
        self.rows.update(new)
        if new and event_of is not None:
            self.outbox.append(event_of(list(new.values())))
        return len(new)

    def probe(self) -> None:
        """An ordinary row is always taken."""

    def record_ids(self) -> list[str]:
        return [str(p.record_id) for p in self.rows.values()]

"""The consumer serves only the model its card describes: sha256 checked at start.

A mismatched image or `modelOverride` volume used to score silently under the card's version
and threshold. Here a real `creditstream consume` is pointed at a tampered copy of the
committed model (still a valid ONNX graph that scores, just not the one the card names).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pika
import pika.exceptions
import pytest

from creditstream.client import SMOKE_RECORD
from creditstream.codec import encode_json
from creditstream.settings import Settings
from creditstream.topology import REQUEST_ROUTING_KEY, Topology
from tests.helpers import AMQP_URL, MODELS, count_rows, ready_in_queue, run_cli
from tests.integration.test_bad_input_and_rpc import AMQP_USER

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def tamper(model: Path) -> None:
    """Shift the tree ensemble's base score: a valid model that scores differently."""
    import onnx

    graph = onnx.load(str(model))
    (node,) = [n for n in graph.graph.node if n.op_type == "TreeEnsembleClassifier"]
    (base,) = [a for a in node.attribute if a.name == "base_values"]
    base.floats[0] += 1.0
    onnx.save(graph, str(model))


def drop_card_digest(card: Path) -> None:
    document = json.loads(card.read_text(encoding="utf-8"))
    del document["onnx"]["sha256"]
    card.write_text(json.dumps(document), encoding="utf-8")


def enqueue_one(settings: Settings) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        channel = connection.channel()
        Topology.from_settings(settings).declare(channel)
        channel.basic_publish(
            settings.requests_exchange,
            REQUEST_ROUTING_KEY,
            encode_json({**SMOKE_RECORD, "ID": "integrity"}),
            pika.BasicProperties(
                content_type="application/json", delivery_mode=2, user_id=AMQP_USER
            ),
        )
    finally:
        connection.close()


CASES = [
    pytest.param(None, 0, "consumer stopped", id="intact-copy-serves"),
    pytest.param(tamper, 2, "does not match the model card", id="tampered-model"),
    pytest.param(drop_card_digest, 2, "has no onnx.sha256", id="card-without-digest"),
]


@pytest.mark.parametrize(("damage", "code", "says"), CASES)
def test_consumer_refuses_a_model_its_card_does_not_describe(
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    damage: Callable[[Path], None] | None,
    code: int,
    says: str,
) -> None:
    copy = tmp_path / "model"
    copy.mkdir()
    for name in ("credit_default.onnx", "model_card.json"):
        shutil.copy(MODELS / name, copy / name)
    if damage is tamper:
        tamper(copy / "credit_default.onnx")
    elif damage is not None:
        damage(copy / "model_card.json")
    settings = make_settings(model_path=copy / "credit_default.onnx")
    enqueue_one(settings)
    result = run_cli(["consume", "--exit-when-idle", "2"], settings, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == code, output[-2000:]
    assert says in output, output[-2000:]
    if code:
        assert (ready_in_queue(settings), count_rows(settings)) == (1, 0), "nothing may be scored"
    else:
        assert (ready_in_queue(settings), count_rows(settings)) == (0, 1)

"""py-spy raw output → where the consumer's serving loop spends its samples."""

from __future__ import annotations

import pytest

from creditstream.bench.profile import OTHER, concern_of, record_command, summarize_raw

pytestmark = [pytest.mark.unit, pytest.mark.timeout(10)]

SERVE = "Consumer._serve (creditstream/consumer.py:172)"
FLUSH = "Consumer._flush (creditstream/consumer.py:282)"


@pytest.mark.parametrize(
    ("stack", "concern"),
    [
        pytest.param(
            [SERVE, FLUSH, "Session.run (onnxruntime/capi/onnxruntime_inference_collection.py:1)"],
            "inference (onnxruntime)",
            id="onnx",
        ),
        pytest.param(
            [SERVE, FLUSH, "ResultsStore.write (creditstream/store.py:1)", "wait (psycopg/x.py:1)"],
            "results store (SQLAlchemy + driver + database wait)",
            id="store",
        ),
        pytest.param(
            [SERVE, "decode_request (creditstream/codec.py:1)", "raw_decode (json/decoder.py:1)"],
            "JSON decode/encode + validation",
            id="json",
        ),
        pytest.param(
            # The innermost known frame wins: pika inside the publish, not the flush.
            [SERVE, FLUSH, "BlockingChannel.basic_publish (pika/adapters/blocking.py:1)"],
            "AMQP client (pika: frames, publish, confirm wait, ack)",
            id="pika",
        ),
        pytest.param([SERVE, FLUSH], OTHER, id="loop-itself"),
    ],
)
def test_concern_of(stack: list[str], concern: str) -> None:
    assert concern_of(stack) == concern


def test_summary_counts_only_the_serving_loop() -> None:
    raw = [
        "<module> (x.py:1);_find_and_load (<frozen importlib>:1) 50",  # start-up: ignored
        f"main (cli.py:1);{SERVE};{FLUSH};Session.run (onnxruntime/capi/x.py:1) 30",
        f"main (cli.py:1);{SERVE};decode_request (creditstream/codec.py:1) 10",
        "garbage line without a count",
    ]
    summary = summarize_raw(raw)
    assert summary["samples"] == 40
    assert summary["concerns"][0] == ["inference (onnxruntime)", 75.0]
    assert ["JSON decode/encode + validation", 25.0] in summary["concerns"]
    assert [FLUSH, 75.0] in summary["inclusive"]
    assert summary["self"][0] == ["Session.run (onnxruntime/capi/x.py:1)", 75.0]


def test_summary_of_no_samples() -> None:
    assert summarize_raw([])["samples"] == 0


def test_record_command_runs_the_target_after_a_separator() -> None:
    command = record_command("py-spy", __import__("pathlib").Path("/tmp/o.txt"), ["python", "-V"])
    assert command[:2] == ["py-spy", "record"]
    assert command[command.index("--") + 1 :] == ["python", "-V"]
    assert "raw" in command


def test_producer_profile_uses_the_publishing_run_as_root() -> None:
    from creditstream.bench.profile import PUBLISH_FRAME

    raw = [
        f"main (cli.py:1);{SERVE};Session.run (onnxruntime/x.py:1) 5",
        f"main (cli.py:1);{PUBLISH_FRAME} (creditstream/producer.py:1);"
        "iter_synthetic_records (creditstream/synthetic.py:1) 3",
        f"main (cli.py:1);{PUBLISH_FRAME} (creditstream/producer.py:1);"
        "basic_publish (pika/channel.py:1) 1",
    ]
    summary = summarize_raw(raw, root=PUBLISH_FRAME)
    assert summary["samples"] == 4
    assert summary["concerns"][0] == ["synthetic records (numpy sampling)", 75.0]

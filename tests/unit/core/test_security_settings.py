"""Settings that would undo a security bound are refused at start (review-security #9, #13)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from creditstream.guard import check_properties
from creditstream.producer import build_messages
from creditstream.settings import Settings


@pytest.mark.parametrize(
    "run_id",
    [
        pytest.param("nightly/2026-11-30", id="slash"),
        pytest.param("a#b", id="hash"),
        pytest.param("with space", id="space"),
        pytest.param("r\u00e9sum\u00e9", id="non-ascii"),
        pytest.param("r" * 119, id="too-long"),
    ],
)
def test_a_run_id_the_consumer_would_refuse_is_refused_at_start(run_id: str) -> None:
    with pytest.raises(ValidationError, match="run_id"):
        Settings(run_id=run_id)


def test_the_longest_run_id_gives_message_ids_the_consumer_accepts() -> None:
    settings = Settings(run_id="r" * 118)
    (message,) = build_messages(iter([{"ID": 1}]), 1, settings.run_id or "")
    import pika

    assert (
        check_properties(pika.BasicProperties(message_id=message.message_id, user_id="u")) is None
    )


@pytest.mark.parametrize(
    "prefixes",
    [
        pytest.param("amq.", id="amq"),
        pytest.param("replies", id="no-trailing-dot"),
        pytest.param("creditstream.", id="own-queues"),
        pytest.param("ok.,creditstream.dead.", id="dead-letter-queue"),
    ],
)
def test_reply_to_prefixes_that_reopen_other_queues_are_refused(prefixes: str) -> None:
    with pytest.raises(ValidationError, match="reply_to_prefixes"):
        Settings(reply_to_prefixes=prefixes)


def test_a_reply_prefix_of_its_own_is_accepted() -> None:
    assert Settings(reply_to_prefixes="replies.,app2.replies.").reply_to_prefix_list == [
        "replies.",
        "app2.replies.",
    ]


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"results_stream": "app.results"}, id="results-stream"),
        pytest.param({"requests_queue": "app.req", "reply_to_prefixes": "app.req."}, id="retry"),
    ],
)
def test_a_reply_prefix_admitting_the_results_stream_or_the_retry_queue_is_refused(
    overrides: dict[str, str],
) -> None:
    # NOTE: replies landing in the results stream would be read as prediction events; in the
    # retry queue, they would come back as requests (review-security #13 residual).
    with pytest.raises(ValidationError, match="reply_to_prefixes"):
        Settings(**{"reply_to_prefixes": "app.", **overrides})

"""Deliveries in hand are bounded: prefetch x max_body_bytes must fit the memory budget."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from creditstream.settings import Settings

pytestmark = pytest.mark.unit

MIB = 1024 * 1024


def test_prefetch_times_max_body_over_the_budget_is_refused_with_a_fix_it_message() -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(prefetch=1024, max_body_bytes=MIB, memory_budget_bytes=256 * MIB)
    text = str(caught.value)
    assert "prefetch" in text and "max_body_bytes" in text and "memory_budget_bytes" in text


def test_the_defaults_fit_the_default_budget_and_half_the_charts_512mi_limit() -> None:
    settings = Settings()
    in_hand = settings.prefetch * settings.max_body_bytes
    assert in_hand <= settings.memory_budget_bytes <= 512 * MIB // 2


@pytest.mark.parametrize(("prefetch", "body"), [(1, 256 * MIB), (65_535, 4096), (256, MIB)])
def test_combinations_within_the_budget_are_accepted(prefetch: int, body: int) -> None:
    Settings(prefetch=prefetch, max_body_bytes=body, memory_budget_bytes=256 * MIB)


def test_the_producer_refuses_a_message_over_max_body_bytes_before_publishing() -> None:
    from creditstream.client import SMOKE_RECORD
    from creditstream.producer import build_messages

    records = [{**SMOKE_RECORD, "ID": i} for i in range(50)]
    with pytest.raises(ValueError, match="max_body_bytes"):
        list(build_messages(records, 50, "run", max_body_bytes=4096))
    assert len(list(build_messages(records, 5, "run", max_body_bytes=4096))) == 10


def test_message_ids_that_are_not_utf8_get_keys_that_fit_and_do_not_collide() -> None:
    from creditstream.consumer import message_id_of

    assert message_id_of(b"\xde\xad", b"{}") != message_id_of("0xdead", b"{}")
    long_invalid = b"\xff" * 255
    key = message_id_of(long_invalid, b"{}")
    assert len(key) <= 200 and key == message_id_of(long_invalid, b"{}")
    assert message_id_of(b"ok", b"{}") == "ok"

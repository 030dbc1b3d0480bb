"""Scrapes parsed by prometheus_client; histogram maths with PromQL histogram_quantile semantics."""

from __future__ import annotations

import math
import socket
import threading

import pytest

from creditstream.harness.metrics import Histogram, HistogramAggregator, Metrics, scrape

pytestmark = [pytest.mark.unit, pytest.mark.timeout(10)]

EXPOSITION = """# HELP creditstream_end_to_end_seconds Producer publish to durable result.
# TYPE creditstream_end_to_end_seconds histogram
creditstream_end_to_end_seconds_bucket{le="0.1"} 10.0
creditstream_end_to_end_seconds_bucket{le="1.0"} 90.0
creditstream_end_to_end_seconds_bucket{le="10.0"} 100.0
creditstream_end_to_end_seconds_bucket{le="+Inf"} 100.0
creditstream_end_to_end_seconds_count 100.0
creditstream_end_to_end_seconds_sum 42.5
creditstream_records_total{outcome="scored"} 250.0
creditstream_records_total{outcome="rejected"} 3.0
"""


def test_parse_histogram_from_exposition() -> None:
    h = Metrics.parse(EXPOSITION).histogram("creditstream_end_to_end_seconds")
    assert h.buckets == ((0.1, 10.0), (1.0, 90.0), (10.0, 100.0), (math.inf, 100.0))
    assert (h.count, h.total) == (100.0, 42.5)


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        pytest.param(0.05, 0.05, id="inside-first-bucket-from-zero"),
        pytest.param(0.5, 0.1 + 0.9 * 40 / 80, id="linear-in-second-bucket"),
        pytest.param(0.9, 1.0, id="bucket-edge"),
        pytest.param(0.99, 1.0 + 9.0 * 9 / 10, id="third-bucket"),
    ],
)
def test_quantile_interpolates_like_histogram_quantile(q: float, expected: float) -> None:
    h = Metrics.parse(EXPOSITION).histogram("creditstream_end_to_end_seconds")
    assert h.quantile(q) == pytest.approx(expected)


def test_quantile_in_inf_bucket_returns_last_finite_bound() -> None:
    h = Histogram(((1.0, 1.0), (math.inf, 10.0)), 0.0, 10.0)
    assert h.quantile(0.99) == 1.0


def test_empty_histogram_has_no_quantile() -> None:
    assert Histogram.empty().quantile(0.5) is None
    assert Metrics.parse("").histogram("x").quantile(0.5) is None


def test_aggregator_keeps_exited_processes_and_windows_subtract() -> None:
    h = Metrics.parse(EXPOSITION).histogram("creditstream_end_to_end_seconds")
    agg = HistogramAggregator()
    agg.update(0, h)
    agg.update(1, h)
    before = agg.total()
    agg.update(1, h + h)  # process 1 observed 100 more; process 0 exited (no new scrape)
    window = agg.total() - before
    assert agg.total().count == 300.0
    assert window.count == 100.0 and window.quantile(0.5) == pytest.approx(h.quantile(0.5))


def test_adding_mismatched_buckets_fails() -> None:
    a = Histogram(((1.0, 1.0), (math.inf, 1.0)), 1.0, 1.0)
    b = Histogram(((2.0, 1.0), (math.inf, 1.0)), 1.0, 1.0)
    with pytest.raises(ValueError, match="different buckets"):
        _ = a + b


def test_counter_with_label_match() -> None:
    metrics = Metrics.parse(EXPOSITION)
    assert metrics.value("creditstream_records_total", outcome="scored") == 250.0
    assert metrics.value("creditstream_records_total") == 253.0
    assert metrics.value("creditstream_absent_total") == 0.0


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        pytest.param('creditstream_records_total{outcome="rejected"}', 3.0, id="one-label"),
        pytest.param("creditstream_records_total", 253.0, id="summed-over-labels"),
        pytest.param("creditstream_end_to_end_seconds_count", 100.0, id="no-labels"),
        pytest.param('creditstream_records_total{outcome="lost"}', 0.0, id="absent-series"),
    ],
)
def test_series_selected_as_in_promql(selector: str, expected: float) -> None:
    assert Metrics.parse(EXPOSITION)[selector] == expected


def test_get_tells_an_absent_series_from_a_zero_one() -> None:
    # NOTE: `[]` reads an absent series as 0, so `m[...] == 0` cannot fail on a missing metric.
    metrics = Metrics.parse(EXPOSITION + 'creditstream_records_total{outcome="zero"} 0.0\n')
    assert metrics.get('creditstream_records_total{outcome="zero"}') == 0.0
    assert metrics.get('creditstream_records_total{outcome="lost"}') is None
    assert metrics.get("creditstream_absent_total") is None
    assert metrics.get("creditstream_records_total") == 253.0
    with pytest.raises(KeyError):
        metrics.get("creditstream_records_total{outcome=scored}")


def test_a_truncated_scrape_is_refused() -> None:
    with pytest.raises(ValueError):
        Metrics.parse(EXPOSITION + "creditstream_records_total{outcome=")


@pytest.mark.parametrize(
    "selector",
    [
        pytest.param("creditstream_records_total{outcome=scored}", id="unquoted-value"),
        pytest.param("creditstream_records_total{outcome='scored'}", id="single-quotes"),
        pytest.param('creditstream_records_total{outcome="scored" }', id="stray-space"),
        pytest.param('creditstream_records_total{outcome="scored"', id="unclosed-brace"),
    ],
)
def test_a_malformed_selector_is_refused_not_widened(selector: str) -> None:
    # NOTE: read as `name` alone, it would silently sum every outcome (253 for 'scored').
    with pytest.raises(KeyError):
        Metrics.parse(EXPOSITION)[selector]


def _serve_once(reply: bytes) -> tuple[str, threading.Thread]:
    """A real HTTP endpoint on 127.0.0.1 that answers one request with `reply` and hangs up."""
    server = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        with server:
            connection, _ = server.accept()
            with connection:
                connection.recv(65536)
                connection.sendall(reply)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    return f"http://127.0.0.1:{server.getsockname()[1]}/metrics", thread


HEAD = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"


@pytest.mark.parametrize(
    "reply",
    [
        # A consumer killed while writing its page: the body ends before Content-Length.
        pytest.param(
            HEAD + b"Content-Length: 4096\r\n\r\n" + EXPOSITION.encode()[:200], id="cut-short"
        ),
        pytest.param(b"SSH-2.0-OpenSSH_9.2\r\n\r\n", id="not-http"),
        pytest.param(b"", id="hung-up"),
        pytest.param(HEAD + b"\r\n" + EXPOSITION.encode() + b"x_total{a=", id="malformed-page"),
    ],
)
def test_a_scrape_that_does_not_answer_a_whole_page_is_none(reply: bytes) -> None:
    url, thread = _serve_once(reply)
    assert scrape(url, timeout_s=5) is None
    thread.join(5)

"""Machine description parsing."""

from __future__ import annotations

import pytest

from creditstream.bench.machine import cpu_model

pytestmark = [pytest.mark.unit, pytest.mark.timeout(10)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n"
            "processor\t: 1\nmodel name\t: AMD EPYC 7B13\n",
            "AMD EPYC 7B13",
            id="x86",
        ),
        pytest.param("processor\t: 0\nBogoMIPS\t: 50.00\n", "unknown", id="no-model-name"),
        pytest.param("model name\t:\n", "unknown", id="empty-model-name"),
        pytest.param("", "unknown", id="empty"),
    ],
)
def test_cpu_model(text: str, expected: str) -> None:
    assert cpu_model(text) == expected

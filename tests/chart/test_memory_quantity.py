"""The broker's memory limit is read as Kubernetes reads a quantity, and refused in plain words.

The chart turns `rabbitmq.resources.limits.memory` into an absolute watermark (bytes). Every form
of a Kubernetes Quantity must give the bytes Kubernetes gives (apimachinery resource.Quantity:
binary Ki..Ei, decimal k..E, exponents 1e9 / 1E9, fractions); `1E` is an exabyte, not a broken
exponent. A limit that is set but is no quantity must be called that, not "must be set".
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from chart_checks import by_kind

from conftest import helm_template, parse_docs
from creditstream.observe import parse_quantity

pytestmark = [pytest.mark.chart, pytest.mark.timeout(300)]

WATERMARK = "rabbitmq.resources.limits.memory"


def rendered_watermark(helm: Path, memory: str, kind: str = "--set-string") -> int:
    result = helm_template(helm, extra=(kind, f"{WATERMARK}={memory}"), check=False)
    assert result.returncode == 0, result.stderr
    for config in by_kind(parse_docs(result.stdout), "ConfigMap"):
        text = config.get("data", {}).get("rabbitmq.conf", "")
        for line in text.splitlines():
            if line.startswith("vm_memory_high_watermark.absolute"):
                return int(line.split("=", 1)[1])
    raise AssertionError("no vm_memory_high_watermark.absolute in the rendered rabbitmq.conf")


@pytest.mark.parametrize(
    ("memory", "expected_bytes"),
    [
        pytest.param("1073741824", 2**30, id="plain-bytes"),
        pytest.param("1Gi", 2**30, id="Gi"),
        pytest.param("1.5Gi", 3 * 2**29, id="fraction"),
        pytest.param("1500M", 1_500_000_000, id="M"),
        pytest.param("1e9", 10**9, id="exponent"),
        pytest.param("1E9", 10**9, id="exponent-upper"),
        pytest.param("1Pi", 2**50, id="Pi"),
        pytest.param("1P", 10**15, id="P"),
        pytest.param("1E", 10**18, id="exa"),
        pytest.param("1Ei", 2**60, id="Ei"),
    ],
)
def test_every_quantity_form_gives_the_bytes_kubernetes_reads(
    helm: Path, memory: str, expected_bytes: int
) -> None:
    assert parse_quantity(memory) == expected_bytes
    ratio = 0.6  # values.yaml rabbitmq.memoryHighWatermark
    assert rendered_watermark(helm, memory) == math.floor(expected_bytes * ratio)


def test_a_yaml_number_is_read_as_its_bytes(helm: Path) -> None:
    # NOTE: `--set` parses 1e9 as a float64; toString gives "1e+09".
    assert rendered_watermark(helm, "1e9", kind="--set") == math.floor(10**9 * 0.6)


@pytest.mark.parametrize("memory", ["1GB", "lots", "1.5.3Gi", "Gi"])
def test_a_limit_that_is_no_quantity_is_called_that(helm: Path, memory: str) -> None:
    result = helm_template(helm, extra=("--set-string", f"{WATERMARK}={memory}"), check=False)
    assert result.returncode != 0
    assert f"{WATERMARK}={memory} is not a Kubernetes memory quantity" in result.stderr, (
        result.stderr
    )
    assert "must be set" not in result.stderr


def test_an_unset_limit_is_asked_for(helm: Path) -> None:
    result = helm_template(helm, sets=(f"{WATERMARK}=null",), check=False)
    assert result.returncode != 0
    assert f"{WATERMARK} must be set" in result.stderr, result.stderr

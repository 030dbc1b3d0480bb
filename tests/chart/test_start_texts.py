"""One "how to start RabbitMQ/PostgreSQL" text, and it names the images the chart deploys."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from conftest import CHART, REPO_ROOT
from creditstream import preflight

pytestmark = pytest.mark.chart

IMAGE_TAG = re.compile(r"\b(rabbitmq|postgres):\d[\w.-]*")


def chart_image(component: str) -> str:
    image = yaml.safe_load((CHART / "values.yaml").read_text())[component]["image"]
    return f"{image['repository']}:{image['tag']}"


def test_the_start_texts_name_the_charts_images() -> None:
    assert chart_image("rabbitmq") == preflight.RABBITMQ_IMAGE
    assert chart_image("postgresql") == preflight.POSTGRES_IMAGE
    assert preflight.RABBITMQ_IMAGE in preflight.HOW_TO_START["RabbitMQ"]
    assert preflight.POSTGRES_IMAGE in preflight.HOW_TO_START["PostgreSQL"]


def test_no_other_image_tag_is_written_anywhere() -> None:
    texts = [REPO_ROOT / "README.md", *(REPO_ROOT / "docs").glob("*.md")]
    texts += (REPO_ROOT / "services" / "creditstream").rglob("*.py")
    wanted = {"rabbitmq": preflight.RABBITMQ_IMAGE, "postgres": preflight.POSTGRES_IMAGE}
    stray = {
        f"{path.relative_to(REPO_ROOT)}: {match[0]}"
        for path in texts
        for match in IMAGE_TAG.finditer(Path(path).read_text(errors="replace"))
        if match[0] != wanted[match[1]]
    }
    assert not stray, sorted(stray)

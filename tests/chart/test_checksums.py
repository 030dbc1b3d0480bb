"""Pods roll when (and only when) what they read changes: the checksum annotations.

Install vs upgrade: on install the chart generates a password (randAlphaNum); on upgrade
`lookup` returns the stored one. Both are "a generated password the user never chose", so a
checksum that is stable across installs must not depend on it. `helm template` has no cluster
(lookup returns nothing), so two renders of the same values generate two different passwords:
exactly the install -> upgrade difference. The pod-template annotations must be equal across
them, while the Secrets do differ (which keeps the test from passing vacuously).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from chart_checks import component, secret_data

from conftest import CHART, helm_template, parse_docs

pytestmark = [pytest.mark.chart, pytest.mark.timeout(300)]

Docs = list[dict[str, Any]]
CASES = [
    pytest.param((), id="defaults"),
    pytest.param((CHART / "ci" / "postgresql-values.yaml",), id="postgresql"),
]


def _render(helm: Path, files: tuple[Path, ...] = (), sets: tuple[str, ...] = ()) -> Docs:
    return parse_docs(helm_template(helm, files, sets).stdout)


def pod_annotations(docs: Docs) -> dict[str, dict[str, str]]:
    """{workload name: checksum/* annotations of its pod template}."""
    out = {}
    for doc in docs:
        if doc["kind"] in {"Deployment", "StatefulSet"}:
            annotations = doc["spec"]["template"]["metadata"].get("annotations", {})
            out[doc["metadata"]["name"]] = {
                k: v for k, v in annotations.items() if k.startswith("checksum/")
            }
    return out


def _consumer(docs: Docs) -> dict[str, str]:
    (deployment,) = component(docs, "Deployment", "consumer")
    return pod_annotations([deployment])[deployment["metadata"]["name"]]


@pytest.mark.parametrize("files", CASES)
def test_checksums_do_not_change_between_install_and_upgrade(
    helm: Path, files: tuple[Path, ...]
) -> None:
    install, upgrade = _render(helm, files), _render(helm, files)
    generated = {name: data for name, data in secret_data(install).items() if data}
    assert generated != {k: secret_data(upgrade)[k] for k in generated}, (
        "the two renders generated the same passwords: the test would prove nothing"
    )
    assert pod_annotations(install) == pod_annotations(upgrade)
    assert all(pod_annotations(install).values()), "every workload has checksum annotations"


CHANGES = [
    pytest.param(
        (),
        ("externalDatabase.url=postgresql+psycopg://a:b@db-a:5432/x",),
        ("externalDatabase.url=postgresql+psycopg://a:b@db-b:5432/x",),
        id="external-database-url",
    ),
    pytest.param(
        (CHART / "ci" / "postgresql-values.yaml",),
        ("postgresql.auth.password=first",),
        ("postgresql.auth.password=second",),
        id="database-password",
    ),
    pytest.param(
        (),
        ("rabbitmq.auth.password=first",),
        ("rabbitmq.auth.password=second",),
        id="broker-password",
    ),
    pytest.param((), ("rabbitmq.vhost=a",), ("rabbitmq.vhost=b",), id="broker-vhost"),
    pytest.param((), ("consumer.queueName=a",), ("consumer.queueName=b",), id="settings"),
]


@pytest.mark.parametrize(("files", "before", "after"), CHANGES)
def test_the_consumer_rolls_when_a_secret_it_reads_changes(
    helm: Path, files: tuple[Path, ...], before: tuple[str, ...], after: tuple[str, ...]
) -> None:
    # NOTE: fixed passwords elsewhere, so that nothing but the change can move the checksums.
    fixed = ("rabbitmq.auth.password=fixed", "postgresql.auth.password=fixed")
    assert _consumer(_render(helm, files, fixed)) == _consumer(_render(helm, files, fixed))
    assert _consumer(_render(helm, files, fixed + before)) != _consumer(
        _render(helm, files, fixed + after)
    )


def test_broker_and_database_roll_when_their_password_changes(helm: Path) -> None:
    files = (CHART / "ci" / "postgresql-values.yaml",)
    sets = ("rabbitmq.auth.password=first", "postgresql.auth.password=first")
    changed = ("rabbitmq.auth.password=second", "postgresql.auth.password=second")
    before, after = (
        pod_annotations(_render(helm, files, sets)),
        pod_annotations(_render(helm, files, changed)),
    )
    for name in ("cs-creditstream-rabbitmq", "cs-creditstream-postgresql"):
        assert before[name] != after[name], name


def test_unrelated_values_do_not_roll_the_consumer(helm: Path) -> None:
    assert _consumer(_render(helm, (), ("producer.limit=10",))) == _consumer(
        _render(helm, (), ("producer.limit=20",))
    )

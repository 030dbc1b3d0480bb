"""Tearing down an isolated run leaves the default exchanges and queues intact (real broker).

Each test works in a vhost of its own that holds the default topology, as a deployment on the
shared broker would: a teardown that reached for a default name would delete it there.
"""

from __future__ import annotations

import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest
import sqlalchemy

from creditstream.harness import broker_vhost, isolated_run, postgres_schema
from creditstream.settings import Settings
from creditstream.topology import (
    SharedTopologyError,
    declare_topology,
    default_names,
    delete_topology,
    isolated_names,
)
from tests.helpers import AMQP_URL, PG_URL

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

EXCHANGES = ("requests_exchange", "dead_letter_exchange", "predictions_exchange")
QUEUES = ("requests_queue", "dead_letter_queue", "results_stream")


@pytest.fixture
def vhost_url() -> Iterator[str]:
    """An AMQP URL into a vhost of the test's own holding the default topology."""
    with broker_vhost(AMQP_URL, f"cs-isolation-{uuid.uuid4().hex[:10]}") as url:
        declare_topology(Settings(amqp_url=url))
        yield url


def existing(url: str, names: dict[str, str]) -> set[str]:
    """Which of the settings fields in `names` name an exchange/queue that exists at `url`."""
    found = set()
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        for field, name in names.items():
            channel = connection.channel()
            try:
                if field in QUEUES:
                    channel.queue_declare(name, passive=True)
                else:
                    channel.exchange_declare(name, passive=True)
                found.add(field)
                channel.close()
            except pika.exceptions.ChannelClosedByBroker as exc:
                assert exc.reply_code == 404, exc
    finally:
        connection.close()
    return found


def test_delete_topology_refuses_names_left_at_their_defaults(vhost_url: str) -> None:
    # The autoscale test built its names by hand and left the predictions exchange out: its
    # teardown deleted the shared `creditstream.predictions`.
    prefix = f"creditstream.test.autoscale.{uuid.uuid4().hex[:10]}"
    hand_built = {k: v for k, v in isolated_names(prefix).items() if k != "predictions_exchange"}
    settings = Settings(amqp_url=vhost_url, **hand_built)
    declare_topology(settings)
    with pytest.raises(SharedTopologyError, match=r"creditstream\.predictions"):
        delete_topology(settings)
    assert existing(vhost_url, default_names()) == set(EXCHANGES + QUEUES)


RUNS = [
    pytest.param({"store": "sqlite"}, id="sqlite"),
    pytest.param({"store": "sqlite", "declare": False}, id="sqlite-not-declared"),
    pytest.param({"store": "sqlite", "keep_store": True}, id="sqlite-kept"),
    pytest.param({"store": "postgresql", "pg_url": PG_URL}, id="postgresql-schema"),
    pytest.param(
        {"store": "sqlite", "base": {"predictions_exchange": "elsewhere.predictions"}},
        id="base-with-own-names",
    ),
]


@pytest.mark.parametrize("run", RUNS)
def test_tearing_down_an_isolated_run_leaves_the_defaults(
    vhost_url: str, run: dict[str, Any], tmp_path: Path
) -> None:
    options = dict(run)
    base = Settings(amqp_url=vhost_url, **options.pop("base", {}))
    prefix = f"creditstream.test.isolation.{uuid.uuid4().hex[:10]}"
    with isolated_run(base, prefix, sqlite_file=tmp_path / "run.sqlite", **options) as settings:
        ours = {field: getattr(settings, field) for field in EXCHANGES + QUEUES}
        assert not set(ours.values()) & set(default_names().values())
        declare_topology(settings)  # as its consumers and producers would
        assert existing(vhost_url, ours) == set(ours)
    assert existing(vhost_url, ours) == set()
    assert existing(vhost_url, default_names()) == set(EXCHANGES + QUEUES)


def test_isolation_never_adopts_what_exists_already(vhost_url: str) -> None:
    # A name clash must fail up front: adopting the vhost or schema would delete it afterwards.
    vhost = urllib.parse.unquote(urllib.parse.urlsplit(vhost_url).path[1:])
    with pytest.raises(ValueError, match="exists already"), broker_vhost(AMQP_URL, vhost):
        pass
    assert existing(vhost_url, default_names()) == set(EXCHANGES + QUEUES)
    name = f"cs_clash_{uuid.uuid4().hex[:10]}"
    with postgres_schema(PG_URL, name) as schema:
        with pytest.raises(sqlalchemy.exc.ProgrammingError), postgres_schema(PG_URL, name):
            pass
        engine = sqlalchemy.create_engine(PG_URL)
        with engine.connect() as conn:
            assert conn.execute(
                sqlalchemy.text("SELECT count(*) FROM pg_namespace WHERE nspname = :s"),
                {"s": schema},
            ).scalar_one()
        engine.dispose()


ON_SHARED_NAMES = [
    pytest.param("creditstream", {}, id="prefix-that-spells-the-defaults"),
    pytest.param(
        "creditstream.test.isolation.x",
        {"requests_queue": "creditstream.requests"},
        id="override-back-to-a-default",
    ),
]


@pytest.mark.parametrize(("prefix", "overrides"), ON_SHARED_NAMES)
def test_an_isolated_run_on_shared_names_is_refused_before_it_starts(
    prefix: str, overrides: dict[str, str], tmp_path: Path
) -> None:
    # NOTE: refusing only at teardown is too late: the run's consumers would already have
    # eaten the shared queue and its producer published into it.
    with broker_vhost(AMQP_URL, f"cs-isolation-{uuid.uuid4().hex[:10]}") as url:
        entered = []
        with (
            pytest.raises(SharedTopologyError),
            isolated_run(
                Settings(amqp_url=url), prefix, sqlite_file=tmp_path / "r.sqlite", **overrides
            ) as settings,
        ):
            entered.append(settings)
        assert entered == [], "the run started on the shared names"
        assert existing(url, default_names()) == set(), "the shared names were declared"


def test_delete_topology_refuses_a_default_name_in_any_field(vhost_url: str) -> None:
    names = isolated_names(f"creditstream.test.isolation.{uuid.uuid4().hex[:10]}")
    names["dead_letter_queue"] = "creditstream.requests"  # another field's default
    with pytest.raises(SharedTopologyError, match=r"creditstream\.requests"):
        delete_topology(Settings(amqp_url=vhost_url, **names))
    assert existing(vhost_url, default_names()) == set(EXCHANGES + QUEUES)


def test_long_non_ascii_run_tags_keep_their_unique_end_in_postgresql() -> None:
    # NOTE: PostgreSQL cuts identifiers at 63 BYTES; "ü" is two. Cut there, both tags below
    # would lose their unique end and the second run would collide with the first.
    tags = [f"cs_{'ü' * 40}_{uuid.uuid4().hex[:8]}" for _ in range(2)]
    with postgres_schema(PG_URL, tags[0]) as first, postgres_schema(PG_URL, tags[1]) as second:
        assert first != second
        engine = sqlalchemy.create_engine(PG_URL)
        try:
            with engine.connect() as conn:
                found = conn.execute(
                    sqlalchemy.text("SELECT nspname FROM pg_namespace WHERE nspname IN (:a, :b)"),
                    {"a": first, "b": second},
                ).scalars()
                assert sorted(found) == sorted([first, second]), "names as created"
        finally:
            engine.dispose()


@pytest.mark.parametrize("folder", ["run ?x=1", "run #2", "100%41 done"])
def test_an_isolated_sqlite_store_lives_at_its_path_whatever_the_characters(
    folder: str, tmp_path: Path
) -> None:
    # NOTE: pasted into `sqlite:///PATH`, `?` starts the query string, `#` a fragment and `%41`
    # is read as `A`: the store went to another file (or failed to open).
    from creditstream.store import ResultsStore

    path = tmp_path / folder / "results.sqlite"
    path.parent.mkdir()
    prefix = f"creditstream.test.sqlitepath.{uuid.uuid4().hex[:8]}"
    base = Settings(amqp_url=AMQP_URL)
    with isolated_run(base, prefix, sqlite_file=path) as settings:
        url = sqlalchemy.engine.make_url(settings.database_url.get_secret_value())
        assert url.database == str(path)
        store = ResultsStore.from_settings(settings)
        try:
            store.create_schema()
        finally:
            store.dispose()
        assert path.is_file()
        assert sorted(p.name for p in tmp_path.rglob("*.sqlite*")) == ["results.sqlite"]
    assert not path.exists()

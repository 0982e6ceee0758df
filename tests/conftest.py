"""Shared fixtures: real servers, started on first use, once per test session.

* ``kafka``: a :class:`TansuBroker` (``.bootstrap``).
* ``influx``: an :class:`InfluxDB` with the v2 shim and a ``streamlstm`` database
  (``.url``, ``.engine_url``, ``.query()``, ``.create_database()``).
* ``prometheus_factory``: ``start(targets, scrape_interval=1.0, rule_files=())`` returns a
  started :class:`Prometheus`; all of them stop at the end of the session.
* ``unique_name``: ``unique_name(prefix)`` -> ``prefix_<hex>``, a fresh topic, group or
  database name for each test.

A server that cannot start makes the tests that asked for it fail with the server's log in
the message; nothing is skipped.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from streamlstm.devstack import InfluxDB, Prometheus, TansuBroker

INTEGRATION_DIR = Path(__file__).parent / "integration"
INFLUX_DATABASE = "streamlstm"


def make_unique_name(prefix: str) -> str:
    """``prefix_<12 hex digits>``: valid as a Kafka topic, group id and InfluxDB database."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(INTEGRATION_DIR):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session", autouse=True)
def _state_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Whatever a test runs on the bundled model checkpoints under a temporary state home,
    never the user's ``~/.local/state``."""
    saved = os.environ.get("XDG_STATE_HOME")
    os.environ["XDG_STATE_HOME"] = str(tmp_path_factory.mktemp("state-home"))
    yield
    if saved is None:
        os.environ.pop("XDG_STATE_HOME", None)
    else:
        os.environ["XDG_STATE_HOME"] = saved


@pytest.fixture(scope="session")
def kafka() -> Iterator[TansuBroker]:
    """A tansu broker for the whole session; use a fresh topic per test (``unique_name``)."""
    with TansuBroker() as broker:
        yield broker


@pytest.fixture(scope="session")
def influx() -> Iterator[InfluxDB]:
    """InfluxDB 1.x behind the v2 shim, with the database ``streamlstm`` created."""
    with InfluxDB(databases=[INFLUX_DATABASE]) as server:
        yield server


PrometheusFactory = Callable[..., Prometheus]


@pytest.fixture(scope="session")
def prometheus_factory() -> Iterator[PrometheusFactory]:
    """``start(targets, *, scrape_interval=1.0, rule_files=())`` -> a started Prometheus."""
    started: list[Prometheus] = []

    def start(
        targets: Sequence[str],
        *,
        scrape_interval: float = 1.0,
        rule_files: Sequence[str | Path] = (),
    ) -> Prometheus:
        server = Prometheus(targets, scrape_interval=scrape_interval, rule_files=rule_files)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def unique_name() -> Callable[[str], str]:
    """``unique_name(prefix)`` -> a name no other test uses (see ``make_unique_name``)."""
    return make_unique_name

"""Fixtures over the shared real peers (tests/helpers/peers.py): a Mosquitto broker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.peers import Broker, start_broker


@pytest.fixture(scope="session")
def mqtt_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """One broker for the whole session (tests must use unique topics)."""
    broker = start_broker(tmp_path_factory.mktemp("broker"))
    yield broker
    broker.stop()


@pytest.fixture
def own_mqtt_broker(tmp_path: Path) -> Iterator[Broker]:
    """A broker for one test alone, for tests that restart or stop it."""
    broker = start_broker(tmp_path)
    yield broker
    broker.stop()


@pytest.fixture
def metrics() -> Iterator[Any]:
    """An HTTP server of /metrics pages (tests/adapters/signals/metrics_http.MetricsServer)."""
    from tests.adapters.signals.metrics_http import metrics_server

    with metrics_server() as server:
        yield server

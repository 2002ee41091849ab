"""The MQTT session against a Mosquitto that demands TLS, a client certificate and a password, as
a site's broker does; and the session's own messages (birth, last will) and manual acks."""

from __future__ import annotations

import asyncio
import dataclasses
import getpass
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.transport.mqtt_session import (
    Announcement,
    MqttError,
    MqttSession,
    MqttSettings,
    TlsFiles,
)
from tests.adapters.signals.openadr_rig import Pki
from tests.helpers.peers import MOSQUITTO, Broker, free_port


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[Broker, Pki]]:
    if MOSQUITTO is None:
        pytest.skip("no mosquitto binary: .ci/run installs it")
    pki = Pki.create(tmp_path)  # a CA, a server certificate for 127.0.0.1, a client certificate
    passwords = tmp_path / "passwords"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "site", "s3cret"], check=True)
    port = free_port()
    config = tmp_path / "mosquitto.conf"
    # mosquitto started as root drops to user "mosquitto", who cannot read pytest's 0700 folders
    config.write_text(
        f"user {getpass.getuser()}\nlistener {port} 127.0.0.1\n"
        f"cafile {pki.ca_file}\ncertfile {pki.vtn_cert}\nkeyfile {pki.vtn_key}\n"
        "require_certificate true\n"
        f"allow_anonymous false\npassword_file {passwords}\n"
    )
    broker = Broker(host="127.0.0.1", port=port, config_path=config)
    broker.start()
    yield broker, pki
    broker.stop()


def _settings(broker: Broker, pki: Pki, **changes: object) -> MqttSettings:
    settings = MqttSettings(
        host=broker.host,
        port=broker.port,
        client_id=f"tls-{uuid.uuid4().hex[:6]}",
        username="site",
        password="s3cret",
        tls=TlsFiles(str(pki.ca_file), str(pki.ven_cert), str(pki.ven_key)),
        ack_timeout_s=2.0,
    )
    return dataclasses.replace(settings, **changes)  # type: ignore[arg-type]


def test_tls_with_client_certificate_and_password(tls_broker: tuple[Broker, Pki]) -> None:
    broker, pki = tls_broker

    async def scenario() -> None:
        session = MqttSession(_settings(broker, pki))
        await session.connect(5)
        got: asyncio.Queue[bytes] = asyncio.Queue()
        session.subscribe("site/echo", lambda _topic, payload: got.put_nowait(payload))
        await asyncio.sleep(0.1)
        await session.publish("site/echo", b"over tls")
        assert await asyncio.wait_for(got.get(), 5) == b"over tls"
        await session.close()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "changes",
    [{"password": "wrong"}, {"tls": "no client certificate"}],
    ids=["wrong password", "no client certificate"],
)
def test_a_broker_that_refuses_us_is_an_mqtt_error(
    tls_broker: tuple[Broker, Pki], changes: dict[str, object]
) -> None:
    broker, pki = tls_broker
    if changes.get("tls"):
        changes = {"tls": TlsFiles(str(pki.ca_file))}

    async def scenario() -> None:
        session = MqttSession(_settings(broker, pki, **changes))
        with pytest.raises(MqttError, match="no CONNACK"):
            await session.connect(1.0)
        await session.close()

    asyncio.run(scenario())


def test_birth_and_last_will_and_acks_after_handling(mqtt_broker: Broker) -> None:
    status = f"test/{uuid.uuid4().hex[:8]}/status"

    async def scenario() -> None:
        watcher = MqttSession(MqttSettings(host=mqtt_broker.host, port=mqtt_broker.port))
        seen: asyncio.Queue[bytes] = asyncio.Queue()
        watcher.subscribe(status, lambda _topic, payload: seen.put_nowait(payload))
        await watcher.connect()
        service = MqttSession(
            MqttSettings(
                host=mqtt_broker.host,
                port=mqtt_broker.port,
                client_id=f"svc-{uuid.uuid4().hex[:6]}",
                keepalive_s=1,
                clean_start=False,
                session_expiry_s=60,
                manual_acks=True,
                will=Announcement(status, "offline"),
                birth=Announcement(status, "online"),
            )
        )
        handled: asyncio.Queue[bytes] = asyncio.Queue()
        service.subscribe(f"{status}/in", lambda _topic, payload: handled.put_nowait(payload))
        await service.connect()
        assert await asyncio.wait_for(seen.get(), 5) == b"online"
        await watcher.publish(f"{status}/in", b"dispatch")
        assert await asyncio.wait_for(handled.get(), 5) == b"dispatch"  # and PUBACKed after
        # an unclean end (the socket drops, no DISCONNECT): the broker publishes the will
        service._client.socket().close()  # type: ignore[union-attr]
        assert await asyncio.wait_for(seen.get(), 10) == b"offline"
        await service.close()
        await watcher.close()

    asyncio.run(scenario())

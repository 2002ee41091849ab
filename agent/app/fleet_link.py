"""The site on the fleet bus (docs/fleet.md): what it publishes, and the hub's commands.

Publishing: the fleet link is a confirmed publisher like the MQTT link (agent.service.outbox):
acks are stored outbox rows, each published to the site's GF_OUT stream with a message id made
from its content (a re-send after an outage is stored once) and deleted once both the MQTT
broker (when the site has one) and the site's NATS server confirmed it. The site's server is
its own, on the same host: a cut link to the hub does not stop a write, and what was written
reaches the hub when the link heals. Telemetry and decisions go the same way, unconfirmed, one
at a time in order, and are dropped only while the site's own server is down (state is
superseded every few seconds).

Commands: the site reads the hub's GF_FLEET_CMD across the leaf link with its own durable
consumer there, filtered to its subject. (A stream on the site sourcing the hub's was tried
first: after a cut the server retries a source on a backoff growing to 2 minutes, so commands
sent after the heal, with the link up, arrived expired.) While the link is down the commands
wait in the hub's stream, the consumer's position with them. Each command goes to the cycle's
inbox like an MQTT message (agent.service.fleet_commands judges it there) and is acknowledged
to JetStream once the cycle that took it has committed, whatever its outcome: one not
acknowledged (a crash, a cut) is delivered again, and its sequence number, stored in that
commit, makes the copy a refusal instead of a second application.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable

from pydantic import BaseModel

from adapters.transport.nats_bus import BusAddress, FleetBusError, NatsBus, out_subject
from agent.config.fleet import FleetConfig
from agent.ports import Clock
from agent.service.fleet_commands import FleetCommands
from agent.service.outbox import ConfirmedPublisher

__all__ = ["FleetLink", "TeePublisher", "bus_address"]

log = logging.getLogger("gridflex.fleet")

RETRY_S = 2.0  # between tries to reach the site's own NATS server
_QUEUED_STATE = 1_000  # telemetry kept while a write is slow: the oldest is dropped beyond it


def bus_address(config: FleetConfig, site_id: str) -> BusAddress:
    password = None if config.password is None else config.password.get_secret_value()
    return BusAddress(config.url, config.user, password, config.creds_file, config.ca_file,
                      name=f"gridflex-{site_id}")  # fmt: skip


class FleetLink:
    """The site's connection to its leaf node: a ConfirmedPublisher, and the command reader."""

    def __init__(self, config: FleetConfig, site_id: str, bus: NatsBus | None = None) -> None:
        self._config = config
        self._site = site_id
        self._domain = config.domain or site_id
        self.bus = bus or NatsBus(bus_address(config, site_id))
        self._state: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(_QUEUED_STATE)
        self._on_connect: list[Callable[[], None]] = []
        self._ready = asyncio.Event()
        # the outbox waits for a connection to publish the acks it holds: wake it after the
        # site's server comes back, as after the first connection
        self.bus.when_reconnected(self._connected)

    # -- ConfirmedPublisher ------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._ready.is_set() and self.bus.connected

    def when_connected(self, callback: Callable[[], None]) -> None:
        self._on_connect.append(callback)

    def send(self, topic: str, message: BaseModel | str, *, retain: bool = False) -> None:
        del retain  # a stream keeps every message: the hub reads the last one of a subject
        if not self.connected:
            return
        payload = message if isinstance(message, str) else message.model_dump_json()
        if self._state.full():
            self._state.get_nowait()
        self._state.put_nowait((topic, payload.encode()))

    async def publish_confirmed(self, topic: str, payload: str, *, retain: bool) -> None:
        del retain
        subject, data, msg_id = self._addressed(topic, payload.encode())
        while True:
            try:
                await self.bus.publish(subject, data, msg_id=msg_id)
                return
            except FleetBusError as exc:  # the outbox keeps the row; again, in order
                log.warning("fleet: ack on %s not stored yet (%s); retrying", topic, exc)
                await asyncio.sleep(RETRY_S)

    def _addressed(self, topic: str, data: bytes) -> tuple[str, bytes, str]:
        """(subject, data, message id): the id from the content, so a copy is stored once."""
        subject = out_subject(self._config.subject_prefix, self._site, topic)
        return subject, data, hashlib.sha256(subject.encode() + b"\n" + data).hexdigest()[:40]

    # -- running ----------------------------------------------------------------------------
    async def start(self) -> None:
        """Reach the site's server and set up its streams, trying until it answers."""
        while True:
            try:
                if not self.bus.connected:
                    await self.bus.connect()
                await self.bus.ensure_site(prefix=self._config.subject_prefix, site=self._site,
                                           out_max_bytes=self._config.out_max_bytes)  # fmt: skip
                break
            except FleetBusError as exc:
                log.error("fleet: %s; trying again in %.0f s", exc, RETRY_S)
                await asyncio.sleep(RETRY_S)
        self._ready.set()
        log.info("fleet: on %s (domain %s), hub domain %s", self._config.url, self._domain,
                 self._config.hub_domain)  # fmt: skip
        self._connected()

    def _connected(self) -> None:
        if self._ready.is_set():
            for callback in self._on_connect:
                callback()

    async def publish_state(self) -> None:
        """Telemetry and decisions, one at a time, in order."""
        while True:
            subject, data, msg_id = self._addressed(*await self._state.get())
            try:
                await self.bus.publish(subject, data, msg_id=msg_id)
            except FleetBusError as exc:
                log.debug("fleet: %s not stored (%s): superseded by the next", subject, exc)

    async def read_commands(self, commands: FleetCommands, put: Callable[[Callable[[], str]],
                            Awaitable[None] | None], clock: Clock) -> None:  # fmt: skip
        """Each command to the inbox (`put`), acknowledged to JetStream once its cycle
        committed."""
        await self._ready.wait()
        unread = False  # logged once per outage: a cut link can last hours
        while True:
            try:
                messages = await self.bus.fetch_commands(
                    prefix=self._config.subject_prefix, site=self._site,
                    hub_domain=self._config.hub_domain)  # fmt: skip
            except FleetBusError as exc:
                if not unread:
                    log.warning("fleet: the hub's commands cannot be read (%s); trying every "
                                "%.0f s", exc, RETRY_S)  # fmt: skip
                unread = True
                await asyncio.sleep(RETRY_S)
                continue
            if unread:
                log.info("fleet: reading the hub's commands again")
                unread = False
            for message in messages:
                data = message.data
                done = put(lambda data=data: commands.take(data, clock()))  # type: ignore[misc]
                if done is not None:
                    await done
                try:
                    await message.ack()
                except Exception as exc:  # delivered again, and refused as a replay
                    log.warning("fleet: command not acknowledged to JetStream (%s)", exc)

    async def close(self) -> None:
        await self.bus.close()


class TeePublisher:
    """Two confirmed publishers as one: a row is confirmed once both confirmed it (the MQTT
    broker first: the site's SCADA and QSE; then the fleet)."""

    def __init__(self, first: ConfirmedPublisher, second: ConfirmedPublisher) -> None:
        self._first, self._second = first, second

    @property
    def connected(self) -> bool:
        return self._first.connected and self._second.connected

    def send(self, topic: str, message: BaseModel | str, *, retain: bool = False) -> None:
        self._first.send(topic, message, retain=retain)
        self._second.send(topic, message, retain=retain)

    async def publish_confirmed(self, topic: str, payload: str, *, retain: bool) -> None:
        await self._first.publish_confirmed(topic, payload, retain=retain)
        await self._second.publish_confirmed(topic, payload, retain=retain)

    def when_connected(self, callback: Callable[[], None]) -> None:
        self._first.when_connected(callback)
        self._second.when_connected(callback)

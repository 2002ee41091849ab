"""Acks leave through a persisted outbox: stored first, published, forgotten once the broker has
acknowledged them (PUBACK). A restart re-sends what was stored and never confirmed, so an ack the
service committed to is never lost to a crash or a broker outage; a receiver may see one twice
(MQTT QoS 1 is at least once), never zero times.

Only the acks are persisted: telemetry and decisions are state, superseded every few seconds.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from pydantic import BaseModel

from agent.service.store import Store

__all__ = ["ConfirmedPublisher", "MemoryOutbox", "Outbox", "PersistedOutbox"]

log = logging.getLogger("gridflex.outbox")

PERSISTED_TOPICS = frozenset({"dispatch/ack", "override/ack", "grid/ack"})
RETRY_EVERY_S = 10.0


class Outbox(Protocol):
    """Where outgoing messages go: topic relative to the site prefix ("dispatch/ack")."""

    def send(self, topic: str, message: BaseModel | str, *, retain: bool = False) -> None: ...


@runtime_checkable
class ConfirmedPublisher(Protocol):
    """An outbox that can also publish and wait for the broker's acknowledgement."""

    def send(self, topic: str, message: BaseModel | str, *, retain: bool = False) -> None: ...

    def publish_confirmed(self, topic: str, payload: str, *, retain: bool) -> Awaitable[None]:
        """Publish and return once the broker acknowledged it; raises when it did not."""
        ...


@dataclass
class MemoryOutbox:
    """Keeps the last messages (no broker: the demo, and a record for tests)."""

    sent: deque[tuple[str, BaseModel | str]] = field(default_factory=lambda: deque(maxlen=10_000))

    def send(self, topic: str, message: BaseModel | str, *, retain: bool = False) -> None:
        del retain
        self.sent.append((topic, message))


def _payload(message: BaseModel | str) -> str:
    return message if isinstance(message, str) else message.model_dump_json()


class PersistedOutbox:
    """Stores each ack in the database (inside the caller's transaction when there is one),
    then publishes it and deletes it once the broker confirmed it."""

    def __init__(self, store: Store, publisher: ConfirmedPublisher) -> None:
        self._store = store
        self._publisher = publisher
        self._tasks: set[asyncio.Task[bool]] = set()

    def send(self, topic: str, message: BaseModel | str, *, retain: bool = False) -> None:
        if topic not in PERSISTED_TOPICS:
            self._publisher.send(topic, message, retain=retain)
            return
        payload = _payload(message)
        row_id = self._store.outbox_put(topic, payload, retain=retain)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop yet (assembly): the flush at start sends it
        task = loop.create_task(self._deliver(row_id, topic, payload, retain))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, row_id: int, topic: str, payload: str, retain: bool) -> bool:
        try:
            await self._publisher.publish_confirmed(topic, payload, retain=retain)
        except Exception as exc:  # kept for the next flush, whatever went wrong
            log.debug("ack %d on %s not confirmed yet: %s", row_id, topic, exc)
            return False
        self._store.outbox_done(row_id)
        return True

    async def flush(self) -> int:
        """Send every stored ack not yet confirmed, oldest first; how many remain unconfirmed."""
        left = 0
        for row_id, topic, payload, retain in self._store.outbox_pending():
            if not await self._deliver(row_id, topic, payload, retain):
                left += 1
        return left

    async def flush_forever(self) -> None:
        """At start and then every RETRY_EVERY_S: what a crash or an outage left unsent."""
        reported = 0
        while True:
            left = await self.flush()
            if left and left != reported:
                log.warning("%d ack(s) stored but not yet confirmed by the broker; retrying", left)
            elif reported and not left:
                log.info("every stored ack is confirmed by the broker")
            reported = left
            await asyncio.sleep(RETRY_EVERY_S)

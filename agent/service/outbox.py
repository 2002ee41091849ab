"""Acks leave through a persisted outbox and one publisher, in order, once each.

Every ack (dispatch, override, grid) gets the site's next sequence number (`seq`, in the ack, so
a receiver can order them and spot a copy) and is stored as an outbox row in the transaction of
the cycle that made it. One task, `PersistedOutbox.run`, publishes the rows in sequence order,
each once its transaction is handed to the database (the writer commits in order: the row's
insert before its delete) and only while the broker is connected, then waits for the broker's
PUBACK before the next; the row is deleted once confirmed. A database slow to commit (a write
lock held elsewhere) does not hold the acks back: the writer commits every batch in the end, and
the inbound message itself is acknowledged to the broker only once committed. A connection lost
before the PUBACK is waited out: the MQTT session sends the unconfirmed message again itself
when it reconnects, and the publisher resumes from the first unconfirmed row, so an outage
costs no copies. A restart sends
what was stored and never confirmed (QoS 1 is at least once: a receiver may see one twice, never
zero times).

Telemetry and decisions are state, superseded every few seconds: they are published at QoS 0
and never queued while the broker is away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from pydantic import BaseModel

from agent.service.store import Store

__all__ = ["ConfirmedPublisher", "MemoryOutbox", "Outbox", "PersistedOutbox"]

log = logging.getLogger("gridflex.outbox")

PERSISTED_TOPICS = frozenset({"dispatch/ack", "override/ack", "grid/ack"})
RETRY_S = 2.0  # after the broker refused a publish (not after a lost connection: that waits)


class Outbox(Protocol):
    """Where outgoing messages go: topic relative to the site prefix ("dispatch/ack")."""

    def send(self, topic: str, message: BaseModel | str, *, retain: bool = False) -> None: ...


@runtime_checkable
class ConfirmedPublisher(Protocol):
    """An outbox that can also publish and wait for the broker's acknowledgement."""

    @property
    def connected(self) -> bool: ...

    def send(self, topic: str, message: BaseModel | str, *, retain: bool = False) -> None:
        """Publish state at QoS 0 (dropped while disconnected)."""
        ...

    def publish_confirmed(self, topic: str, payload: str, *, retain: bool) -> Awaitable[None]:
        """Publish at QoS 1 and return once the broker acknowledged it, however long a
        reconnection takes (the session re-sends it)."""
        ...

    def when_connected(self, callback: Callable[[], None]) -> None:
        """Call `callback` after every (re)connect."""
        ...


@dataclass
class MemoryOutbox:
    """Keeps the last messages (no broker: the demo, and a record for tests)."""

    sent: deque[tuple[str, BaseModel | str]] = field(default_factory=lambda: deque(maxlen=10_000))

    def send(self, topic: str, message: BaseModel | str, *, retain: bool = False) -> None:
        del retain
        self.sent.append((topic, message))


@dataclass(frozen=True, slots=True)
class _Row:
    seq: int
    topic: str
    payload: str
    retain: bool


def _payload(message: BaseModel | str, seq: int) -> str:
    if isinstance(message, str):
        return message
    if "seq" in type(message).model_fields:
        message = message.model_copy(update={"seq": seq})
    return message.model_dump_json()


class PersistedOutbox:
    """Stores each ack as an outbox row (inside the caller's transaction), and publishes the
    rows in order from one task (`run`)."""

    def __init__(self, store: Store, publisher: ConfirmedPublisher) -> None:
        self._store = store
        self._publisher = publisher
        self._rows: deque[_Row] = deque(
            _Row(seq, topic, payload, retain)
            for seq, topic, payload, retain in store.outbox_pending()
        )
        self._wake = asyncio.Event()
        self._emptied = asyncio.Event()
        publisher.when_connected(self._wake.set)
        self.published = 0  # rows confirmed by the broker since start

    @property
    def connected(self) -> bool:
        """Whether the broker is connected now (acks wait for it while not)."""
        return self._publisher.connected

    @property
    def pending(self) -> int:
        return len(self._rows)

    def send(self, topic: str, message: BaseModel | str, *, retain: bool = False) -> None:
        if topic not in PERSISTED_TOPICS:
            self._publisher.send(topic, message, retain=retain)
            return
        seq = self._store.next_outbox_seq()
        payload = _payload(message, seq)
        self._store.outbox_put(seq, topic, payload, retain=retain)  # in the caller's transaction
        self._store.after_hand_over(lambda: self._queue(_Row(seq, topic, payload, retain)))

    def _queue(self, row: _Row) -> None:
        self._rows.append(row)
        self._wake.set()

    async def run(self) -> None:
        """The one publisher: rows in sequence order, each once its row is committed and the
        broker is connected, the next after the broker confirmed this one."""
        refused = False
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._rows and self._publisher.connected:
                row = self._rows[0]
                try:
                    await self._publisher.publish_confirmed(row.topic, row.payload,
                                                            retain=row.retain)  # fmt: skip
                except Exception as exc:  # the broker refused it: again after a pause, in order
                    if not refused:
                        log.warning("ack %d on %s not published (%s); retrying", row.seq,
                                    row.topic, exc)  # fmt: skip
                    refused = True
                    await asyncio.sleep(RETRY_S)
                    self._wake.set()
                    break
                if refused:
                    log.info("acks are published again")
                    refused = False
                self._rows.popleft()
                self._store.outbox_done(row.seq)
                self.published += 1
            if not self._rows:
                self._emptied.set()

    async def drain(self, timeout_s: float) -> int:
        """At shutdown: publish what is pending, for at most `timeout_s` (the publisher must be
        running); how many are left."""
        self._wake.set()
        if self._rows:
            self._emptied.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._emptied.wait(), timeout_s)
        return len(self._rows)

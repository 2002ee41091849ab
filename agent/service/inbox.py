"""The cycle's inbox: everything that arrived since the last cycle, taken in one place.

Transport threads, pollers and signal tasks never change the site's state themselves. They put
what they received here: an MQTT message (with the future its broker acknowledgement waits on),
a VEN's obligation, a Sparkplug write, a price, a pool's demand. The cycle drains the inbox at its
start, inside its one transaction: each item is handled there (checked, staged, acked) and its
outcome counted. An item whose handling raises is an outcome too ("failed", counted and logged
once per topic until one succeeds); it never stops the cycle nor the items after it.

After the cycle's transaction is handed to the database, the futures of the items it took
resolve once that commit is done, so an MQTT message is acknowledged to the broker after its
outcome is durable, and always: a message that was rejected, or whose handling failed, is
acknowledged too, so nothing the inbox took can hold the broker's in-flight window.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from agent.domain.signals import Obligation, ObligationCancel
from agent.service.metrics import Metrics
from agent.service.snapshot import AnySignal, SnapshotStore

__all__ = ["Inbox", "Taken"]

log = logging.getLogger("gridflex.inbox")

# What the inbox holds at most between two cycles. Far above any real rate (a cycle drains it
# every cycle_s at the latest, and every put wakes one); beyond it the oldest items are
# acknowledged and dropped, counted, so a flood cannot grow the service without bound.
MAX_ITEMS = 50_000

Handle = Callable[[], str]


@dataclass(slots=True)
class _Item:
    topic: str
    handle: Handle
    done: asyncio.Future[None] | None


@dataclass(frozen=True, slots=True)
class Taken:
    """What one cycle took from the inbox: the futures to resolve after its commit."""

    futures: tuple[asyncio.Future[None], ...]
    outcomes: dict[str, dict[str, int]]  # topic -> outcome -> count

    def settle(self) -> None:
        for future in self.futures:
            if not future.done():
                future.set_result(None)


class Inbox:
    """A queue of work for the next cycle; not thread-safe: put from the event loop."""

    def __init__(
        self,
        snapshot: SnapshotStore,
        wake: Callable[[], None],
        metrics: Metrics | None = None,
        max_items: int = MAX_ITEMS,
    ) -> None:
        self._snapshot = snapshot
        self._wake = wake
        self._metrics = metrics
        self._items: deque[_Item] = deque()
        self._max_items = max_items
        self._failing: set[str] = set()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, topic: str, handle: Handle, *, urgent: bool = True,
            acknowledged: bool = False) -> asyncio.Future[None] | None:  # fmt: skip
        """Queue `handle` for the next cycle. With `acknowledged`, the future returned resolves
        once the cycle that ran it has committed (a broker acknowledgement waits on it)."""
        done = asyncio.get_running_loop().create_future() if acknowledged else None
        self._items.append(_Item(topic, handle, done))
        if len(self._items) > self._max_items:
            dropped = self._items.popleft()
            if dropped.done is not None and not dropped.done.done():
                dropped.done.set_result(None)
            self._count(dropped.topic, "inbox_full")
        if urgent:
            self._wake()
        return done

    def signal(self, value: AnySignal | Obligation | ObligationCancel) -> None:
        """A SignalSink for sources that run on their own task (prices, pools' demand): the
        value reaches the snapshot at the next cycle's start. Obligations are the event book's
        (a VEN's sink), never the snapshot's: one put here fails its item."""

        def take() -> str:
            if isinstance(value, Obligation | ObligationCancel):
                raise TypeError(f"an obligation is not a snapshot signal: {value!r}")
            self._snapshot(value)
            return "taken"

        self.put(type(value).__name__, take, urgent=False)

    def drain(self) -> Taken:
        """Handle every item queued so far (call inside the cycle's transaction)."""
        futures: list[asyncio.Future[None]] = []
        outcomes: dict[str, dict[str, int]] = {}
        while self._items:
            item = self._items.popleft()
            outcome = self._handle(item)
            counts = outcomes.setdefault(item.topic, {})
            counts[outcome] = counts.get(outcome, 0) + 1
            self._count(item.topic, outcome)
            if item.done is not None:
                futures.append(item.done)
        return Taken(tuple(futures), outcomes)

    def _handle(self, item: _Item) -> str:
        try:
            outcome = item.handle()
        except Exception:  # a bug in one handler must not stop the cycle or the items after it
            if item.topic not in self._failing:
                self._failing.add(item.topic)
                log.exception("handling a message on %s failed; it is acknowledged and dropped",
                              item.topic)  # fmt: skip
            return "failed"
        if item.topic in self._failing:
            self._failing.discard(item.topic)
            log.info("messages on %s are handled again", item.topic)
        return outcome

    def _count(self, topic: str, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.messages.labels(topic=topic, outcome=outcome).inc()

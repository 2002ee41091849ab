"""Each signed message is applied once: its `message_id` is remembered, durably, for the replay
window (a message older than the window is refused as stale anyway). A copy within the window,
whether a QoS 1 redelivery or an attacker's replay of a captured `off`, is a duplicate and
changes nothing. The memory survives restarts (the `seen_messages` table) and is pruned to the
window as it goes.
"""

from __future__ import annotations

from collections import OrderedDict
from datetime import datetime, timedelta

from agent.service.store import Store

__all__ = ["ReplayGuard"]


class ReplayGuard:
    def __init__(self, store: Store, window_s: float, now: datetime) -> None:
        self._store = store
        self._window = timedelta(seconds=window_s)
        since = now - self._window
        self._seen: OrderedDict[str, datetime] = OrderedDict(store.seen_messages(since))
        store.forget_messages_before(now - self._window)

    def seen(self, message_id: str | None) -> bool:
        return message_id is not None and message_id in self._seen

    def remember(
        self, message_id: str | None, now: datetime, issued_at: datetime | None = None
    ) -> None:
        """Call inside the transaction that commits the message's outcome. Kept for the window
        after its `issued_at` when that is later than now (a message dated ahead within the
        clock skew stays fresh that much longer: so must its memory)."""
        if message_id is None or message_id in self._seen:
            return
        kept_from = now if issued_at is None else max(now, issued_at)
        self._seen[message_id] = kept_from
        self._seen.move_to_end(message_id)
        self._store.remember_message(message_id, kept_from)
        horizon = now - self._window
        expired = [m for m, at in self._seen.items() if at < horizon]
        for forgotten in expired:
            del self._seen[forgotten]
        if expired:
            self._store.forget_messages_before(horizon)

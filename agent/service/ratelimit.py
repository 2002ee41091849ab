"""A token bucket per inbound topic: a client flooding a topic cannot make the service spend its
time on it (each message is parsed, checked, audited and acked). Messages over the rate are
counted (gridflex_messages_total{outcome="rate_limited"}), acknowledged to the broker so it does
not redeliver them, and otherwise dropped; the first of each burst is logged."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["TopicRateLimit"]

log = logging.getLogger("gridflex.intake")


class TopicRateLimit:
    def __init__(
        self, per_s: float, burst: float, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._per_s = per_s
        self._burst = burst
        self._monotonic = monotonic
        self._tokens: dict[str, float] = {}
        self._at: dict[str, float] = {}
        self._limiting: set[str] = set()

    def allow(self, topic: str) -> bool:
        now = self._monotonic()
        tokens = min(self._burst, self._tokens.get(topic, self._burst)
                     + (now - self._at.get(topic, now)) * self._per_s)  # fmt: skip
        self._at[topic] = now
        if tokens >= 1.0:
            self._tokens[topic] = tokens - 1.0
            if topic in self._limiting:
                self._limiting.discard(topic)
                log.info("%s: back under %.0f messages/s", topic, self._per_s)
            return True
        self._tokens[topic] = tokens
        if topic not in self._limiting:
            self._limiting.add(topic)
            log.warning("%s: more than %.0f messages/s (burst %.0f); dropping the excess",
                        topic, self._per_s, self._burst)  # fmt: skip
        return False

"""A token bucket per key: per inbound topic and sender (`dispatch@qse`), so a sender flooding a
topic cannot make the service spend its time on it (each message is parsed, checked, audited and
acked), nor cost another sender's messages their place. What is over the rate is for the caller
to answer (agent.service.intake: a rejected ack once the sender is authenticated, a count
before); the first of each burst is logged."""

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
        self.per_s = per_s
        self._burst = burst
        self._monotonic = monotonic
        self._tokens: dict[str, float] = {}
        self._at: dict[str, float] = {}
        self._limiting: set[str] = set()

    def allow(self, topic: str) -> bool:
        now = self._monotonic()
        tokens = min(self._burst, self._tokens.get(topic, self._burst)
                     + (now - self._at.get(topic, now)) * self.per_s)  # fmt: skip
        self._at[topic] = now
        if tokens >= 1.0:
            self._tokens[topic] = tokens - 1.0
            # "back under" once half the burst has come back, not at the first token: a flood
            # right at the rate would log a pair of lines per message
            if topic in self._limiting and tokens >= self._burst / 2:
                self._limiting.discard(topic)
                log.info("%s: back under %.0f messages/s", topic, self.per_s)
            return True
        self._tokens[topic] = tokens
        if topic not in self._limiting:
            self._limiting.add(topic)
            log.warning("%s: more than %.0f messages/s (burst %.0f); dropping the excess",
                        topic, self.per_s, self._burst)  # fmt: skip
        return False

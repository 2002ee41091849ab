"""What one cycle did: the snapshot it decided on, the decision, the commands and their outcome."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from agent.domain.signals import Signals
from agent.policy import Decision

__all__ = ["CycleReport"]


@dataclass(frozen=True, slots=True)
class CycleReport:
    at_utc: datetime
    signals: Signals
    decision: Decision
    commanded: tuple[str, ...]
    failed: Mapping[str, str]
    held_back: int  # devices waiting for their restore batch
    site_kw: float  # verified: measured where read, else applied
    duration_s: float
    setpoints_changed: bool = field(default=False)

"""The pure decision engine: decide() and what it returns."""

from agent.policy.decision import (
    Decision,
    Memory,
    ObligationStatus,
    OverrideStatus,
    PoolStatus,
    Rule,
    Setpoint,
)
from agent.policy.engine import decide

__all__ = [
    "Decision",
    "Memory",
    "ObligationStatus",
    "OverrideStatus",
    "PoolStatus",
    "Rule",
    "Setpoint",
    "decide",
]

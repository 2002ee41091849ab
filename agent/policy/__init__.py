"""The pure decision engine: decide() and what it returns."""

from agent.policy.decision import Decision, Memory, ObligationStatus, Rule, Setpoint
from agent.policy.engine import decide

__all__ = ["Decision", "Memory", "ObligationStatus", "Rule", "Setpoint", "decide"]

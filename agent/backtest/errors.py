"""The backtest's own input error (a price, dispatch or load file it cannot use)."""

from __future__ import annotations

from agent.errors import GridflexError

__all__ = ["BacktestInputError"]


class BacktestInputError(GridflexError):
    """An input of the backtest is unusable; the message says which file and why."""

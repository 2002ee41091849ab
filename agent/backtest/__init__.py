"""The backtest: replay the production decide() over a price history and settle what it earned.

Pure computation on frames and arrays; reading and writing files is the command's job
(agent/app/commands/backtest.py).
"""

from agent.backtest.decisions import backtest_frame
from agent.backtest.errors import BacktestInputError
from agent.backtest.fourcp import fourcp_report, fourcp_warnings
from agent.backtest.groups import Groups
from agent.backtest.inputs import hourly_series, load_series, obligations_from_frame
from agent.backtest.replay import (
    Intervals,
    Trace,
    in_fourcp_window,
    replay,
    replay_plain,
    trace_of,
)
from agent.backtest.series import intervals_from_prices
from agent.backtest.settle import Contract, Settlement, settle

__all__ = [
    "BacktestInputError",
    "Contract",
    "Groups",
    "Intervals",
    "Settlement",
    "Trace",
    "backtest_frame",
    "fourcp_report",
    "fourcp_warnings",
    "hourly_series",
    "in_fourcp_window",
    "intervals_from_prices",
    "load_series",
    "obligations_from_frame",
    "replay",
    "replay_plain",
    "settle",
    "trace_of",
]

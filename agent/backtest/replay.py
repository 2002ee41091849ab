"""Replay decide() interval by interval over a price history: the same engine, the same memory.

Two ways to run the same replay, giving the same decisions:

* `replay_plain` calls decide() on the whole fleet at every interval, exactly as the live shell
  does at each cycle (the reference, and the baseline of bench/backtest.py);
* `replay` gets there faster without deciding anything itself: every decision still comes from
  decide(), but (1) on the collapsed fleet of equivalence groups (groups.py) whenever no site
  ceiling can bind, and (2) only once per run of intervals whose prices fall on the same side of
  every threshold the engine compares them with, once the decision has reached a fixed point
  (no device changed, no dwell or ramp in play, the same hysteresis state). The decisions of
  the rest of such a run are the fixed point's, with only the price in the reason text changed.

Why (2) is exact: between two intervals of such a run decide() sees the same memory, the same
obligations (none) and the same 4CP window state; the price enters economics only through
`price > value` and `price > value - hysteresis` per class, which the run holds fixed; dwell
conditions only relax with time and none was binding; a ramp ceiling only rises. tests/backtest
checks the result against `replay_plain` over the whole 2024 year.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, time

import numpy as np
import numpy.typing as npt
import pandas as pd

from agent.backtest.groups import Groups
from agent.domain.fleet import Fleet, FleetState, FloatArray, Priority
from agent.domain.settings import Policy
from agent.domain.signals import GpuDemand, Obligation, PeakWarning, PriceSignal, Signals
from agent.policy import Decision, Memory, PoolStatus, Rule, decide

__all__ = [
    "Intervals", "Progress", "Trace", "in_fourcp_window", "joined", "replay", "replay_plain",
    "trace_of",
]  # fmt: skip

Progress = Callable[[int], None]  # called with how many intervals are done
Demand = Callable[[datetime], tuple[GpuDemand, ...]]  # each pool's demand at an instant
Int64Array = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
_NS = 1_000_000_000
_UNSET = -1  # class rule of a class without devices


@dataclass(frozen=True, eq=False)
class Intervals:
    """The intervals to decide on, in UTC nanoseconds, with the price known at each.

    `price_usd_per_mwh` / `price_start_ns` / `price_end_ns` are the price each interval is
    decided on and the interval that price is for: without foresight the latest one published
    before the interval starts (a real-time price is published after its interval ends, so the
    previous interval's; a day-ahead price is known the day before, so its own); with foresight
    the interval's own. For a gap in the file it is the last one before it (it then ages and may
    go stale, as it would live). `settle_usd_per_mwh` is what each interval's energy costs: its
    own price (None: the decision price).
    """

    start_ns: Int64Array
    end_ns: Int64Array
    price_usd_per_mwh: FloatArray
    price_start_ns: Int64Array
    price_end_ns: Int64Array
    market: str = "rt15"
    settlement_point: str = "HB_HUBAVG"
    settle_usd_per_mwh: FloatArray | None = None
    foresight: bool = True

    def __len__(self) -> int:
        return len(self.start_ns)

    @property
    def settle_prices(self) -> FloatArray:
        return (
            self.price_usd_per_mwh if self.settle_usd_per_mwh is None else self.settle_usd_per_mwh
        )

    @property
    def priced(self) -> BoolArray:
        """Whether the decision price is the freshest there could be (not a gap's held one):
        the interval's own, or the one that ended as it starts."""
        priced: BoolArray = (self.price_start_ns == self.start_ns) | (
            self.price_end_ns == self.start_ns
        )
        return priced

    def take(self, start: int, end: int) -> Intervals:
        """Intervals [start, end) alone."""
        cut = slice(start, end)
        settle = None if self.settle_usd_per_mwh is None else self.settle_usd_per_mwh[cut]
        return replace(self, start_ns=self.start_ns[cut], end_ns=self.end_ns[cut],
                       price_usd_per_mwh=self.price_usd_per_mwh[cut],
                       price_start_ns=self.price_start_ns[cut],
                       price_end_ns=self.price_end_ns[cut], settle_usd_per_mwh=settle)  # fmt: skip

    def hours(self) -> FloatArray:
        return (self.end_ns - self.start_ns).astype(np.float64) / (3600 * _NS)


@dataclass(frozen=True, eq=False)
class Trace:
    """What the policy decided at each interval, per site and per load class."""

    classes: tuple[str, ...]
    site_kw: FloatArray  # (n,)
    class_kw: FloatArray  # (n, classes)
    class_rule: npt.NDArray[np.int8]  # (n, classes): the most important rule bound in the class
    class_reason: npt.NDArray[np.object_]  # (n, classes): its reason, as decide() wrote it
    decide_calls: int  # decide() calls made (on the collapsed or the full fleet)
    full_fleet_calls: int  # of which on the full fleet
    pools: tuple[PoolStatus, ...] = ()  # hybrid sites: each interval's pools, flattened
    memory: Memory | None = None  # the engine's memory after the last interval (to go on from)


def _utc(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / _NS, UTC)


def _signals(
    intervals: Intervals, i: int, obligations: Sequence[Obligation],
    demand: Demand | None = None, warned: BoolArray | None = None,
) -> Signals:  # fmt: skip
    price = PriceSignal(
        price_usd_per_mwh=float(intervals.price_usd_per_mwh[i]),
        interval_start_utc=_utc(int(intervals.price_start_ns[i])),
        interval_end_utc=_utc(int(intervals.price_end_ns[i])),
        # observed when the decided interval starts: what was published by then (Intervals)
        observed_at_utc=_utc(int(intervals.start_ns[i])),
        settlement_point=intervals.settlement_point,
        market=intervals.market,
        source="backtest",
    )
    now = _utc(int(intervals.start_ns[i]))
    gpu_demand = () if demand is None else demand(now)
    # a 4CP peak warning, as a warning service would have sent it (agent.backtest.fourcp)
    peak = None
    if warned is not None and warned[i]:
        peak = PeakWarning(active=True, observed_at_utc=now, source="backtest system load")
    return Signals(price=price, obligations=tuple(o for o in obligations if o.is_active(now)),
                   gpu_demand=gpu_demand, peak_warning=peak)  # fmt: skip


class _Recorder:
    def __init__(self, fleet: Fleet, n: int) -> None:
        k = len(fleet.classes)
        self.classes = tuple(c.name for c in fleet.classes)
        self.site_kw = np.zeros(n)
        self.class_kw = np.zeros((n, k))
        self.class_rule = np.full((n, k), _UNSET, dtype=np.int8)
        self.class_reason = np.full((n, k), "", dtype=object)
        self.calls = 0
        self.full_calls = 0
        self.pools: list[PoolStatus] = []

    def record(self, i: int, decision: Decision) -> None:
        self.calls += 1
        self.pools.extend(decision.pools)
        self.site_kw[i] = decision.site_kw
        self.class_kw[i] = decision.class_kw
        for c, members in enumerate(decision.fleet.members):
            if len(members) == 0:
                continue
            rules = decision.rule[members]
            first = int(np.argmin(rules))  # first device bound by the most important rule
            self.class_rule[i, c] = rules[first]
            self.class_reason[i, c] = decision.reasons[int(decision.reason_index[members[first]])]

    def repeat(self, i: int, stop: int, intervals: Intervals) -> None:
        """Intervals i+1 .. stop-1 take interval i's decision, with their own price in the text."""
        rows = slice(i + 1, stop)
        self.site_kw[rows] = self.site_kw[i]
        self.class_kw[rows] = self.class_kw[i]
        self.class_rule[rows] = self.class_rule[i]
        old = _price_text(float(intervals.price_usd_per_mwh[i]))
        new = [_price_text(float(p)) for p in intervals.price_usd_per_mwh[rows]]
        for c, reason in enumerate(self.class_reason[i]):
            parts = str(reason).split(old)
            if len(parts) == 1:
                self.class_reason[rows, c] = reason
            else:
                self.class_reason[rows, c] = [text.join(parts) for text in new]

    def trace(self, memory: Memory | None = None) -> Trace:
        return Trace(
            self.classes, self.site_kw, self.class_kw, self.class_rule, self.class_reason,
            self.calls, self.full_calls, tuple(self.pools), memory,
        )  # fmt: skip


def joined(traces: Sequence[Trace]) -> Trace:
    """Traces of consecutive stretches as one (the last one's memory)."""
    first = traces[0]
    return Trace(
        first.classes, np.concatenate([t.site_kw for t in traces]),
        np.concatenate([t.class_kw for t in traces]),
        np.concatenate([t.class_rule for t in traces]),
        np.concatenate([t.class_reason for t in traces]),
        sum(t.decide_calls for t in traces), sum(t.full_fleet_calls for t in traces),
        tuple(p for t in traces for p in t.pools), traces[-1].memory,
    )  # fmt: skip


def trace_of(decisions: Sequence[Decision]) -> Trace:
    """The trace of decisions taken elsewhere (the live shell), to compare with a replay's."""
    if not decisions:
        raise ValueError("no decisions")
    out = _Recorder(decisions[0].fleet, len(decisions))
    for i, decision in enumerate(decisions):
        out.record(i, decision)
    return out.trace()


def _price_text(price: float) -> str:
    # how every economics reason of decide() quotes the price
    return f"price {price:.2f} $/MWh"


def replay_plain(
    fleet: Fleet,
    policy: Policy,
    intervals: Intervals,
    obligations: Sequence[Obligation] = (),
    *,
    progress: Progress | None = None,
    demand: Demand | None = None,
    warned: BoolArray | None = None,
    memory: Memory | None = None,
) -> Trace:
    """decide() on the whole fleet at every interval, as the live shell runs it (with each
    inference pool's demand, on a hybrid site; `warned`: the intervals under a 4CP warning)."""
    state = FleetState.all_available(fleet)
    memory = memory or Memory.initial(fleet)
    out = _Recorder(fleet, len(intervals))
    for i in range(len(intervals)):
        now = _utc(int(intervals.start_ns[i]))
        signals = _signals(intervals, i, obligations, demand, warned)
        decision = decide(signals, state, policy, memory, now)
        out.record(i, decision)
        memory = decision.memory
        out.full_calls += 1
        if progress is not None and i % 256 == 255:
            progress(i + 1)
    if progress is not None:
        progress(len(intervals))
    return out.trace(memory)


def replay(
    fleet: Fleet,
    policy: Policy,
    intervals: Intervals,
    obligations: Sequence[Obligation] = (),
    *,
    progress: Progress | None = None,
    warned: BoolArray | None = None,
    memory: Memory | None = None,
) -> Trace:
    """The same decisions as replay_plain, with far fewer and smaller decide() calls.
    `memory`: the engine's memory to go on from (a previous replay's `Trace.memory`)."""
    run = _FastReplay(fleet, policy, intervals, obligations, warned)
    if memory is not None:  # collapsed again at the first interval the members agree
        run.whole, run.small = memory, None
    i = 0
    while i < len(intervals):
        i = run.step(i)
        if progress is not None:
            progress(i)
    last = run.whole if run.small is None else run.groups.expand(run.small)
    return run.out.trace(last)


class _FastReplay:
    """The replay's state: the memory of the collapsed fleet, or of the full one while a site
    ceiling may bind (or until the groups' members agree again)."""

    def __init__(
        self, fleet: Fleet, policy: Policy, intervals: Intervals,
        obligations: Sequence[Obligation], warned: BoolArray | None = None,
    ) -> None:  # fmt: skip
        self.groups = Groups.of(fleet)
        self.policy = policy
        self.intervals = intervals
        self.obligations = obligations
        self.warned = warned
        self.run_end = _run_ends(self.groups.fleet, policy, intervals, obligations, warned)
        limit_kw = policy.import_limit_kw
        always_full = limit_kw is not None and float(fleet.rated_kw.sum()) > limit_kw - 1e-6
        self.full = _obligated(intervals, obligations) | always_full
        self.full_state = FleetState.all_available(fleet)
        self.small_state = FleetState.all_available(self.groups.fleet)
        self.out = _Recorder(fleet, len(intervals))
        self.small: Memory | None = Memory.initial(self.groups.fleet)
        self.whole = Memory.initial(fleet)  # up to date whenever `small` is None

    def step(self, i: int) -> int:
        """Decide interval i (and the rest of its run when it can); returns the next index."""
        now = _utc(int(self.intervals.start_ns[i]))
        signals = _signals(self.intervals, i, self.obligations, warned=self.warned)
        if self.full[i]:
            if self.small is not None:
                self.whole, self.small = self.groups.expand(self.small), None
        elif self.small is None:
            self.small = self.groups.collapse(self.whole, now.timestamp())
        if self.small is None:
            decision = decide(signals, self.full_state, self.policy, self.whole, now)
            self.out.record(i, decision)
            self.out.full_calls += 1
            self.whole = decision.memory
            return i + 1
        decision = decide(signals, self.small_state, self.policy, self.small, now)
        self.out.record(i, decision)
        stop = int(self.run_end[i])
        if stop > i + 1 and _fixed_point(self.small, decision):
            self.out.repeat(i, stop, self.intervals)
            last = _utc(int(self.intervals.start_ns[stop - 1]))
            self.small = replace(decision.memory, decided_at_utc=last)
            return stop
        self.small = decision.memory
        return i + 1


_MOVING = np.array([int(Rule.DWELL), int(Rule.RAMP)], dtype=np.int8)


def _fixed_point(before: Memory, decision: Decision) -> bool:
    """Will the next interval of the same run decide exactly the same? (see the module doc)"""
    after = decision.memory
    return (
        bool(np.array_equal(after.setpoint_kw, before.setpoint_kw))  # nan (never decided): no
        and after.class_running == before.class_running
        and not after.baselines_kw
        and not bool(np.isin(decision.rule, _MOVING).any())
    )


# -- runs: consecutive intervals that decide() cannot tell apart but for the price text ---------
def _obligated(intervals: Intervals, obligations: Sequence[Obligation]) -> BoolArray:
    active = np.zeros(len(intervals), dtype=np.bool_)
    for o in obligations:
        start = int(o.start_utc.timestamp() * _NS)
        end = np.iinfo(np.int64).max if o.end_utc is None else int(o.end_utc.timestamp() * _NS)
        active |= (intervals.start_ns >= start) & (intervals.start_ns < end)
    return active


def _run_ends(
    fleet: Fleet, policy: Policy, intervals: Intervals, obligations: Sequence[Obligation],
    warned: BoolArray | None = None,
) -> Int64Array:  # fmt: skip
    """For each interval, the index where its run of indistinguishable intervals ends."""
    n = len(intervals)
    price = intervals.price_usd_per_mwh
    columns: list[BoolArray] = []
    for c in fleet.classes:
        if c.priority >= Priority.PROTECTED:
            continue  # economics does not compare their price
        columns.append(price > c.value_usd_per_mwh)
        columns.append(price > c.value_usd_per_mwh - policy.hysteresis_usd_per_mwh)
    columns.append(in_fourcp_window(policy, intervals))
    if warned is not None:
        columns.append(warned)
    key = np.column_stack(columns) if columns else np.zeros((n, 1), dtype=np.bool_)
    differs = np.ones(n, dtype=np.bool_)  # differs from the previous interval
    differs[1:] = (key[1:] != key[:-1]).any(axis=1)
    # A gap interval (held, ageing price) or an obligation is never part of a run.
    single = ~intervals.priced | _obligated(intervals, obligations)
    differs |= single
    differs[1:] |= single[:-1]
    starts = np.flatnonzero(differs)
    ends = np.append(starts[1:], n)
    return np.repeat(ends, ends - starts)


def in_fourcp_window(policy: Policy, intervals: Intervals) -> BoolArray:
    """Per interval: inside the site's 4CP window (its months and local hours)."""
    window = policy.fourcp
    if window is None:
        return np.zeros(len(intervals), dtype=np.bool_)
    local = pd.DatetimeIndex(intervals.start_ns.astype("datetime64[ns]"), tz="UTC").tz_convert(
        policy.timezone
    )
    of_day = local.hour * 3600 + local.minute * 60 + local.second + local.microsecond / 1e6
    start_s, end_s = (_seconds(t) for t in (window.start_local, window.end_local))
    in_months = np.isin(local.month, sorted(window.months))
    return np.asarray(in_months & (of_day >= start_s) & (of_day < end_s), dtype=np.bool_)


def _seconds(t: time) -> float:
    return t.hour * 3600 + t.minute * 60 + t.second + t.microsecond / 1e6

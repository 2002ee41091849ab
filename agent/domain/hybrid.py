"""Hybrid sites: inference pools whose GPU servers serve, are lent to flexible work, or give up
power within a declared flex tier (values, no IO). decide() sizes each pool from its demand."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FlexTier", "InferencePool"]


@dataclass(frozen=True, slots=True)
class FlexTier:
    """A pool may give up `give_up_fraction` of its serving power for `for_s` seconds at a time
    (public trials: 25 % for 3 h on 256 A100s; over 30 % within 30 s on 96 GPUs)."""

    give_up_fraction: float
    for_s: float


@dataclass(frozen=True, slots=True)
class InferencePool:
    """An inference pool: the servers of one load class, with the service level it holds.

    Each decision, the pool's demand (requests running and waiting) sets how many servers serve:
    `requests_per_server` is what one server carries while holding its service level (a mean
    queue time or time to first token of `service_level_s`), plus `headroom_fraction` for bursts
    between scrapes, plus `spare_sqrt` x sqrt(servers needed) (square-root staffing: the spare a
    pool of many servers needs for random arrivals grows with the root of its size, not in
    proportion). A server taken back from lent work serves `warmup_s` later (its model loads), so
    a rising demand is met where its trend will be a warm-up from now. A measured value above the
    target grows the pool, once per warm-up; a falling demand
    shrinks it by at most `shrink_fraction` of its servers a decision (a lent server reclaimed
    costs its job a checkpoint). Servers not needed are lent to flexible work while the price is
    at or below `lend_value_usd_per_mwh` (None: never lent), else paused."""

    name: str
    load_class: str
    requests_per_server: float
    service_level_s: float
    headroom_fraction: float = 0.25
    min_serving: int = 1
    flex_tiers: tuple[FlexTier, ...] = ()
    lend_value_usd_per_mwh: float | None = None
    demand_stale_after_s: float = 30.0
    service_level: str = "queue_time"  # what service_level_s bounds: queue_time or ttft
    shrink_fraction: float = 0.01  # of the pool's servers, at most, released per decision
    spare_sqrt: float = 0.0  # spare servers per sqrt(servers needed), on top of the headroom
    warmup_s: float = 0.0  # from lent (or paused) to serving: the model's load time
    # a serving server capped to a fraction f of its power keeps f ** this of its throughput
    # (memory-bound inference: about 0.3); None: not declared
    power_speed_exponent: float | None = None

    def cap_value(self, class_value_usd_per_mwh: float, give_up_fraction: float) -> float | None:
        """What a MWh saved by capping the serving servers by `give_up_fraction` costs: the
        throughput lost, at the class's value, per unit of power given up. None: no curve."""
        if self.power_speed_exponent is None or give_up_fraction <= 0:
            return None
        kept = float((1.0 - give_up_fraction) ** self.power_speed_exponent)
        return class_value_usd_per_mwh * (1.0 - kept) / give_up_fraction

    def give_up_allowed(self, capped_for_s: float) -> float:
        """The share of serving power the pool may give up when it has been capped for
        `capped_for_s` seconds: the deepest tier whose time has not run out, else nothing."""
        open_tiers = [t.give_up_fraction for t in self.flex_tiers if capped_for_s < t.for_s]
        return max(open_tiers, default=0.0)

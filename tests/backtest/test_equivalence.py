"""The fast replay takes exactly the decisions of decide() called on every device at every
interval (replay_plain, which is what the live shell does), on real 2024 prices."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from agent.backtest import replay, replay_plain
from agent.backtest.replay import _obligated
from agent.domain.fleet import Fleet
from agent.domain.signals import Obligation, ObligationKind
from agent.policy import Rule
from tests.backtest.helpers import assert_same_decisions, example, local_slice, year_2024


def _reduced(fleet: Fleet, keep: int, dwell_s: float | None = None) -> Fleet:
    """The site's device types, `keep` of each group (ids `<group>-0001` ..)."""
    specs = []
    for device_id in fleet.device_ids:
        number = re.search(r"-(\d{4})$", device_id)
        if number is None or int(number.group(1)) <= keep:
            spec = fleet.spec(device_id)
            if dwell_s is not None and spec.min_on_s < dwell_s:
                spec = replace(spec, min_on_s=dwell_s, min_off_s=dwell_s)
            specs.append(spec)
    return Fleet.build(fleet.classes, specs)


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


# Spread over the year, deep enough to switch devices of one group off one by one.
EVENTS = (
    Obligation(
        "limit-jan",
        ObligationKind.LIMIT,
        0.0,
        _utc("2024-01-16T07:00:00-06:00"),
        _utc("2024-01-16T09:30:00-06:00"),
    ),
    Obligation(
        "shed-may",
        ObligationKind.SHED,
        0.0,
        # a cheap late morning: the shed is cut from a site running flat out
        _utc("2024-05-08T10:00:00-05:00"),
        _utc("2024-05-08T14:00:00-05:00"),
    ),
    Obligation(
        "open-aug",
        ObligationKind.LIMIT,
        0.0,
        _utc("2024-08-20T18:07:00-05:00"),
        _utc("2024-08-20T22:00:00-05:00"),
    ),
)


def _sized(events: tuple[Obligation, ...], site_kw: float) -> list[Obligation]:
    """limit: 38% of the site; shed: 41% of it (fractions that split on/off groups)."""
    return [
        replace(e, kw=site_kw * (0.38 if e.kind is ObligationKind.LIMIT else 0.41)) for e in events
    ]


@pytest.mark.slow  # a year through the plain per-interval loop: make test-slow
def test_small_site_full_year_with_dispatch() -> None:
    config = example("small-site.yaml")
    fleet, policy = config.fleet(), config.decision_policy()
    events = _sized(EVENTS, float(fleet.rated_kw.sum()))
    intervals = year_2024()
    fast = replay(fleet, policy, intervals, events)
    assert_same_decisions(replay_plain(fleet, policy, intervals, events), fast)
    assert fast.decide_calls < len(intervals) / 10
    assert fast.full_fleet_calls >= int(_obligated(intervals, events).sum()) > 0
    assert (fast.class_rule == int(Rule.DISPATCH)).any()


@pytest.mark.slow  # a year through the plain per-interval loop: make test-slow
def test_reduced_50mw_site_full_year_long_dwell_and_hysteresis() -> None:
    config = example("west-50mw.yaml")
    fleet = _reduced(config.fleet(), keep=3, dwell_s=3600)
    policy = replace(config.decision_policy(), hysteresis_usd_per_mwh=12.0)
    events = _sized(EVENTS, float(fleet.rated_kw.sum()))
    intervals = year_2024()
    fast = replay(fleet, policy, intervals, events)
    assert_same_decisions(replay_plain(fleet, policy, intervals, events), fast)
    assert (fast.class_rule == int(Rule.DWELL)).any()
    assert (fast.class_rule == int(Rule.DISPATCH)).any()
    # dispatch switched some devices of a group off and not others: the full fleet ran on
    # past the events until their dwell clocks agreed again
    assert fast.full_fleet_calls > int(_obligated(intervals, events).sum())


def test_full_50mw_site_for_may_2024_with_dispatch() -> None:
    config = example("west-50mw.yaml")
    fleet, policy = config.fleet(), config.decision_policy()
    assert len(fleet) > 12_000
    events = _sized(EVENTS, float(fleet.rated_kw.sum()))
    intervals = local_slice(year_2024(), "2024-05-01", "2024-06-01")
    fast = replay(fleet, policy, intervals, events)
    assert_same_decisions(replay_plain(fleet, policy, intervals, events), fast)
    assert (fast.class_rule == int(Rule.DISPATCH)).any()
    assert fast.full_fleet_calls >= 16  # the 4 hours of shed-may on the full fleet

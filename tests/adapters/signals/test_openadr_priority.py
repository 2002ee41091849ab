"""Event priority where OpenADR events overlap: scenario table of openadr_priority.govern, and
the VEN against a real openleadr VTN (a higher-priority event relaxes a standing one)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from adapters.signals.openadr_events import EventPlan, Step, obligation_at
from adapters.signals.openadr_priority import govern
from adapters.signals.openadr_ven import OpenAdrVen
from agent.domain.signals import ObligationKind
from tests.adapters.signals.openadr_rig import SimSite, Vtn, wait_until
from tests.helpers.openadr_ven import FULL_KW, running, ven_config
from tests.helpers.peers import free_port

pytestmark = pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")

T0 = datetime(2026, 7, 1, 18, 0, tzinfo=UTC)


def at(minute: float | None) -> datetime | None:
    return None if minute is None else T0 + timedelta(minutes=minute)


def plan(event_id: str, start: float, end: float | None, priority: int,
         program: str = "http://program.example/dr") -> EventPlan:  # fmt: skip
    begin = at(start)
    assert begin is not None
    step = Step(begin, at(end), ObligationKind.LIMIT, 120.0)
    return EventPlan(event_id, 0, program, "SIMPLE", (step,), priority)


# the event under test: a limit from minute 0 to 60 at priority 2; each row adds other events
# (id, start, end, priority[, program]) and says, at `now`, where its obligation starts (None:
# superseded), by whom, and when to look again
SCENARIOS = {
    "alone": ([], 15, 0, None, 60),
    "a higher one holds now: starts at its end": ([("H", 10, 20, 1)], 15, 20, "H", 20),
    "a higher one starts later: in force, wake at its start": ([("H", 30, 40, 1)], 15, 0, None, 30),
    "a higher one ended: the start stays past it": ([("H", 10, 20, 1)], 25, 20, None, 60),
    "a higher one covers the rest: superseded": ([("H", 10, 70, 1)], 15, None, "H", 60),
    "an open-ended higher one: superseded": ([("H", 10, None, 1)], 15, None, "H", None),
    "higher ones in a chain": ([("H1", 10, 20, 1), ("H2", 20, 30, 1)], 15, 30, "H2", 30),
    "equal priority: both stand": ([("E", 10, 20, 2)], 15, 0, None, 60),
    "a lower one: no effect": ([("L", 10, 20, 3)], 15, 0, None, 60),
    "zero is the lowest priority": ([("Z", 10, 20, 0)], 15, 0, None, 60),
    "another program: both stand": ([("P", 10, 20, 1, "http://other.example/ers")], 15, 0,
                                    None, 60),
}  # fmt: skip


@pytest.mark.parametrize("case", list(SCENARIOS))
def test_govern(case: str) -> None:
    others, now_min, start_min, by, wake_min = SCENARIOS[case]
    mine = plan("mine", 0, 60, 2)
    now = at(now_min)
    assert now is not None
    obligation, wake = obligation_at(mine, now)
    assert obligation is not None
    plans = [mine, *(plan(*other) for other in others)]  # type: ignore[arg-type]
    governed = govern(mine, obligation, wake, plans, now)
    if start_min is None:
        assert governed.obligation is None
    else:
        assert governed.obligation is not None
        assert governed.obligation.start_utc == at(start_min)
        assert governed.obligation.end_utc == at(60)
    assert governed.by_event_id == by
    assert governed.wake_utc == at(wake_min)


def test_no_priority_in_its_own_event_zero_ranks_below_any_number() -> None:
    mine = plan("mine", 0, 60, 0)
    obligation, wake = obligation_at(mine, at(15))  # type: ignore[arg-type]
    assert obligation is not None
    governed = govern(mine, obligation, wake, [mine, plan("H", 10, 20, 9)], at(15))  # type: ignore[arg-type]
    assert governed.obligation is not None
    assert governed.obligation.start_utc == at(20)


STANDING_KW = 120.0  # level 2: the standing event's ceiling
RELAXED_KW = 200.0  # level 1: the short overlapping event's ceiling


@pytest.mark.parametrize(
    ("standing", "short", "program", "during_kw"),
    [
        (2, 1, "same", RELAXED_KW),  # the short one ranks higher: it governs its span
        (0, 1, "same", RELAXED_KW),  # the standing one has no priority (0, the lowest)
        (1, 1, "same", STANDING_KW),  # equal: both stand, the stricter governs the load
        (1, 2, "same", STANDING_KW),  # the short one ranks lower: suspended throughout
        (2, 1, "other", STANDING_KW),  # another program: both stand
    ],
)
def test_a_higher_priority_event_governs_its_overlap_with_a_standing_one(
    standing: int, short: int, program: str, during_kw: float
) -> None:
    levels = {0: {"posture": "none"}, 1: {"ceiling_kw": RELAXED_KW}, 2: {"ceiling_kw": STANDING_KW}}

    async def main() -> None:
        vtn = Vtn(port=free_port())
        site = SimSite()
        ven = OpenAdrVen(ven_config(vtn, simple_levels=levels), site)
        async with running(vtn, site, ven):
            ven_id = ven.ven_id
            assert ven_id is not None
            long_id = vtn.publish(ven_id, vtn.event(ven_id, [2.0], interval_s=600,
                                                    priority=standing))  # fmt: skip
            await wait_until(lambda: site.site_kw() == STANDING_KW, 5, "the standing shed")
            context = "http://program.example/dr" if program == "same" else "http://other.example"
            short_id = vtn.publish(ven_id, vtn.event(
                ven_id, [1.0], interval_s=3, priority=short, market_context=context))  # fmt: skip
            await wait_until(lambda: short_id in ven.decisions, 5, "the short event")
            await asyncio.sleep(1.0)
            assert site.site_kw() == during_kw
            await wait_until(lambda: site.site_kw() == STANDING_KW, 6, "the standing shed again")
            assert ven.decisions[long_id].opt_type == "optIn"
            assert site.site_kw() < FULL_KW

    asyncio.run(main())

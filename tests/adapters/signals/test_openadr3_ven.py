"""The OpenADR 3.0 VEN (toadr3) against the OpenADR 3.0.1 VTN of openadr3_vtn.py on 127.0.0.1,
with the simulated site of the 2.0b tests behind it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from toadr3.models import Event

from adapters.signals.openadr3_events import not_for_ven
from adapters.signals.openadr3_ven import OpenAdr3Ven
from agent.config.openadr3 import OpenAdr3Config
from agent.domain.signals import Obligation, ObligationCancel, ObligationKind
from tests.adapters.signals.openadr3_vtn import Vtn3
from tests.adapters.signals.openadr_rig import SimSite, running_with, wait_until
from tests.helpers.peers import free_port

FULL_KW = 250.0
PROGRAM = "ERCOT-ERS-30"


def config(vtn: Vtn3, **overrides: object) -> OpenAdr3Config:
    fields: dict[str, object] = {
        "vtn_url": vtn.url, "client_id": vtn.client_id, "client_secret": vtn.client_secret,
        "ven_name": "small-site", "programs": [PROGRAM], "poll_interval_s": 0.2,
        "allow_plain_http": True,
        "simple_levels": {0: {"posture": "none"}, 2: {"ceiling_kw": 120}},
        **overrides,
    }  # fmt: skip
    return OpenAdr3Config.model_validate(fields)


def test_an_import_limit_is_followed_modified_and_released_when_the_vtn_deletes_it() -> None:
    async def main() -> None:
        vtn, site = Vtn3(port=free_port()), SimSite()
        refused: list[tuple[str, str]] = []
        ven = OpenAdr3Ven(config(vtn), site, on_refused=lambda e, w: refused.append((e, w)))
        program_id = vtn.add_program(PROGRAM)
        other = vtn.add_program("another-program")
        vtn.add_event(other, "IMPORT_CAPACITY_LIMIT", [10.0], units="KW")  # not enrolled
        async with running_with(vtn, site, ven):
            await wait_until(lambda: ven.reachable is True, 5, "the VTN")
            assert site.site_kw() == FULL_KW
            assert all(f"programID={other}" not in r for r in vtn.requests)
            ours = [{"type": "VEN_NAME", "values": ["small-site"]}]
            event_id = vtn.add_event(program_id, "IMPORT_CAPACITY_LIMIT", [120.0], units="KW",
                                     targets=ours)  # fmt: skip
            await wait_until(lambda: site.site_kw() == 120.0, 5, "the import limit")
            first = site.received[-1]
            assert isinstance(first, Obligation)
            assert (first.event_id, first.kind, first.kw) == (event_id, ObligationKind.LIMIT, 120)
            assert (first.program, first.source) == (PROGRAM, "openadr3")

            vtn.modify(event_id, "IMPORT_CAPACITY_LIMIT", [80.0])
            await wait_until(lambda: site.site_kw() == 80.0, 5, "the modification")
            assert ven.revision(event_id) == 1
            assert [o.event_id for o in site.received if isinstance(o, Obligation)] == [
                event_id, event_id,
            ]  # fmt: skip

            vtn.delete(event_id)
            await wait_until(lambda: site.site_kw() == FULL_KW, 5, "the release")
            assert isinstance(site.received[-1], ObligationCancel)
            assert ven.released[event_id] == "no longer listed by the VTN"
            assert refused == []

    asyncio.run(main())


def test_simple_levels_and_what_cannot_be_applied() -> None:
    async def main() -> None:
        vtn, site = Vtn3(port=free_port()), SimSite()
        refused: list[tuple[str, str]] = []
        ven = OpenAdr3Ven(config(vtn), site, on_refused=lambda e, w: refused.append((e, w)))
        program_id = vtn.add_program(PROGRAM)
        async with running_with(vtn, site, ven):
            price = vtn.add_event(program_id, "PRICE", [0.25])
            level_1 = vtn.add_event(program_id, "SIMPLE", [1.0])  # not in simple_levels
            watts = vtn.add_event(program_id, "IMPORT_CAPACITY_LIMIT", [5.0], units="MWH")
            await wait_until(lambda: len(refused) == 3, 5, "three refusals")
            reasons = dict(refused)
            assert "no payload this site maps" in reasons[price]
            assert "SIMPLE level 1 is not mapped" in reasons[level_1]
            assert "MWH is not a power" in reasons[watts]
            assert site.received == []
            vtn.add_event(program_id, "SIMPLE", [2.0])
            await wait_until(lambda: site.site_kw() == 120.0, 5, "level 2")

    asyncio.run(main())


def test_a_vtn_that_goes_away_keeps_the_obligation_and_a_wrong_secret_gets_nothing() -> None:
    async def main() -> None:
        vtn, site = Vtn3(port=free_port()), SimSite()
        ven = OpenAdr3Ven(config(vtn), site)
        program_id = vtn.add_program(PROGRAM)
        end = datetime.now(UTC) + timedelta(minutes=10)
        async with running_with(vtn, site, ven):
            vtn.add_event(program_id, "IMPORT_CAPACITY_LIMIT", [150.0], units="KW")
            await wait_until(lambda: site.site_kw() == 150.0, 5, "the import limit")
            vtn.down = True
            await wait_until(lambda: ven.reachable is False, 5, "the outage")
            await asyncio.sleep(0.5)
            assert site.site_kw() == 150.0  # held through the outage
            held = [o for o in site.received if isinstance(o, Obligation)][-1]
            assert held.end_utc is not None
            assert held.end_utc <= end + timedelta(seconds=1)  # it carries its own end
            vtn.down = False
            await wait_until(lambda: ven.reachable is True, 5, "the VTN back")
            assert site.site_kw() == 150.0
            assert not any(isinstance(o, ObligationCancel) for o in site.received)

        vtn2, site2 = Vtn3(port=free_port()), SimSite()
        wrong = OpenAdr3Ven(config(vtn2, client_secret="not-the-secret"), site2)
        vtn2.add_event(vtn2.add_program(PROGRAM), "IMPORT_CAPACITY_LIMIT", [10.0], units="KW")
        async with running_with(vtn2, site2, wrong):
            await wait_until(lambda: wrong.reachable is False, 5, "the refusal")
            assert site2.received == []
            assert not vtn2.requests  # never past the token endpoint

    asyncio.run(main())


def test_an_event_targeting_another_ven_name_is_not_this_sites() -> None:
    event = Event.model_validate({
        "id": "e1", "programID": "p1", "intervals": [],
        "targets": [{"type": "VEN_NAME", "values": ["other-site"]}],
    })  # fmt: skip
    assert not_for_ven(event, "small-site") == "targets VEN_NAME other-site, not small-site"
    ours = event.model_copy(update={"targets": None})
    assert not_for_ven(ours, "small-site") is None


def test_plain_http_is_refused_unless_allowed() -> None:
    vtn = Vtn3(port=1)
    with pytest.raises(ValueError, match="plain HTTP"):
        config(vtn, allow_plain_http=False)


def test_an_event_held_before_a_restart_and_gone_from_the_vtn_is_released() -> None:
    async def main() -> None:
        vtn, site = Vtn3(port=free_port()), SimSite()
        vtn.add_program(PROGRAM)
        ven = OpenAdr3Ven(config(vtn), site)
        start = datetime.now(UTC) - timedelta(minutes=5)
        end = start + timedelta(hours=1)
        old = Obligation("event-old", ObligationKind.LIMIT, 100.0, start, end, PROGRAM, "openadr3")
        ven.resume({"event-old": old})
        async with running_with(vtn, site, ven):
            await wait_until(lambda: bool(site.received), 5, "the release")
            assert site.received == [ObligationCancel("event-old", site.received[0].at_utc,
                                                      "openadr3")]  # fmt: skip
            assert ven.released["event-old"] == "no longer listed by the VTN"

    asyncio.run(main())


def test_a_token_without_expires_in_logs_in_and_a_refused_token_logs_in_again() -> None:
    """The reference VTN's token response has no expires_in: the VEN still polls; when the VTN
    stops taking the token (restarted, keys rotated), the next poll logs in again and an event
    created meanwhile is followed."""

    async def main() -> None:
        vtn, site = Vtn3(port=free_port()), SimSite()
        ven = OpenAdr3Ven(config(vtn), site)
        program_id = vtn.add_program(PROGRAM)
        async with running_with(vtn, site, ven):
            await wait_until(lambda: ven.reachable is True, 5, "the VTN")
            assert vtn.logins == 1
            polls = len(vtn.requests)
            await wait_until(lambda: len(vtn.requests) >= polls + 3, 5, "more polls")
            assert vtn.logins == 1  # the token is kept between polls
            vtn.forget_tokens()
            ours = [{"type": "VEN_NAME", "values": ["small-site"]}]
            vtn.add_event(program_id, "IMPORT_CAPACITY_LIMIT", [120.0], units="KW",
                          targets=ours)  # fmt: skip
            await wait_until(lambda: site.site_kw() == 120.0, 5, "the event after a new login")
            assert vtn.logins == 2

    asyncio.run(main())


def test_a_program_wide_event_applies_and_one_it_cannot_read_blinds_it_to_no_other() -> None:
    """Asked by VEN_NAME the VTN does not list an untargeted event of the program: the VEN
    reads the program's events too and follows it. An event with a P9999Y duration beside it
    is refused with the reason, and the other is still followed, modified and released; an
    event targeted at another VEN is left alone."""

    async def main() -> None:
        vtn, site = Vtn3(port=free_port()), SimSite()
        refused: list[tuple[str, str]] = []
        ven = OpenAdr3Ven(config(vtn), site, on_refused=lambda e, w: refused.append((e, w)))
        program_id = vtn.add_program(PROGRAM)
        theirs = [{"type": "VEN_NAME", "values": ["other-site"]}]
        vtn.add_event(program_id, "IMPORT_CAPACITY_LIMIT", [10.0], units="KW", targets=theirs)
        forever = vtn.add_event(program_id, "IMPORT_CAPACITY_LIMIT", [50.0], units="KW",
                                duration="P9999Y")  # fmt: skip
        async with running_with(vtn, site, ven):
            await wait_until(lambda: ven.reachable is True, 5, "the VTN")
            wide = vtn.add_event(program_id, "IMPORT_CAPACITY_LIMIT", [120.0], units="KW")
            await wait_until(lambda: site.site_kw() == 120.0, 5, "the program-wide event")
            assert [e for e, _ in refused] == [forever]
            assert "duration" in refused[0][1] or "P9999Y" in refused[0][1], refused
            vtn.modify(wide, "IMPORT_CAPACITY_LIMIT", [90.0])
            await wait_until(lambda: site.site_kw() == 90.0, 5, "the modification")
            vtn.delete(wide)
            await wait_until(lambda: site.site_kw() == FULL_KW, 5, "the release")
            assert ven.released[wide] == "no longer listed by the VTN"
            assert [e for e, _ in refused] == [forever]  # the other VEN's event: not refused

    asyncio.run(main())

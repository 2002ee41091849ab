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


def test_the_ven_keeps_its_object_is_woken_by_its_subscription_and_reports_on_time() -> None:
    """The VEN creates its `ven` object and resource, subscribes to its program's events with a
    webhook, follows an event within a second of the VTN's callback although it polls every
    30 s, and POSTs the reports the event's reportDescriptors ask at the end of each interval
    they are due, with the event's interval ids and periods; a payload it cannot measure is
    refused with the reason."""

    async def main() -> None:
        vtn, site = Vtn3(port=free_port()), SimSite()
        hook_port = free_port()
        refused: list[tuple[str, str]] = []
        cfg = config(vtn, poll_interval_s=30, resource_names=["site-a"],
                     callback_url=f"http://127.0.0.1:{hook_port}/oadr3/notify",
                     callback_listen_port=hook_port)  # fmt: skip
        ven = OpenAdr3Ven(cfg, site, on_refused=lambda e, w: refused.append((e, w)))
        program_id = vtn.add_program(PROGRAM)
        async with running_with(vtn, site, ven):
            await wait_until(lambda: len(vtn.subscriptions) == 1, 5, "the subscription")
            assert [v["venName"] for v in vtn.vens.values()] == ["small-site"]
            assert [(r["resourceName"], r["venID"]) for r in vtn.resources.values()] == [
                ("site-a", ven.ven_id)]  # fmt: skip
            (sub,) = vtn.subscriptions.values()
            assert sub["programID"] == program_id
            assert sub["objectOperations"][0]["objects"] == ["EVENT"]
            descriptors = [
                {"payloadType": "DEMAND", "readingType": "MEAN", "units": "KW",
                 "startInterval": 0, "numIntervals": 1, "frequency": 1, "repeat": -1},
                {"payloadType": "USAGE", "startInterval": 1, "numIntervals": 1},
                {"payloadType": "SETPOINT"},  # the defaults: once, at the end, every interval
                {"payloadType": "STORAGE_CHARGE_LEVEL"},
            ]  # fmt: skip
            start = datetime.now(UTC)
            event = vtn.add_event(program_id, "IMPORT_CAPACITY_LIMIT", [120.0] * 3, units="KW",
                                  interval_s=2, start=start,
                                  report_descriptors=descriptors)  # fmt: skip
            await wait_until(lambda: site.site_kw() == 120.0, 2, "the event, on the callback")
            assert vtn.notified >= 1
            assert [(e, "STORAGE_CHARGE_LEVEL" in w) for e, w in refused] == [(event, True)]
            await wait_until(lambda: len(vtn.reports) == 5, 10, "five reports")
        by_type: dict[str, list[dict[str, object]]] = {}
        for report in vtn.reports:
            assert (report["eventID"], report["programID"], report["clientName"]) == (
                event, program_id, "small-site")  # fmt: skip
            (descriptor,) = report["payloadDescriptors"]
            by_type.setdefault(descriptor["payloadType"], []).append(report)
        assert sorted(by_type) == ["DEMAND", "SETPOINT", "USAGE"]

        def intervals(report: dict[str, object]) -> list[tuple[int, str, float]]:
            (resource,) = report["resources"]  # type: ignore[misc]
            assert resource["resourceName"] == "site-a"
            return [(i["id"], i["intervalPeriod"]["start"], i["payloads"][0]["values"][0])
                    for i in resource["intervals"]]  # fmt: skip

        starts = [(start + timedelta(seconds=2 * k)).isoformat().replace("+00:00", "Z")
                  for k in range(3)]  # fmt: skip
        demand = [intervals(r) for r in by_type["DEMAND"]]
        assert [[(k, at) for k, at, _ in r] for r in demand] == [[(k, starts[k])] for k in range(3)]
        assert [r[0][2] for r in demand[1:]] == [120.0, 120.0]  # measured, once followed
        assert intervals(by_type["USAGE"][0]) == [(1, starts[1], round(120.0 * 2 / 3600, 3))]
        assert intervals(by_type["SETPOINT"][0]) == [(k, starts[k], 120.0) for k in range(3)]
        # each report was posted once its last interval had ended
        for report in vtn.reports:
            due = intervals(report)[-1][0]
            posted = datetime.fromisoformat(str(report["createdDateTime"]))
            assert posted >= start + timedelta(seconds=2 * (due + 1))

    asyncio.run(main())


def test_a_vtn_without_subscriptions_is_polled_and_a_known_ven_object_is_kept() -> None:
    async def main() -> None:
        vtn, site = Vtn3(port=free_port(), offers_subscriptions=False), SimSite()
        hook_port = free_port()
        cfg = config(vtn, callback_url=f"http://127.0.0.1:{hook_port}/notify",
                     callback_listen_port=hook_port)  # fmt: skip
        program_id = vtn.add_program(PROGRAM)
        async with running_with(vtn, site, ven := OpenAdr3Ven(cfg, site)):
            await wait_until(lambda: ven.ven_id is not None, 5, "the VEN object")
            vtn.add_event(program_id, "IMPORT_CAPACITY_LIMIT", [90.0], units="KW")
            await wait_until(lambda: site.site_kw() == 90.0, 5, "the event, by polling")
            assert not vtn.subscriptions
        # a restarted VEN finds its object by name rather than making a second one
        again = OpenAdr3Ven(cfg, SimSite())
        async with running_with(vtn, SimSite(), again):
            await wait_until(lambda: again.ven_id is not None, 5, "the VEN object again")
        assert again.ven_id == ven.ven_id
        assert len(vtn.vens) == 1

    asyncio.run(main())

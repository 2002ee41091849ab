"""The OpenADR VEN against a real openleadr VTN on 127.0.0.1, with a simulated site behind it."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta
from pathlib import Path

import pytest
from openleadr import objects

from adapters.signals.openadr_ven import OpenAdrVen
from agent.domain.signals import Obligation, ObligationCancel
from tests.adapters.signals.openadr_rig import (
    Pki,
    SimSite,
    Vtn,
    tls_overrides,
    vtn_received,
    wait_until,
)
from tests.helpers.openadr_ven import (
    FULL_KW,
    LEVEL_2_CEILING_KW,
    report_values,
    run,
    running,
    ven_config,
)
from tests.helpers.peers import free_port

# openleadr's VTN stores itself in its aiohttp app under a string key (test side only).
pytestmark = pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")


def test_an_event_committed_before_a_restart_and_no_longer_listed_is_released() -> None:
    async def main() -> None:
        vtn = Vtn(port=free_port())
        site = SimSite()
        # the agent restarted holding "gone", which the VTN ended while it was down
        ven = OpenAdrVen(ven_config(vtn), site, committed={"gone": 0})
        async with running(vtn, site, ven):
            ven_id = ven.ven_id
            assert ven_id is not None
            await asyncio.sleep(0.5)  # an answer without events (openleadr: oadrResponse)
            assert site.received == []  # is no evidence: the event stands until its end
            event_id = vtn.publish(ven_id, vtn.event(ven_id, [2.0], interval_s=600))
            await wait_until(lambda: len(site.received) == 2, 5, "the new event and the release")
            cancel, new = sorted(site.received, key=lambda v: isinstance(v, Obligation))
            assert isinstance(cancel, ObligationCancel)
            assert (cancel.event_id, cancel.source) == ("gone", "openadr")
            assert ven.released["gone"] == "no longer listed by the VTN"
            assert isinstance(new, Obligation)
            assert new.event_id == event_id

    asyncio.run(main())


def test_an_event_below_what_the_site_can_shed_is_opted_out_with_a_reason() -> None:
    async def scenario(vtn: Vtn, site: SimSite, ven: OpenAdrVen) -> None:
        ven_id = ven.ven_id
        assert ven_id is not None
        # 20 kW is below the 50 kW of protected and critical load the site keeps running
        event = vtn.event(ven_id, [20.0], signal_name="LOAD_DISPATCH", signal_type="setpoint")
        event_id = vtn.publish(ven_id, event)
        await wait_until(lambda: (event_id, "optOut") in vtn.opt_types, 5, "the opt-out")
        await wait_until(lambda: bool(vtn.created_opts), 5, "the oadrCreateOpt with a reason")
        opt = vtn.created_opts[0]
        assert opt["opt_type"] == "optOut"
        assert opt["opt_reason"] == "mustRun"
        assert (opt["event_id"], opt["modification_number"]) == (event_id, 0)
        assert "below the 50.0 kW" in ven.decisions[event_id].reason
        assert site.received == []
        assert site.site_kw() == FULL_KW

    run(scenario)


def test_a_multi_interval_event_steps_its_target_under_one_obligation() -> None:
    async def scenario(vtn: Vtn, site: SimSite, ven: OpenAdrVen) -> None:
        ven_id = ven.ven_id
        assert ven_id is not None
        event = vtn.event(
            ven_id, [200.0, 150.0], interval_s=1.0, signal_name="LOAD_DISPATCH",
            signal_type="setpoint", ramp_up=timedelta(seconds=0.5),
        )  # fmt: skip
        vtn.publish(ven_id, event)
        await wait_until(lambda: site.site_kw() == 200.0, 5, "the first interval's ceiling")
        await wait_until(lambda: site.site_kw() == 150.0, 5, "the second interval's ceiling")
        await wait_until(lambda: site.site_kw() == FULL_KW, 5, "the end of the event")
        kws = [o.kw for o in site.received if not isinstance(o, ObligationCancel)]
        assert kws == [200.0, 150.0]
        assert len({o.event_id for o in site.received}) == 1

    run(scenario)


def test_over_mutual_tls_with_signed_messages_the_ven_registers_and_sheds(tmp_path: Path) -> None:
    pki = Pki.create(tmp_path)

    async def scenario(vtn: Vtn, site: SimSite, ven: OpenAdrVen) -> None:
        ven_id = ven.ven_id
        assert ven_id is not None
        event_id = vtn.publish(ven_id, vtn.event(ven_id, [2.0], interval_s=600))
        await wait_until(lambda: (event_id, "optIn") in vtn.opt_types, 5, "the opt-in")
        await wait_until(lambda: site.site_kw() == LEVEL_2_CEILING_KW, 5, "the shed")
        await wait_until(lambda: LEVEL_2_CEILING_KW in report_values(vtn), 5, "a report")

    run(scenario, pki, **tls_overrides(pki))


def test_a_vtn_whose_signature_does_not_match_the_fingerprint_is_never_joined(
    tmp_path: Path,
) -> None:
    pki = Pki.create(tmp_path)
    tls = {**tls_overrides(pki), "vtn_fingerprint": "00:11:22:33:44:55:66:77:88:99"}

    async def main() -> None:
        vtn = Vtn(port=free_port(), pki=pki)
        site = SimSite()
        ven = OpenAdrVen(ven_config(vtn, **tls), site)
        await vtn.start()
        task = asyncio.create_task(ven.run(site.sink))
        try:
            await asyncio.sleep(1.5)
            assert not ven.registered
            assert ven.reachable is False  # every answer is dropped as unauthenticated
            assert not vtn.opt_types
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await vtn.stop()

    asyncio.run(main())


def test_a_vtn_that_lost_its_registrations_is_rejoined_afresh_over_tls(tmp_path: Path) -> None:
    """The VTN restarts without its registrations and refuses the old venID (463): the VEN
    registers as new, takes the venID given now, and an event published to it is followed."""
    pki = Pki.create(tmp_path)

    async def main() -> None:
        vtn = Vtn(port=free_port(), pki=pki, refuse_unknown_ids=True)
        site = SimSite()
        ven = OpenAdrVen(ven_config(vtn, **tls_overrides(pki)), site)
        async with running(vtn, site, ven):
            first = ven.ven_id
            await vtn.stop()
            await vtn.start()  # forgets every registration
            await wait_until(lambda: ven.registered and ven.ven_id != first, 15,
                             "registration under a new venID")  # fmt: skip
            new_id = ven.ven_id
            assert new_id is not None
            assert new_id in vtn.registrations
            event_id = vtn.publish(new_id, vtn.event(new_id, [2.0], interval_s=600))
            await wait_until(lambda: (event_id, "optIn") in vtn.opt_types, 10, "the opt-in")
            await wait_until(lambda: site.site_kw() == LEVEL_2_CEILING_KW, 5, "the shed")

    asyncio.run(main())


NOT_OURS = {
    "another venID": ({"ven_id": "ven-someone-else"}, {}, "targets ven_id ven-someone-else"),
    "a resource the site lacks": ({"resource_id": "pump-7"}, {},
                                  "targets resource pump-7, which this site does not have"),
    "another group": ({"group_id": "west-feeders"}, {"group_ids": ["east-feeders"]},
                      "targets group_id west-feeders"),
    "another program": ({}, {"programs": ["http://program.example/ers"]},
                        "market context http://program.example/dr is not a program"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(NOT_OURS))
def test_an_event_not_for_this_site_is_opted_out_and_never_applied(case: str) -> None:
    target, enrolment, reason = NOT_OURS[case]

    async def scenario(vtn: Vtn, site: SimSite, ven: OpenAdrVen) -> None:
        ven_id = ven.ven_id
        assert ven_id is not None
        targets = [objects.Target(**target)] if target else None
        event_id = vtn.publish(ven_id, vtn.event(ven_id, [2.0], interval_s=600, targets=targets))
        await wait_until(lambda: (event_id, "optOut") in vtn.opt_types, 5, "the opt-out")
        assert reason in ven.decisions[event_id].reason
        assert ven.decisions[event_id].reason.startswith("not for this site")
        assert site.received == []  # nothing ever reached the site
        assert site.site_kw() == FULL_KW

    run(scenario, **enrolment)


def test_an_event_for_this_ven_and_its_resource_in_an_enrolled_program_is_followed() -> None:
    async def scenario(vtn: Vtn, site: SimSite, ven: OpenAdrVen) -> None:
        ven_id = ven.ven_id
        assert ven_id is not None
        targets = [objects.Target(ven_id=ven_id), objects.Target(resource_id="site")]
        event_id = vtn.publish(ven_id, vtn.event(ven_id, [2.0], interval_s=600, targets=targets))
        await wait_until(lambda: (event_id, "optIn") in vtn.opt_types, 5, "the opt-in")
        await wait_until(lambda: site.site_kw() == LEVEL_2_CEILING_KW, 5, "the shed")

    run(scenario, programs=["http://program.example/dr"])


def test_while_the_vtn_has_messages_queued_the_ven_polls_again_at_once() -> None:
    """Two messages queued (an event, then the same distribution with a second event) under a
    4 s oadrPollFreq: the second arrives on the next poll, not a poll interval later."""

    async def main() -> None:
        vtn = Vtn(port=free_port(), poll_s=4, queued={})
        site = SimSite()
        ven = OpenAdrVen(ven_config(vtn, poll_interval_s=None), site)
        async with running(vtn, site, ven):
            ven_id = ven.ven_id
            assert ven_id is not None
            assert ven.poll_s == 4
            first = vtn.event(ven_id, [1.0], interval_s=600, event_id="queued-1")
            second = vtn.event(ven_id, [2.0], interval_s=600, event_id="queued-2")
            for event in (first, second):
                vtn.publish(ven_id, event)  # registers the opt callbacks
            assert vtn.queued is not None
            vtn.queued[ven_id] = [[first], [first, second]]
            await wait_until(lambda: "queued-1" in ven.decisions, 10, "the first event")
            got_first = asyncio.get_running_loop().time()
            await wait_until(lambda: "queued-2" in ven.decisions, 10, "the second event")
            assert asyncio.get_running_loop().time() - got_first < 2.0  # a poll, not 4 s

    asyncio.run(main())


@pytest.mark.parametrize(
    ("asked", "configured", "polls_s"),
    [
        ("PT2S", None, 2.0),
        ("PT2S", 0.5, 0.5),
        ("P", None, 10.0),
        ("PT0.5S", None, 0.5),  # not a 2.0b duration (whole seconds), honoured all the same
        ("PT0.05S", None, 0.2),  # under the floor: the floor
    ],
)
def test_the_poll_interval_follows_the_vtn_unless_the_site_file_sets_a_faster_one(
    asked: str, configured: float | None, polls_s: float
) -> None:
    async def main() -> None:
        vtn = Vtn(port=free_port(), requested_poll=asked)
        site = SimSite()
        ven = OpenAdrVen(ven_config(vtn, poll_interval_s=configured), site)
        async with running(vtn, site, ven):
            assert ven.poll_s == polls_s

    asyncio.run(main())


def test_a_poll_interval_under_the_floor_is_refused_by_the_site_file() -> None:
    with pytest.raises(ValueError, match=r"greater than or equal to 0\.2"):
        ven_config(Vtn(port=1), poll_interval_s=0.1)


def test_report_metadata_declares_60_hz_the_site_voltage_and_the_same_ids_every_start() -> None:
    """openleadr's defaults are 50 Hz / 230 V and new random ids at each start: the VTN is told
    what the site is, under ids that survive a restart of the agent."""

    def registered_reports(received: list[str]) -> list[str]:
        return [x for x in received if "oadrRegisterReport" in x and "TELEMETRY_USAGE" in x]

    async def one_run(voltage: float) -> str:
        with vtn_received() as received:
            vtn = Vtn(port=free_port())
            site = SimSite()
            ven = OpenAdrVen(ven_config(vtn, nominal_voltage_v=voltage), site)
            async with running(vtn, site, ven):
                await wait_until(lambda: bool(registered_reports(received)), 5,
                                 "the report registration")  # fmt: skip
            return registered_reports(received)[-1]

    first = asyncio.run(one_run(480))
    second = asyncio.run(one_run(480))
    for xml in (first, second):
        assert re.search(r"<power:hertz>60</power:hertz>", xml)
        assert re.search(r"<power:voltage>480(\.0)?</power:voltage>", xml)

    def ids(xml: str) -> tuple[list[str], list[str]]:
        return re.findall(r"<ei:rID>([^<]+)</ei:rID>", xml), re.findall(
            r"<ei:reportSpecifierID>([^<]+)</ei:reportSpecifierID>", xml
        )

    assert ids(first) == ids(second)
    assert ids(first) == (
        ["site:realPower", "site:status"],
        ["small-site:TELEMETRY_USAGE", "small-site:TELEMETRY_STATUS"],
    )


def test_a_metadata_request_is_answered_and_a_report_it_does_not_offer_is_refused() -> None:
    """oadrCreateReport for METADATA gets the VEN's oadrRegisterReport again; one for
    HISTORY_USAGE (not offered) gets an oadrCreatedReport with 461, not "200, pending"."""

    async def main(received: list[str]) -> None:
        vtn = Vtn(port=free_port(), queued={})
        site = SimSite()
        ven = OpenAdrVen(ven_config(vtn), site)
        async with running(vtn, site, ven):
            ven_id = ven.ven_id
            assert ven_id is not None

            def registers() -> int:
                return sum("oadrRegisterReport" in x for x in received)

            before = registers()
            assert vtn.queued is not None
            vtn.queued[ven_id] = [vtn.report_request("METADATA")]
            await wait_until(lambda: registers() > before, 5, "the metadata again")
            vtn.queued[ven_id] = [vtn.report_request("HISTORY_USAGE")]
            await wait_until(lambda: any("oadrCreatedReport" in x and ">461<" in x
                                         for x in received), 5, "the refusal")  # fmt: skip

    with vtn_received() as received:
        asyncio.run(main(received))

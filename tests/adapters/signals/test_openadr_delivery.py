"""Delivery edges of the OpenADR VEN against a real openleadr VTN: a schema-invalid event beside
valid ones, and the answers the VTN reads back (eventResponse codes, as sent on the wire)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from lxml import etree
from openleadr import objects
from openleadr.messaging import create_message

from adapters.signals.openadr_salvage import salvage_distribute_event
from adapters.signals.openadr_ven import OpenAdrVen
from tests.adapters.signals.openadr_rig import (
    Pki,
    SimSite,
    Vtn,
    tls_overrides,
    vtn_received,
    wait_until,
)
from tests.helpers.openadr_ven import LEVEL_2_CEILING_KW, running, ven_config
from tests.helpers.peers import free_port

pytestmark = pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")

EI = "{http://docs.oasis-open.org/ns/energyinterop/201110}"


def event_responses(received: list[str]) -> list[tuple[str, int, int, str]]:
    """(event id, modification number, response code, opt type) of every eventResponse in the
    oadrCreatedEvent messages the VTN received, read from the XML as a VTN would."""
    responses = [
        response
        for text in received
        if "oadrCreatedEvent" in text
        for response in etree.fromstring(text.encode()).iter(f"{EI}eventResponse")
    ]
    return [
        (
            response.findtext(f"{EI}qualifiedEventID/{EI}eventID"),
            int(response.findtext(f"{EI}qualifiedEventID/{EI}modificationNumber")),
            int(response.findtext(f"{EI}responseCode")),
            response.findtext(f"{EI}optType"),
        )
        for response in responses
    ]


def registrations(received: list[str]) -> int:
    return sum("oadrCreatePartyRegistration" in text for text in received)


@pytest.mark.parametrize("secure", [False, True], ids=["http", "tls-signed"])
def test_a_schema_invalid_event_is_rejected_alone_and_the_valid_one_beside_it_is_followed(
    secure: bool, tmp_path: Path
) -> None:
    """One distribution, two events; the second's signalType is not in the schema's set. The
    first is opted in and shed for, the second answered 454 and never applied, and the VEN does
    not take the message for a lost VTN (no re-registration)."""

    async def main(received: list[str]) -> None:
        pki = Pki.create(tmp_path) if secure else None
        vtn = Vtn(port=free_port(), pki=pki, queued={})
        site = SimSite()
        overrides = tls_overrides(pki) if pki is not None else {}
        ven = OpenAdrVen(ven_config(vtn, **overrides), site)
        async with running(vtn, site, ven):
            ven_id = ven.ven_id
            assert ven_id is not None
            good = vtn.event(ven_id, [2.0], interval_s=600, event_id="good-1")
            bad = vtn.event(ven_id, [3.0], interval_s=600, event_id="bad-1")
            bad.event_signals[0].signal_type = "bogus"  # openleadr renders it as it stands
            assert vtn.queued is not None
            joined = registrations(received)
            vtn.queued[ven_id] = [[good, bad]]
            await wait_until(lambda: site.site_kw() == LEVEL_2_CEILING_KW, 5, "the good shed")
            await wait_until(lambda: ("bad-1", 0, 454, "optOut") in event_responses(received),
                             5, "the rejection")  # fmt: skip
            assert ("good-1", 0, 200, "optIn") in event_responses(received)
            assert ven.decisions["bad-1"].opt_type == "optOut"
            assert "signalType" in ven.decisions["bad-1"].reason
            assert {o.event_id for o in site.received} == {"good-1"}
            await asyncio.sleep(0.5)  # a few polls: still registered, still the same session
            assert ven.registered
            assert ven.reachable
            assert registrations(received) == joined

    with vtn_received() as received:
        asyncio.run(main(received))


def test_an_invalid_modification_of_a_followed_event_keeps_the_accepted_version() -> None:
    """Modification 1 of an event the site follows fails the schema: it is answered 454 and the
    site goes on following modification 0 (the event is still listed, so not withdrawn)."""

    async def main(received: list[str]) -> None:
        vtn = Vtn(port=free_port(), queued={})
        site = SimSite()
        ven = OpenAdrVen(ven_config(vtn), site)
        async with running(vtn, site, ven):
            ven_id = ven.ven_id
            assert ven_id is not None
            event = vtn.event(ven_id, [2.0], interval_s=600, event_id="held-1")
            assert vtn.queued is not None
            vtn.queued[ven_id] = [[event]]
            await wait_until(lambda: site.site_kw() == LEVEL_2_CEILING_KW, 5, "the shed")
            event.event_descriptor.modification_number = 1
            event.event_signals[0].signal_type = "bogus"
            vtn.queued[ven_id] = [[event]]
            await wait_until(lambda: ("held-1", 1, 454, "optOut") in event_responses(received),
                             5, "the rejection")  # fmt: skip
            await asyncio.sleep(0.5)
            assert site.site_kw() == LEVEL_2_CEILING_KW
            assert ven.revision("held-1") == 0
            assert "still following modification 0" in ven.decisions["held-1"].reason
            assert not [o for o in site.received if not hasattr(o, "kind")]  # no cancel

    with vtn_received() as received:
        asyncio.run(main(received))


def test_a_signed_distribution_altered_in_transit_is_not_salvaged(tmp_path: Path) -> None:
    """Salvage checks the VTN's signature on the message as received: a valid event whose
    payload was changed after signing (beside an invalid one) is not followed."""
    pki = Pki.create(tmp_path)
    vtn = Vtn(port=1)
    good = vtn.event("ven-1", [1.0], event_id="good-1")
    bad = vtn.event("ven-1", [1.0], event_id="bad-1")
    bad.event_signals[0].signal_type = "bogus"
    signed = create_message(
        "oadrDistributeEvent", cert=pki.vtn_cert.read_bytes(), key=pki.vtn_key.read_bytes(),
        events=[good, bad], request_id="r1", vtn_id="VTN",
        response={"response_code": 200, "response_description": "OK", "request_id": "r1"},
    )  # fmt: skip
    fingerprint = Pki.fingerprint(pki.vtn_cert)
    salvaged = salvage_distribute_event(signed.encode(), fingerprint)
    assert salvaged is not None
    assert [e["event_descriptor"]["event_id"] for e in salvaged.payload["events"]] == ["good-1"]
    assert [r.event_id for r in salvaged.rejected] == ["bad-1"]
    altered = signed.replace("<ei:value>1.0</ei:value>", "<ei:value>3.0</ei:value>", 1)
    assert altered != signed
    assert salvage_distribute_event(altered.encode(), fingerprint) is None
    assert salvage_distribute_event(b"<not-openadr/>", None) is None


KW = objects.Measurement(
    name="powerReal",
    description="RealPower",
    unit="W",
    scale="k",
    power_attributes=objects.PowerAttributes(hertz=60, voltage=480, ac=True),
)
# the simulated site runs at 250 kW, rated 250 kW (openadr_rig.small_fleet)
SIGNALS = {
    "LOAD_DISPATCH delta -150 kW": ("LOAD_DISPATCH", "delta", -150.0, KW, 100.0),
    "LOAD_CONTROL capacity 0.4": ("LOAD_CONTROL", "x-loadControlCapacity", 0.4, None, 100.0),
    "LOAD_CONTROL percent offset -40": ("LOAD_CONTROL", "x-loadControlPercentOffset", -40.0,
                                        None, 150.0),
    "LOAD_DISPATCH multiplier beside SIMPLE 2": ("LOAD_DISPATCH", "multiplier", 0.5, None,
                                                  LEVEL_2_CEILING_KW),
}  # fmt: skip


@pytest.mark.parametrize("case", list(SIGNALS))
def test_each_dispatch_signal_sheds_the_site_to_what_it_asks(case: str) -> None:
    """Through the VTN: a delta in kW, a fraction of capacity, a percent of the load, and a
    signal type the site does not follow with a SIMPLE signal beside it (followed instead)."""
    name, signal_type, value, measurement, ceiling_kw = SIGNALS[case]
    mapping = {"meaning": "shed", "unit": "kW"}

    async def main() -> None:
        vtn = Vtn(port=free_port())
        site = SimSite()
        ven = OpenAdrVen(ven_config(vtn, load_dispatch=mapping, load_control=mapping), site)
        async with running(vtn, site, ven):
            ven_id = ven.ven_id
            assert ven_id is not None
            event = vtn.event(ven_id, [value], interval_s=600, signal_name=name,
                              signal_type=signal_type, measurement=measurement)  # fmt: skip
            if signal_type == "multiplier":
                simple = vtn.event(ven_id, [2.0], interval_s=600).event_signals[0]
                event.event_signals.append(simple)
            event_id = vtn.publish(ven_id, event)
            await wait_until(lambda: (event_id, "optIn") in vtn.opt_types, 5, "the opt-in")
            await wait_until(lambda: site.site_kw() <= ceiling_kw + 1e-6, 5, "the shed")
            assert site.site_kw() >= ceiling_kw - 10.0  # no deeper than one 10 kW miner below
            decided = ven.decisions[event_id].reason
            assert ("SIMPLE" if signal_type == "multiplier" else name) in decided

    asyncio.run(main())


def test_events_waiting_at_registration_are_salvaged_the_same_way() -> None:
    """The VTN holds a valid and a schema-invalid event when the VEN registers: they come only in
    the answer to its oadrRequestEvent (polls bring nothing), and the valid one is followed."""

    async def main(received: list[str]) -> None:
        vtn = Vtn(port=free_port(), queued={})
        site = SimSite()
        ven = OpenAdrVen(ven_config(vtn), site)
        ven_id = "ven-small-site"  # what the test VTN assigns (openadr_rig.Vtn._register)
        good = vtn.event(ven_id, [2.0], interval_s=600, event_id="early-good")
        bad = vtn.event(ven_id, [3.0], interval_s=600, event_id="early-bad")
        bad.event_signals[0].signal_type = "bogus"
        vtn.on_request[ven_id] = [good, bad]
        await vtn.start()
        tasks = [asyncio.create_task(site.run()), asyncio.create_task(ven.run(site.sink))]
        try:
            await wait_until(lambda: site.site_kw() == LEVEL_2_CEILING_KW, 10, "the early shed")
            await wait_until(lambda: ("early-bad", 0, 454, "optOut") in event_responses(received),
                             5, "the rejection")  # fmt: skip
            assert {o.event_id for o in site.received} == {"early-good"}
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await vtn.stop()

    with vtn_received() as received:
        asyncio.run(main(received))

"""Delivery edges of the OpenADR VEN against a real openleadr VTN: a schema-invalid event beside
valid ones, and the answers the VTN reads back (eventResponse codes, as sent on the wire)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from lxml import etree
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
from tests.adapters.signals.test_openadr_ven import LEVEL_2_CEILING_KW, running, ven_config
from tests.conftest import free_port

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

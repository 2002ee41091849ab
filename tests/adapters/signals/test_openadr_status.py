"""The VEN's TELEMETRY_STATUS report against a real openleadr VTN: declared in the metadata,
served when asked, schema-valid, true to the site, stopped when cancelled."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest
from openleadr.messaging import validate_xml_schema

from adapters.signals.openadr_ven import OpenAdrVen
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
    running,
    ven_config,
)
from tests.helpers.peers import free_port

pytestmark = pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")

OADR = "{http://openadr.org/oadr-2.0b/2012/07}"
EI = "{http://docs.oasis-open.org/ns/energyinterop/201110}"
SPECIFIER = "small-site:TELEMETRY_STATUS"
CAPACITY_KW = 250.0  # the simulated site's rated total (openadr_rig.small_fleet)
FLOOR_KW = 10.0  # its controls, which no event sheds


def status_reports(received: list[str]) -> list[dict[str, object]]:
    """Each TELEMETRY_STATUS oadrUpdateReport the VTN received, schema-checked and read."""
    found = []
    for text in received:
        if "oadrUpdateReport" not in text or "TELEMETRY_STATUS" not in text:
            continue
        root = validate_xml_schema(text)  # raises on a message that fails the 2.0b schema
        status = next(root.iter(f"{OADR}oadrPayloadResourceStatus"))
        capacity = next(status.iter(f"{OADR}oadrCapacity"))
        found.append({
            "request": root.findtext(f".//{EI}reportRequestID"),
            "online": status.findtext(f"{OADR}oadrOnline"),
            "override": status.findtext(f"{OADR}oadrManualOverride"),
            "min": float(capacity.findtext(f"{OADR}oadrMin") or "nan"),
            "current": float(capacity.findtext(f"{OADR}oadrCurrent") or "nan"),
        })  # fmt: skip
    return found


@pytest.mark.parametrize("secure", [False, True], ids=["http", "tls-signed"])
def test_a_requested_status_report_tells_online_override_and_load_until_cancelled(
    secure: bool, tmp_path: Path
) -> None:
    async def main(received: list[str]) -> None:
        pki = Pki.create(tmp_path) if secure else None
        vtn = Vtn(port=free_port(), pki=pki, queued={})
        site = SimSite()
        ven = OpenAdrVen(ven_config(vtn, **(tls_overrides(pki) if pki else {})), site)
        async with running(vtn, site, ven):
            ven_id = ven.ven_id
            assert ven_id is not None
            assert any(SPECIFIER in x and "x-resourceStatus" in x and "oadrRegisterReport" in x
                       for x in received)  # fmt: skip
            assert vtn.queued is not None
            request = vtn.report_request(SPECIFIER, timedelta(seconds=1), "site:status")
            request_id = request[1]["report_requests"][0]["report_request_id"]
            vtn.queued[ven_id] = [request]
            await wait_until(lambda: len(status_reports(received)) >= 2, 5, "two reports")
            first = status_reports(received)[0]
            assert first == {
                "request": request_id,
                "online": "true",
                "override": "false",
                "min": FLOOR_KW / CAPACITY_KW,
                "current": FULL_KW / CAPACITY_KW,
            }
            # the site sheds under an event and an engineer overrides: the next report says so
            event = vtn.event(ven_id, [2.0], interval_s=600)
            site.overridden = True
            vtn.queued[ven_id] = [[event]]
            await wait_until(
                lambda: (
                    status_reports(received)[-1]["override"] == "true"
                    and status_reports(received)[-1]["current"] == LEVEL_2_CEILING_KW / CAPACITY_KW
                ),
                5,
                "the shed reported",
            )
            vtn.queued[ven_id] = [vtn.cancel_report(request_id)]
            await wait_until(lambda: any("oadrCanceledReport" in x for x in received), 5,
                             "the cancellation answered")  # fmt: skip
            count = len(status_reports(received))
            await asyncio.sleep(2.5)
            assert len(status_reports(received)) <= count + 1  # one may have been on its way
            assert ven.registered

    with vtn_received() as received:
        asyncio.run(main(received))


def test_a_one_time_status_request_is_answered_once() -> None:
    async def main(received: list[str]) -> None:
        vtn = Vtn(port=free_port(), queued={})
        site = SimSite()
        ven = OpenAdrVen(ven_config(vtn), site)
        async with running(vtn, site, ven):
            assert ven.ven_id is not None
            assert vtn.queued is not None
            vtn.queued[ven.ven_id] = [vtn.report_request(SPECIFIER, r_id="site:status")]
            await wait_until(lambda: len(status_reports(received)) == 1, 5, "the report")
            await asyncio.sleep(1.5)
            assert len(status_reports(received)) == 1

    with vtn_received() as received:
        asyncio.run(main(received))


def test_the_running_service_reports_an_engineers_override_in_its_status(tmp_path: Path) -> None:
    """Through serve() on simulated Modbus devices: the status is online with no override, then
    an override issued to the service shows in the next report."""
    from adapters.sim.modbus_server import SimModbusSite
    from agent.app.simsite import endpoints_for
    from agent.domain.signals import Override, OverrideAction
    from tests.helpers.openadr_service import VEN_ID, enrolled, service_running, utc_now

    async def main(received: list[str]) -> None:
        vtn = Vtn(port=free_port(), queued={})
        config = enrolled(tmp_path, vtn, "st")
        await vtn.start()
        try:
            async with SimModbusSite(endpoints_for(config)), service_running(config) as run:
                await wait_until(lambda: VEN_ID in vtn.registrations, 10, "the VEN to register")
                assert vtn.queued is not None
                vtn.queued[VEN_ID] = [
                    vtn.report_request(SPECIFIER, timedelta(seconds=1), "site:status")
                ]
                await wait_until(lambda: bool(status_reports(received)), 5, "a status report")
                assert status_reports(received)[-1]["online"] == "true"
                assert status_reports(received)[-1]["override"] == "false"
                load_class = next(iter(config.classes))
                run.service.snapshot(Override("eng-1", OverrideAction.OFF,
                                              utc_now() + timedelta(minutes=5),
                                              load_class=load_class, issued_by="test"))  # fmt: skip
                await wait_until(lambda: status_reports(received)[-1]["override"] == "true", 5,
                                 "the override reported")  # fmt: skip
        finally:
            await vtn.stop()

    with vtn_received() as received:
        asyncio.run(main(received))

"""OpenADR through the running service: a real openleadr VTN on 127.0.0.1, the VEN started by
`serve()` (what `gridflex run` runs), the shell over simulated Modbus devices on loopback.

The VEN sees the site through the shell (verified kW), its events go through the event book
(acks on dispatch/ack, the audit log), and the devices are what moves.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from openleadr import objects, utils

from adapters.sim.modbus_server import SimModbusSite
from agent.app.simsite import endpoints_for
from agent.domain.signals import Obligation, ObligationKind
from agent.service.events import EventBook
from agent.service.store import Store
from tests.adapters.signals.openadr_rig import Vtn, wait_until
from tests.helpers.openadr_service import (
    CONTROLS_KW,
    FULL_KW,
    LEVEL_2_CEILING_KW,
    LEVEL_3_CEILING_KW,
    TOLERANCE,
    VEN_ID,
    VEN_NAME,
    audit,
    devices_kw,
    enrolled,
    reports_sampled_after,
    service_running,
    utc_now,
)
from tests.helpers.peers import free_port
from tests.service.site import site_config

# openleadr's VTN stores itself in its aiohttp app under a string key (test side only).
pytestmark = pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")


def test_a_level_2_event_sheds_the_site_is_modified_survives_a_vtn_restart_and_is_cancelled(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        vtn = Vtn(port=free_port())
        config = enrolled(tmp_path, vtn, "oa")
        await vtn.start()
        async with SimModbusSite(endpoints_for(config)) as sim, service_running(config) as run:
            await wait_until(lambda: VEN_ID in vtn.registrations, 10, "the VEN to register")
            await wait_until(lambda: FULL_KW in [v for _, v in vtn.reports], 5, "a full report")

            # a SIMPLE level-2 event: opt in, shed to the mapped ceiling, verified, acked
            event = vtn.event(VEN_ID, [2.0], interval_s=600)
            event_id = vtn.publish(VEN_ID, event)
            await wait_until(lambda: (event_id, "optIn") in vtn.opt_types, 5, "the opt-in")
            await wait_until(lambda: "active" in run.statuses(event_id), 5, "the event active")
            assert run.statuses(event_id) == ["accepted", "active"]
            assert run.site_kw() <= LEVEL_2_CEILING_KW * TOLERANCE
            assert devices_kw(sim) <= LEVEL_2_CEILING_KW * TOLERANCE
            assert devices_kw(sim) < FULL_KW - 100  # the devices moved, not just the plan
            active = run.acks(event_id)[-1]
            assert active.achieved_kw == pytest.approx(run.site_kw(), abs=0.01)
            run.service.store.flush()
            record = run.service.store.event(event_id)
            assert record is not None
            assert (record.source, record.program) == ("openadr", "http://program.example/dr")
            shed_at = utc_now()
            await wait_until(lambda: bool(reports_sampled_after(vtn, shed_at)), 5, "a report")
            assert max(reports_sampled_after(vtn, shed_at)) <= LEVEL_2_CEILING_KW * TOLERANCE

            # a modification to level 3: the same event, a lower ceiling, verified again
            vtn.modify(VEN_ID, event_id, [3.0])
            await wait_until(lambda: run.statuses(event_id).count("active") == 2, 5, "level 3")
            assert run.statuses(event_id) == ["accepted", "active", "accepted", "active"]
            assert "modification 1" in run.acks(event_id)[2].reason
            assert devices_kw(sim) <= LEVEL_3_CEILING_KW * TOLERANCE
            assert [e.event_id for e in run.service.events.live] == [event_id]
            assert run.service.events.live[0].revision == 1

            # the VTN goes away: the event stands; it comes back (a fresh process that forgot
            # every registration, the program still has the event): the VEN re-joins
            modified = utils.find_by(vtn.server.events[VEN_ID], "event_descriptor.event_id",
                                     event_id)  # fmt: skip
            first_registration = vtn.registrations[VEN_ID]
            await vtn.stop()
            await asyncio.sleep(1.0)
            assert run.site_kw() <= LEVEL_3_CEILING_KW * TOLERANCE
            await vtn.start()
            vtn.server.add_raw_event(ven_id=VEN_ID, event=modified)
            await wait_until(lambda: VEN_ID in vtn.registrations, 10, "the re-registration")
            assert vtn.registrations[VEN_ID] != first_registration
            rejoined_at = utc_now()
            await wait_until(lambda: bool(reports_sampled_after(vtn, rejoined_at)), 5, "reports")
            assert max(reports_sampled_after(vtn, rejoined_at)) <= LEVEL_3_CEILING_KW * TOLERANCE
            assert run.statuses(event_id) == ["accepted", "active", "accepted", "active"]
            assert [e.event_id for e in run.service.events.live] == [event_id]

            # a cancellation releases the event and the load comes back
            vtn.cancel(VEN_ID, event_id)
            await wait_until(lambda: "completed" in run.statuses(event_id), 5, "the release")
            assert "cancelled by the VTN" in run.acks(event_id)[-1].reason
            await wait_until(lambda: devices_kw(sim) == FULL_KW, 5, "the devices back on")
            restored_at = utc_now()
            await wait_until(
                lambda: FULL_KW in reports_sampled_after(vtn, restored_at), 5, "a full report"
            )
            assert not run.service.events.live
        await vtn.stop()

        rows = [r for r in audit(config.service.database) if r["subject"] == event_id]
        kinds = [r["kind"] for r in rows]
        assert [k for k in kinds if k.startswith("event-")] == [
            "event-accepted", "event-active", "event-modified", "event-active", "event-completed",
        ]  # fmt: skip
        assert {r["source"] for r in rows} == {"openadr"}
        modified_row = rows[kinds.index("event-modified")]
        assert modified_row["detail"]["was"]["requested_kw"] == LEVEL_2_CEILING_KW
        assert modified_row["detail"]["requested_kw"] == LEVEL_3_CEILING_KW
        opts = [(r["kind"], r["detail"]["modification_number"]) for r in rows
                if r["kind"].startswith("openadr-")]  # fmt: skip
        assert opts == [("openadr-optIn", 0), ("openadr-optIn", 1), ("openadr-optIn", 2)]

    asyncio.run(main())


def test_a_modified_shed_keeps_its_baseline_and_a_restart_resumes_it_without_a_second_shed(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        vtn = Vtn(port=free_port())
        config = enrolled(tmp_path, vtn, "ob")
        await vtn.start()
        async with SimModbusSite(endpoints_for(config)) as sim:
            async with service_running(config) as first:
                await wait_until(lambda: VEN_ID in vtn.registrations, 10, "the VEN to register")
                event = vtn.event(VEN_ID, [200.0], interval_s=600, signal_name="LOAD_CONTROL",
                                  signal_type="x-loadControlSetpoint")  # fmt: skip
                event_id = vtn.publish(VEN_ID, event)
                await wait_until(lambda: "active" in first.statuses(event_id), 5, "the shed")
                assert devices_kw(sim) <= (FULL_KW - 200) * TOLERANCE

                # 250 kW below the baseline taken at the start (361), not below today's load:
                # judged against today's 161 kW it would even be opted out as infeasible
                vtn.modify(VEN_ID, event_id, [250.0])
                await wait_until(lambda: first.statuses(event_id).count("active") == 2, 5, "250")
                assert first.service.shell.last is not None
                ceiling = first.service.shell.last.decision.site_ceiling_kw
                assert ceiling == pytest.approx(FULL_KW - 250)
                assert devices_kw(sim) <= (FULL_KW - 250) * TOLERANCE
                held_kw = devices_kw(sim)
            # stopped (devices hold); a new process starts from the database, the VTN is the same

            restarted_at = utc_now()
            async with service_running(config) as second:
                assert [e.event_id for e in second.service.events.live] == [event_id]
                await wait_until(lambda: VEN_ID in vtn.registrations, 10, "the VEN to register")
                await wait_until(
                    lambda: any(r.kind == "openadr-optIn" and r.subject == event_id
                                and r.detail["reason"] == "resumed after a restart"
                                for r in second.service.store.audit_since(restarted_at)),
                    5, "the re-sent event taken up",
                )  # fmt: skip
                await asyncio.sleep(1.0)  # several cycles
                # told once that the event is followed again, as it stands; no second "accepted"
                assert second.statuses(event_id) == ["active"]
                assert "restarted" in second.acks(event_id)[0].reason
                assert second.service.shell.last is not None
                ceiling = second.service.shell.last.decision.site_ceiling_kw
                assert ceiling == pytest.approx(FULL_KW - 250)  # the same baseline
                assert devices_kw(sim) == pytest.approx(held_kw)
                assert [e.status for e in second.service.events.live] == ["active"]
        await vtn.stop()

    asyncio.run(main())


def test_a_revising_source_never_rewrites_an_mqtt_event_and_an_unchanged_resend_is_nothing(
    tmp_path: Path,
) -> None:
    """The MQTT rule (a repeated event_id changes nothing) stands beside OpenADR's revisions."""
    store = Store(tmp_path / "db.sqlite3")
    acked: list[str] = []
    book = EventBook(store, lambda r: acked.append(f"{r.event_id} {r.status}"))
    now = utc_now()
    mqtt_event = Obligation("ev-1", ObligationKind.LIMIT, 150.0, now, None, "ERS", "mqtt")
    book.revise(mqtt_event, now, None, "as if from MQTT")  # the shortest way to hold one
    openadr = replace(mqtt_event, kw=90.0, source="openadr")
    assert book.revise(openadr, now, 0, "OpenADR event") == "conflict"
    assert {o.event_id: o.kw for o in book.obligations()}["ev-1"] == 150.0

    oadr = Obligation("oadr-1", ObligationKind.SHED, 50.0, now, None, "dr", "openadr")
    assert book.revise(oadr, now, 0, "OpenADR event") == "accepted"
    assert book.revise(oadr, now, 0, "OpenADR event") == "unchanged"
    assert book.revise(replace(oadr, kw=80.0), now, 1, "OpenADR modification 1") == "modified"
    assert {o.event_id: o.kw for o in book.obligations()}["oadr-1"] == 80.0
    assert acked == ["ev-1 accepted", "oadr-1 accepted", "oadr-1 accepted"]
    kinds = [(r.subject, r.kind) for r in store.audit_since(now - timedelta(seconds=1))]
    assert ("ev-1", "conflict") in kinds
    assert [k for s, k in kinds if s == "oadr-1"] == ["event-accepted", "event-modified"]
    store.close()


def test_a_program_price_from_the_vtn_is_the_engines_price(tmp_path: Path) -> None:
    """With openadr.price_signals, an ELECTRICITY_PRICE event is the price the engine decides
    on: at 2 $/kWh every interruptible class is above its breakeven and stops; the VEN opts in,
    and no dispatch event is made of it."""

    async def main() -> None:
        vtn = Vtn(port=free_port())
        config = enrolled(tmp_path, vtn, "op", price_signals=True)
        await vtn.start()
        async with SimModbusSite(endpoints_for(config)) as sim, service_running(config) as run:
            await wait_until(lambda: VEN_ID in vtn.registrations, 10, "the VEN to register")
            # first the whole site runs on the test's cheap price...
            await wait_until(lambda: devices_kw(sim) > FULL_KW - 1, 15, "the site running")
            usd_per_kwh = objects.Measurement(name="currencyPerKWh", description="currencyPerKWh",
                                              unit="USD", scale="none")  # fmt: skip
            event = vtn.event(VEN_ID, [2.0], interval_s=600, signal_name="ELECTRICITY_PRICE",
                              signal_type="price", measurement=usd_per_kwh)  # fmt: skip
            event_id = vtn.publish(VEN_ID, event)
            await wait_until(lambda: (event_id, "optIn") in vtn.opt_types, 5, "the opt-in")

            def program_price() -> bool:  # taken by the cycle after the VEN queued it
                price = run.service.snapshot.price_at(utc_now())
                return price is not None and (price.price_usd_per_mwh, price.source) == (
                    2000.0, "openadr")  # fmt: skip

            await wait_until(program_price, 5, "the program's price in the snapshot")

            # ...then the program's price stops every interruptible class
            def decided_on_it() -> bool:
                last = run.service.shell.last
                return last is not None and last.decision.price_usd_per_mwh == 2000.0

            await wait_until(decided_on_it, 10, "a decision on the program's price")
            await wait_until(lambda: devices_kw(sim) <= CONTROLS_KW + 1, 15,
                             "the miners and tanks to stop on the price")  # fmt: skip
            assert run.service.events.live == []  # a price is not a dispatch

    asyncio.run(main())


def test_an_openadr_3_import_limit_through_the_running_service(tmp_path: Path) -> None:
    """The 3.0 VEN inside serve(): an IMPORT_CAPACITY_LIMIT event is an event of the book
    (source openadr3), verified active on the devices, and released when the VTN deletes it;
    the VEN's object is on the VTN, and an event's report request is answered with the load
    the service measured."""
    from agent.config.openadr3 import OpenAdr3Config
    from tests.adapters.signals.openadr3_vtn import Vtn3

    async def main() -> None:
        vtn = Vtn3(port=free_port())
        program_id = vtn.add_program("ERS-3")
        base = site_config(tmp_path / "db.sqlite3", free_port(), tag="o3", host_a="127.0.7.1",
                           host_b="127.0.7.101")  # fmt: skip
        openadr3 = OpenAdr3Config.model_validate({
            "vtn_url": vtn.url, "client_id": vtn.client_id, "client_secret": vtn.client_secret,
            "ven_name": VEN_NAME, "programs": ["ERS-3"], "poll_interval_s": 0.2,
            "allow_plain_http": True,
        })  # fmt: skip
        config = base.model_copy(update={"openadr3": openadr3})
        await vtn.start()
        try:
            async with SimModbusSite(endpoints_for(config)) as sim, service_running(config) as run:
                event_id = vtn.add_event(program_id, "IMPORT_CAPACITY_LIMIT",
                                         [LEVEL_2_CEILING_KW], units="KW")  # fmt: skip
                await wait_until(lambda: "active" in run.statuses(event_id), 10, "active")
                assert devices_kw(sim) <= LEVEL_2_CEILING_KW * TOLERANCE
                run.service.store.flush()
                record = run.service.store.event(event_id)
                assert record is not None
                assert (record.source, record.program) == ("openadr3", "ERS-3")
                vtn.delete(event_id)
                await wait_until(lambda: run.service.events.live == [], 10, "the release")
                assert run.acks(event_id)[-1].status == "completed"
                assert "OpenADR 3: no longer listed by the VTN" in run.acks(event_id)[-1].reason
                # the VEN keeps its object on the VTN, and reports the site's measured load
                # for each interval the event's reportDescriptors ask, once it has ended
                assert [v["venName"] for v in vtn.vens.values()] == [VEN_NAME]
                asked = [{"payloadType": "DEMAND", "readingType": "MEAN", "startInterval": 0,
                          "numIntervals": 1, "frequency": 1, "repeat": -1}]  # fmt: skip
                reported = vtn.add_event(program_id, "IMPORT_CAPACITY_LIMIT",
                                         [LEVEL_2_CEILING_KW] * 2, units="KW", interval_s=2,
                                         report_descriptors=asked)  # fmt: skip
                await wait_until(lambda: len(vtn.reports) == 2, 15, "two reports")
                values = [r["resources"][0]["intervals"][0]["payloads"][0]["values"][0]
                          for r in vtn.reports]  # fmt: skip
                assert all(r["eventID"] == reported for r in vtn.reports)
                assert 0 < values[1] <= LEVEL_2_CEILING_KW * TOLERANCE, values
        finally:
            await vtn.stop()

    asyncio.run(main())

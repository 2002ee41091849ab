"""The QSE's DNP3 link (the `ercot.dnp3` section): the site's outstation, whose analog outputs
take SCED base points into the service as dispatch messages (through the inbox, one writer,
source `dnp3`), and whose inputs carry the resource's telemetry, refreshed every 2 s.

Telemetry, from the service's last cycle (docs/ercot.md):
- consumption: the verified site load (the site meter, else the device readings);
- LPC: the consumption less what may be curtailed (interruptible and flexible classes);
- MPC: the rated kW of the devices reachable now, no more than the import limit;
- the base point followed and its set point (the ramp's kW now), from the cycle's obligations;
- HDL and LDL: MPC and LPC, or five minutes of the normal ramp from the consumption
  (Protocols 6.5.7.2, as SCED limits a Load Resource);
- status: 257 ONL while the service controls reachable devices, else 258 OUTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import replace

from adapters.scada.dnp3_outstation import AO, QseOutstation, QseTelemetry
from agent.app.assembly import Service
from agent.app.published import flexible_kw
from agent.domain.signals import ObligationKind
from agent.ports import Clock
from agent.service.compliance import off_band_kw

__all__ = ["QseLink", "run_qse_link"]

log = logging.getLogger("gridflex.dnp3")

ONL, OUTL = 257, 258  # ERCOT resource status codes of a Load Resource
_DEPLOYMENTS = {AO.ECRS_DEPLOYMENT: "ECRS", AO.NSRS_DEPLOYMENT: "NSRS"}
REFRESH_S = 2.0


class QseLink:
    def __init__(self, service: Service, clock: Clock) -> None:
        ercot = service.config.ercot
        assert ercot is not None
        assert ercot.dnp3 is not None
        assert service.events.resource is not None  # the policy's, from the same section
        self._service, self._clock = service, clock
        self._resource = service.events.resource
        self._writes = 0
        d = ercot.dnp3
        self.outstation = QseOutstation(d.host, d.port, address=d.address,
                                        master_address=d.master_address,
                                        on_write=self._write)  # fmt: skip

    def _write(self, index: int, kw: float) -> None:
        """A write from the QSE, into the inbox for the cycle: a base point as a dispatch
        message; an ancillary-service deployment as a shed from the load when it is first
        deployed (a new amount revises it, 0 recalls it)."""
        if index in _DEPLOYMENTS:
            program = _DEPLOYMENTS[index]
            self._service.inbox.put(f"dnp3/{program}", lambda: self._deploy(program, kw))
            return
        fields = {"kind": "base_point", "base_point_kw": kw, "program": "SCED",
                  "emergency": index == AO.EMERGENCY_BASE_POINT}  # fmt: skip
        self._service.inbox.put("dnp3/base_point", lambda: self._dispatch(fields))

    def _dispatch(self, fields: dict[str, object], event_id: str | None = None) -> str:
        """Into the intake as the QSE's dispatch message (run by the cycle, from the inbox).
        The association is the QSE's own link: authenticated by its transport."""
        now = self._clock()
        self._writes += 1
        message = {"event_id": event_id or f"dnp3-{now:%Y%m%dT%H%M%S%f}-{self._writes}",
                   **fields, "issued_at": now.isoformat()}  # fmt: skip
        payload = json.dumps(message).encode()
        return self._service.intake.dispatch(payload, "dnp3", authenticated="qse")

    def _deploy(self, program: str, kw: float) -> str:
        events = self._service.events
        live = [r for r in events.live if r.program == program and r.source.startswith("dnp3")]
        if kw <= 0.0:  # recalled
            for record in live:
                self._dispatch({"kind": "release"}, event_id=record.event_id)
            return "released" if live else "nothing deployed"
        if live:  # the same deployment, a new amount: its baseline stays the first one's
            record = live[0]
            obligation = replace(record.obligation(), kw=kw)
            return events.revise(obligation, self._clock(), (record.revision or 0) + 1,
                                 f"{program} deployment now {kw:.0f} kW")  # fmt: skip
        return self._dispatch({"kind": "shed", "shed_kw": kw, "program": program})

    def telemetry(self) -> QseTelemetry:
        service = self._service
        shell = service.shell
        consumption = shell.site_kw()
        decision = None if shell.last is None else shell.last.decision
        lpc = max(0.0, consumption - (0.0 if decision is None else flexible_kw(decision)))
        mpc = float(shell.fleet.rated_kw[shell.available].sum())
        limit = service.config.site.import_limit_kw
        if limit is not None:
            mpc = min(mpc, limit)
        followed = self._followed()
        base, set_point, emergency = followed or (0.0, 0.0, False)
        band = self._resource.tolerance_kw
        off = followed is not None and off_band_kw(consumption, set_point, band) > 0
        ramp = self._resource.normal_ramp
        up = ramp.rate_kw_per_min(consumption, up=True)
        down = ramp.rate_kw_per_min(consumption, up=False)
        online = shell.online() and service.config.service.mode == "control"
        return QseTelemetry(
            consumption_kw=consumption, lpc_kw=lpc, mpc_kw=mpc, base_point_kw=base,
            set_point_kw=set_point, hdl_kw=min(mpc, consumption + 5 * up),
            ldl_kw=max(lpc, consumption - 5 * down), status=ONL if online else OUTL,
            following=followed is not None, off_set_point=off, emergency=emergency,
        )  # fmt: skip

    def _followed(self) -> tuple[float, float, bool] | None:
        """The base point the last cycle followed: (its kW, its set point now, emergency);
        None when none (a base point of 0 kW is one: curtail everything curtailable)."""
        last = self._service.shell.last
        if last is None:
            return None
        statuses = {s.event_id: s for s in last.decision.obligations}
        for record in self._service.events.live:
            kind = ObligationKind(record.kind)
            status = statuses.get(record.event_id)
            if kind.is_base_point and status is not None:
                return (record.requested_kw, status.ceiling_kw,
                        kind is ObligationKind.EMERGENCY_BASE_POINT)  # fmt: skip
        return None

    def refresh(self) -> None:
        self.outstation.update(self.telemetry())


async def run_qse_link(link: QseLink) -> None:
    """Serve the QSE's master and refresh the telemetry every 2 s, until cancelled; a failure
    of the outstation is logged and it is started again."""
    server = asyncio.create_task(_serve(link))
    try:
        while True:
            try:
                link.refresh()
            except Exception:  # the telemetry must not stop the link
                log.exception("the DNP3 telemetry could not be refreshed")
            await asyncio.sleep(REFRESH_S)
    finally:
        server.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server
        await link.outstation.stop()


async def _serve(link: QseLink) -> None:
    while True:
        try:
            await link.outstation.run()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("the DNP3 outstation failed; starting it again in 5 s")
            await asyncio.sleep(5)

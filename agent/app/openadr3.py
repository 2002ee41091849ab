"""The OpenADR 3.0 VEN inside the service: its events go through the event book like MQTT
dispatch and OpenADR 2.0b events (agent.app.openadr), acked on `<prefix>/dispatch/ack`; an
event it cannot apply is audited as `openadr3-refused` with the reason."""

from __future__ import annotations

import asyncio
import logging

from agent.app.assembly import Service
from agent.app.openadr import obligation_sink
from agent.ports import Clock, utc_now

__all__ = ["run_openadr3"]

log = logging.getLogger("gridflex.openadr3")

_RETRY_S = 30.0


async def run_openadr3(service: Service, clock: Clock = utc_now) -> None:
    """Run the site's 3.0 VEN until cancelled (a failure is logged and it starts afresh)."""
    config = service.config.openadr3
    if config is None:
        return
    from adapters.signals.openadr3_ven import SOURCE, OpenAdr3Ven  # noqa: PLC0415 - optional

    def refused(event_id: str, why: str) -> None:
        service.store.audit(clock(), "openadr3-refused", event_id, {"reason": why}, SOURCE)

    ven = OpenAdr3Ven(config, service.shell, on_refused=refused)
    # events followed before a restart: released at the first poll if the VTN no longer has them
    ven.resume({r.event_id: r.obligation() for r in service.events.live if r.source == SOURCE})
    sink = obligation_sink(service, clock, source=SOURCE, released=ven.released,
                           revision=ven.revision, label="OpenADR 3")  # fmt: skip
    while True:
        try:
            await ven.run(sink)
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("OpenADR 3 VEN failed; restarting in %.0f s", _RETRY_S)
            service.metrics.errors.labels(kind="openadr3").inc()
            await asyncio.sleep(_RETRY_S)

"""The OpenADR VEN inside the service: its events go through the event book like MQTT dispatch.

The VEN (adapters.signals.openadr_ven) sees the site through the shell (its SiteView: verified
site kW and floors) and pushes Obligation / ObligationCancel values. Here they become events:
a new event id is accepted, a changed obligation under a live id is a modification (in place: a
shed keeps its baseline), an unchanged one is a re-send and changes nothing, a cancel releases
the event. Each status change is acked on `<prefix>/dispatch/ack` like any dispatch, and the
VEN's opt-in / opt-out answers go to the audit log beside them.

A restart resumes: the live OpenADR events are handed to the new VEN as `committed`, so when the
VTN re-sends them the VEN opts in again without judging them against a site already shedding,
and the event book sees the same obligation (no second "accepted", no new baseline).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.app.assembly import Service
from agent.domain.signals import Obligation, ObligationCancel, PriceSignal
from agent.errors import SignalAuthError
from agent.ports import Clock, SignalSink

if TYPE_CHECKING:  # openleadr is an optional extra: imported only when the site enrols
    from adapters.signals.openadr_ven import OpenAdrVen, OptDecision

__all__ = ["SOURCE", "OpenAdrLink", "obligation_sink", "openadr_link", "run_openadr"]

log = logging.getLogger("gridflex.openadr")

SOURCE = "openadr"  # Obligation.source of the VEN's obligations (openadr_events.SOURCE)
_RETRY_S = 30.0


@dataclass
class OpenAdrLink:
    """The VEN and the sink that feeds its obligations to the event book."""

    ven: OpenAdrVen
    sink: SignalSink

    async def run(self) -> None:
        await self.ven.run(self.sink)


def openadr_link(service: Service, clock: Clock) -> OpenAdrLink | None:
    """The site's VEN, wired to the service's event book; None when the site is not enrolled."""
    config = service.config.openadr
    if config is None:
        return None
    from adapters.signals.openadr_ven import OpenAdrVen  # noqa: PLC0415 - optional extra

    committed = {r.event_id: r.revision or 0 for r in service.events.live if r.source == SOURCE}

    def audit_decision(decision: OptDecision) -> None:
        service.store.audit(
            decision.decided_at_utc,
            f"openadr-{decision.opt_type}",
            decision.event_id,
            {"modification_number": decision.modification_number, "reason": decision.reason},
            SOURCE,
        )

    ven = OpenAdrVen(config, service.shell, committed=committed, on_decision=audit_decision)

    sink = obligation_sink(service, clock, source=SOURCE, released=ven.released,
                           revision=ven.revision, label="OpenADR", notes=ven.notes)  # fmt: skip
    return OpenAdrLink(ven, sink)


def obligation_sink(
    service: Service,
    clock: Clock,
    *,
    source: str,
    released: Mapping[str, str],
    revision: Callable[[str], int | None],
    label: str,
    notes: Mapping[str, str] | None = None,
) -> SignalSink:
    """Where a VEN's signals go: obligations into the event book (a new id accepted, a changed
    one revised in place, an unchanged re-send nothing), cancels release their event, prices
    into the snapshot. `notes`: why an obligation stands as it does (event priority)."""

    def sink(value: object) -> None:
        """The VEN's task only queues; the cycle takes the value into the event book."""
        service.inbox.put(source, lambda: take(value))

    def take(value: object) -> str:
        now = clock()
        if isinstance(value, ObligationCancel):
            why = released.get(value.event_id, "released")
            service.events.release(value.event_id, now, source, reason=f"{label}: {why}")
            outcome = "released"
        elif isinstance(value, Obligation):
            version = revision(value.event_id)
            name = f"{label} event" if version is None else f"{label} modification {version}"
            reason = f"{name}: {value.kind.value} {value.kw:.1f} kW"
            note = (notes or {}).get(value.event_id)
            if note:
                reason = f"{reason}, from {value.start_utc:%H:%M:%S} UTC ({note})"
            outcome = service.events.revise(value, now, version, reason)
        elif isinstance(value, PriceSignal):  # openadr.price_signals: the program's prices
            service.snapshot(value)
            outcome = "price"
        else:  # a VEN pushes nothing else
            raise TypeError(f"unexpected signal from the VEN: {value!r}")
        return outcome  # counted by the inbox (gridflex_messages_total)

    return sink


async def run_openadr(link: OpenAdrLink, service: Service) -> None:
    """Run the VEN until cancelled. A VTN that cancels our registration ends it (re-enrolment
    is the program's decision); any other failure is logged and the VEN started afresh."""
    while True:
        try:
            await link.run()
            return
        except asyncio.CancelledError:
            raise
        except SignalAuthError as exc:
            log.error("OpenADR VEN stopped: %s", exc)
            service.metrics.errors.labels(kind="openadr").inc()
            return
        except Exception:
            log.exception("OpenADR VEN failed; restarting in %.0f s", _RETRY_S)
            service.metrics.errors.labels(kind="openadr").inc()
            await asyncio.sleep(_RETRY_S)

"""The agent as an OpenADR 2.0b VEN: a SignalSource built on openleadr's OpenADRClient.

What it does, in the order a session with a VTN goes:

1. registers (oadrQueryRegistration, oadrCreatePartyRegistration), retrying with backoff while
   the VTN cannot be reached, and offers a TELEMETRY_USAGE report of site power;
2. polls (oadrPoll) at the configured interval or the oadrPollFreq the VTN asked for;
3. turns each event into an Obligation (openadr_events.py), opts in, or opts out with a reason
   when the site's flexible load cannot meet it (SiteView.floor_kw against the ceiling);
4. replaces the obligation on a modification (same event id, new modification number) and
   pushes ObligationCancel on a cancellation (or when a distribution leaves the event out);
5. sends site power reports at the granularity the VTN requested (openleadr's report jobs);
6. when the VTN goes away, keeps every accepted obligation (they carry their own end) and
   re-registers when it answers again; an event it re-sends unchanged changes nothing.

Across a restart of the agent the service hands over the events the site already committed to
(`committed`: event id -> modification number): the VTN re-sends them, and the VEN opts in again
without re-judging their feasibility against a site that is already shedding for them. The
randomization draw is a function of the VEN name and the event id, so it is the same after a
restart too (and still differs between VENs, which is what the window is for).

openleadr swallows transport errors into log lines and (None, {}) results; this module turns
those into state ("registered", "VTN unreachable") and logs each change once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from openleadr import OpenADRClient

from adapters.signals.openadr_client import build_client, offer_site_power_report, reset_reports
from adapters.signals.openadr_events import (
    SOURCE,
    EventPlan,
    UnsupportedEventError,
    check_feasible,
    obligation_at,
    plan_event,
    startafter_s,
)
from agent.config import OpenAdrConfig
from agent.domain.signals import Obligation, ObligationCancel
from agent.errors import SignalAuthError
from agent.ports import SignalSink, SiteView

__all__ = ["OpenAdrVen", "OptDecision"]

log = logging.getLogger(__name__)

# openleadr's default when the VTN names no oadrPollFreq (and the openleadr VTN's default).
DEFAULT_POLL_S = 10.0
# Backoff while the VTN is unreachable: first retry soon, then no more than once a minute.
_RETRY_FIRST_S = 1.0
_RETRY_MAX_S = 60.0
# What the VEN offers the VTN to sample: from once a second to once an hour.


@dataclass(frozen=True, slots=True)
class OptDecision:
    """What the VEN answered to one version of an event, and why."""

    event_id: str
    modification_number: int
    opt_type: str  # optIn | optOut
    reason: str
    decided_at_utc: datetime


class _Reregister(Exception):  # noqa: N818 - control flow inside this module, never escapes
    """The VTN asked for re-registration, or stopped answering."""


class OpenAdrVen:
    """A SignalSource: `await OpenAdrVen(config, site).run(sink)` runs until cancelled."""

    def __init__(
        self,
        config: OpenAdrConfig,
        site: SiteView,
        *,
        rng: random.Random | None = None,
        committed: Mapping[str, int] | None = None,
        on_decision: Callable[[OptDecision], None] | None = None,
    ) -> None:
        self._config = config
        self._site = site
        self._rng = rng
        self._committed = dict(committed or {})
        self._on_decision = on_decision
        self._sink: SignalSink | None = None
        self._client: OpenADRClient | None = None
        self._plans: dict[str, EventPlan] = {}
        self._held: dict[str, Obligation] = {}  # what the sink holds now, per event id
        self._timers: dict[str, asyncio.Task[None]] = {}
        self._offsets_s: dict[str, float] = {}  # randomization draw, kept across modifications
        # site load when each event was first accepted: a modified shed is judged against it
        # (the engine keeps the shed's baseline), not against a load already reduced by the shed
        self._accepted_at_kw: dict[str, float] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self.decisions: dict[str, OptDecision] = {}
        self.released: dict[str, str] = {}  # why the VEN last released each event
        self.registered = False
        self.reachable: bool | None = None

    # -- the SignalSource ------------------------------------------------------------------
    async def run(self, sink: SignalSink) -> None:
        self._sink = sink
        client = self._build_client()
        self._client = client
        retry_s = _RETRY_FIRST_S
        try:
            while True:
                if not await self._register(client):
                    await asyncio.sleep(retry_s)
                    retry_s = min(_RETRY_MAX_S, retry_s * 2)
                    continue
                retry_s = _RETRY_FIRST_S
                with contextlib.suppress(_Reregister):
                    await self._poll_forever(client)
                self.registered = False
        finally:
            await self._close(client)

    @property
    def ven_id(self) -> str | None:
        return None if self._client is None else self._client.ven_id

    def revision(self, event_id: str) -> int | None:
        """The modification number of the version of the event the VEN follows now."""
        plan = self._plans.get(event_id)
        return None if plan is None else plan.modification_number

    # -- openleadr client --------------------------------------------------------------------
    def _build_client(self) -> OpenADRClient:
        client = build_client(self._config)
        client.add_handler("on_event", self._on_event)
        client.add_handler("on_update_event", self._on_event)
        client.add_hook("after_parse_xml", self._after_parse)
        offer_site_power_report(client, self._config, self._report_site_kw)
        return client

    async def _register(self, client: OpenADRClient) -> bool:
        response_type, payload = await client.query_registration()
        if response_type is None:
            self._set_reachable(False)
            return False
        request_id = (payload.get("response") or {}).get("request_id")
        client.registration_id = None  # openleadr keeps an old one when the VTN refuses
        await client.create_party_registration(ven_id=client.ven_id, request_id=request_id)
        if client.registration_id is None:
            # The VTN answered but refused us: a wrong VEN name or certificate is not fixed by
            # hammering it, yet it may be fixed on the VTN's side, so keep the slow retry.
            self._set_reachable(True)
            log.warning(
                "VTN %s refused the registration of %s", self._config.vtn_url, client.ven_name
            )
            return False
        self._set_reachable(True)
        reset_reports(client)
        await client.register_reports(client.reports)
        if not client.scheduler.running:
            client.scheduler.start()  # runs only openleadr's report jobs; polling is ours
        if client.report_queue_task is None or client.report_queue_task.done():
            client.report_queue_task = asyncio.get_running_loop().create_task(
                client._report_queue_worker()
            )
        await client.sync_events()
        self.registered = True
        log.info(
            "registered with VTN %s as ven_id %s (registration %s), polling every %.1f s",
            self._config.vtn_url, client.ven_id, client.registration_id, self._poll_s(client),
        )  # fmt: skip
        return True

    def _poll_s(self, client: OpenADRClient) -> float:
        if self._config.poll_interval_s is not None:
            return self._config.poll_interval_s
        requested = client.poll_frequency
        if isinstance(requested, timedelta) and requested.total_seconds() >= 1:
            return requested.total_seconds()
        # none given, or under a second (openleadr drops fractions of a second: PT0.5S reads
        # as zero, which would poll in a tight loop)
        return DEFAULT_POLL_S

    async def _poll_forever(self, client: OpenADRClient) -> None:
        while True:
            try:
                response_type, payload = await client.poll()
            except TypeError:  # openleadr returns a bare None for an empty HTTP body
                response_type, payload = "oadrResponse", {}
            await self._handle_poll(client, response_type, payload)
            await asyncio.sleep(self._poll_s(client))

    async def _handle_poll(
        self, client: OpenADRClient, response_type: str | None, payload: Mapping[str, Any]
    ) -> None:
        if response_type is None:
            self._set_reachable(False)
            raise _Reregister
        if response_type == "oadrDistributeEvent":
            if payload.get("events"):
                await client._on_event(payload)
        elif response_type == "oadrCreateReport":
            await client.create_report(payload)
        elif response_type == "oadrCancelReport":
            await client.cancel_report(payload)
        elif response_type == "oadrRequestReregistration":
            log.info("VTN %s asked for re-registration", self._config.vtn_url)
            await client.send_response(service="EiRegisterParty")
            raise _Reregister
        elif response_type == "oadrCancelPartyRegistration":
            raise SignalAuthError(f"VTN {self._config.vtn_url} cancelled this VEN's registration")
        elif response_type != "oadrResponse":
            log.debug("ignoring %s from the VTN", response_type)

    def _set_reachable(self, reachable: bool) -> None:
        if reachable == self.reachable:
            return
        if reachable:
            log.info("VTN %s reachable", self._config.vtn_url)
        else:
            # openleadr answers (None, {}) alike for a refused connection, an HTTP error and
            # a message whose TLS peer or signature fails the checks (it logs which).
            log.warning(
                "VTN %s unreachable or not authenticated: keeping %d accepted event(s), retrying",
                self._config.vtn_url, len(self._held),
            )  # fmt: skip
            if self._client is not None and self._client.scheduler.running:
                self._client.scheduler.pause()  # no report sampling into the void
        if reachable and self._client is not None and self._client.scheduler.running:
            self._client.scheduler.resume()
        self.reachable = reachable
        if not reachable:
            self.registered = False

    async def _close(self, client: OpenADRClient) -> None:
        for task in [*self._timers.values(), *self._background]:
            task.cancel()
        if client.scheduler.running:
            client.scheduler.shutdown(wait=False)
        if client.report_queue_task is not None:
            client.report_queue_task.cancel()
        if client.client_session is not None:
            await client.client_session.close()

    # -- reports -----------------------------------------------------------------------------
    def _report_site_kw(self) -> float:
        return round(self._site.site_kw(), 3)

    # -- events ------------------------------------------------------------------------------
    def _after_parse(self, message_type: str, payload: Mapping[str, Any]) -> None:
        """An oadrDistributeEvent lists every pending and active event of this VEN (OpenADR
        2.0b): an event we hold that is no longer listed was withdrawn."""
        if message_type != "oadrDistributeEvent":
            return
        listed = {str(e["event_descriptor"]["event_id"]) for e in payload.get("events") or []}
        for event_id in [e for e in self._plans if e not in listed]:
            self._withdraw(event_id, "no longer listed by the VTN")
        for event_id in [e for e in self._committed if e not in listed]:
            # committed before a restart, and ended or withdrawn while the agent was down
            self._withdraw(event_id, "no longer listed by the VTN")

    async def _on_event(self, event: Mapping[str, Any]) -> str:
        descriptor = event["event_descriptor"]
        event_id = str(descriptor["event_id"])
        modification = int(descriptor.get("modification_number") or 0)
        status = descriptor.get("event_status")
        if status == "cancelled":
            self._withdraw(event_id, "cancelled by the VTN")
            return self._decide(event_id, modification, "optIn", "cancellation acknowledged")
        if status == "completed":
            self._committed.pop(event_id, None)
            self._forget(event_id)
            return self._decide(event_id, modification, "optIn", "completed")
        if descriptor.get("test_event") in (True, "true"):
            return self._decide(event_id, modification, "optIn", "test event: no action")
        if event_id not in self._offsets_s:
            rng = self._rng or random.Random(f"{self._config.ven_name}/{event_id}")
            self._offsets_s[event_id] = rng.uniform(0.0, startafter_s(event))
        try:
            plan = plan_event(event, self._config, self._floor_kw, self._offsets_s[event_id])
        except UnsupportedEventError as exc:
            return self._opt_out(event_id, modification, str(exc), "notParticipating")
        return self._take(plan)

    def _take(self, plan: EventPlan) -> str:
        """Opt in to a planned event (or out, when the site cannot meet it) and follow it."""
        event_id, modification = plan.event_id, plan.modification_number
        if self._committed.pop(event_id, None) == modification:
            # the site accepted this very version before a restart and is shedding for it now:
            # judged against today's (already reduced) load it could look infeasible
            reason: str | None = "resumed after a restart"
        else:
            load_kw = self._accepted_at_kw.get(event_id, self._site.site_kw())
            reason = check_feasible(plan, load_kw, self._floor_kw)
            if reason is not None and self._config.opt_out_when_infeasible:
                return self._opt_out(event_id, modification, reason, "mustRun")
            self._accepted_at_kw.setdefault(event_id, load_kw)
        self._plans[event_id] = plan
        self._follow(event_id)
        return self._decide(event_id, modification, "optIn", reason or f"{plan.signal} accepted")

    def _floor_kw(self, include_protected: bool) -> float:
        return self._site.floor_kw(include_protected=include_protected)

    def _opt_out(self, event_id: str, modification: int, reason: str, opt_reason: str) -> str:
        self._withdraw(event_id, f"opted out: {reason}")
        log.warning(
            "opting out of OpenADR event %s (modification %d): %s", event_id, modification, reason
        )
        client = self._client
        if client is not None:
            # The reason travels as an oadrCreateOpt (EiOpt) after the oadrCreatedEvent; a VTN
            # without an EiOpt service answers 404 and the optOut itself still stands.
            self._spawn(
                client.create_opt(
                    opt_type="optOut",
                    opt_reason=opt_reason,
                    targets=[{"ven_id": client.ven_id}],
                    event_id=event_id,
                    modification_number=modification,
                )
            )
        return self._decide(event_id, modification, "optOut", reason)

    def _decide(self, event_id: str, modification: int, opt_type: str, reason: str) -> str:
        now = datetime.now(UTC)
        decision = OptDecision(event_id, modification, opt_type, reason, now)
        self.decisions[event_id] = decision
        if self._on_decision is not None:
            self._on_decision(decision)
        return opt_type

    def _follow(self, event_id: str) -> None:
        """Push the event's obligation as it stands now, and wake at its next step."""
        timer = self._timers.pop(event_id, None)
        if timer is not None and timer is not asyncio.current_task():
            timer.cancel()
        plan = self._plans.get(event_id)
        if plan is None:
            return
        now = datetime.now(UTC)
        obligation, wake = obligation_at(plan, now)
        if obligation is None:
            self._release(event_id, now)
            self._forget(event_id)
            return
        if self._held.get(event_id) != obligation:
            self._held[event_id] = obligation
            self._push(obligation)
        if wake is not None:
            self._timers[event_id] = asyncio.get_running_loop().create_task(
                self._wake(event_id, wake)
            )

    async def _wake(self, event_id: str, at_utc: datetime) -> None:
        await asyncio.sleep(max(0.0, (at_utc - datetime.now(UTC)).total_seconds()))
        self._follow(event_id)

    def _withdraw(self, event_id: str, why: str) -> None:
        now = datetime.now(UTC)
        committed = self._committed.pop(event_id, None) is not None
        if event_id in self._held or committed:
            log.info("OpenADR event %s released: %s", event_id, why)
            self.released[event_id] = why  # read by whoever the push below reaches
        if committed and event_id not in self._held:
            self._push(ObligationCancel(event_id=event_id, at_utc=now, source=SOURCE))
        self._release(event_id, now)
        self._forget(event_id)

    def _release(self, event_id: str, now: datetime) -> None:
        held = self._held.pop(event_id, None)
        if held is not None and (held.end_utc is None or held.end_utc > now):
            self._push(ObligationCancel(event_id=event_id, at_utc=now, source=SOURCE))

    def _forget(self, event_id: str) -> None:
        self._plans.pop(event_id, None)
        self._accepted_at_kw.pop(event_id, None)
        timer = self._timers.pop(event_id, None)
        if timer is not None and timer is not asyncio.current_task():
            timer.cancel()

    def _push(self, value: Obligation | ObligationCancel) -> None:
        assert self._sink is not None
        self._sink(value)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

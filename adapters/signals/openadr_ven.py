"""The agent as an OpenADR 2.0b VEN: a SignalSource built on openleadr's OpenADRClient.

What it does, in the order a session with a VTN goes:

1. registers (oadrQueryRegistration, oadrCreatePartyRegistration), retrying with backoff while
   the VTN cannot be reached, and offers a TELEMETRY_USAGE report of site power;
2. polls (oadrPoll) at the configured interval or the oadrPollFreq the VTN asked for;
3. turns each event into an Obligation (openadr_events.py), opts in, or opts out with a reason
   when the site's flexible load cannot meet it (SiteView.floor_kw against the ceiling);
4. replaces the obligation on a modification (same event id, new modification number) and
   pushes ObligationCancel on a cancellation (or when a distribution leaves the event out);
5. answers report requests (openadr_reports.py): site power at the granularity the VTN
   requested (openleadr's report jobs) and the site's status (openadr_status.py);
6. when the VTN goes away, keeps every accepted obligation (they carry their own end) and
   re-registers when it answers again; an event it re-sends unchanged changes nothing.

Across a restart of the agent the service hands over the events the site already committed to
(`committed`: event id -> modification number): the VTN re-sends them, and the VEN opts in again
without re-judging their feasibility against a site that is already shedding for them. The
randomization draw is a function of the VEN name and the event id, so it is the same after a
restart too (and still differs between VENs, which is what the window is for).

A distribution openleadr drops for one schema-invalid event, or a registration answer it drops
for a sub-second poll frequency, is taken apart in openadr_salvage.py.

openleadr swallows transport errors into log lines and (None, {}) results; this module turns
those into state ("registered", "VTN unreachable") and logs each change once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

from openleadr import OpenADRClient

from adapters.signals.openadr_client import (
    build_client,
    offer_site_power_report,
    reset_reports,
)
from adapters.signals.openadr_events import (
    EventPlan,
)
from adapters.signals.openadr_follow import EventFollowing, OptDecision
from adapters.signals.openadr_reports import answer_cancel, answer_report_request
from adapters.signals.openadr_salvage import (
    Salvaged,
    rejection_responses,
    salvage_distribute_event,
    salvage_registration,
)
from adapters.signals.openadr_status import StatusReports, offer_status_report
from agent.config import OpenAdrConfig
from agent.config.openadr import MIN_POLL_S
from agent.domain.signals import Obligation
from agent.errors import SignalAuthError
from agent.ports import SignalSink, SiteView

__all__ = ["OpenAdrVen", "OptDecision"]

log = logging.getLogger(__name__)

# openleadr's default when the VTN names no oadrPollFreq (and the openleadr VTN's default).
DEFAULT_POLL_S = 10.0
# Backoff while the VTN is unreachable: first retry soon, then no more than once a minute.
_RETRY_FIRST_S = 1.0
_RETRY_MAX_S = 60.0
# OpenADR 2.0b response codes meaning "this VTN does not know that venID / registration"
_NOT_KNOWN = {452, 463}  # Invalid ID, Not registered or authorized
# A VTN with messages queued answers each poll with one: poll again at once (2.0b pull mode)
# while it does, up to this many in a row before the next regular pause.
_BACK_TO_BACK = 50


class _Reregister(Exception):  # noqa: N818 - control flow inside this module, never escapes
    """The VTN asked for re-registration, or stopped answering."""


class OpenAdrVen(EventFollowing):
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
        # event distributions received during the current poll, as sent: kept for the case
        # where openleadr drops one for a schema error (openadr_salvage.py)
        self._distributions: list[str] = []
        self._registrations: list[str] = []  # the same, for registration answers
        self._asked_poll_s: float | None = None  # a sub-second oadrPollFreq the VTN asked for
        self._status = StatusReports(config, site)
        self.decisions: dict[str, OptDecision] = {}
        self.released: dict[str, str] = {}  # why the VEN last released each event
        self.notes: dict[str, str] = {}  # why an event's obligation stands as it does now
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
    def poll_s(self) -> float | None:
        """How often the VEN polls now (None before it first registered)."""
        return None if self._client is None else self._poll_s(self._client)

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
        client.add_hook("after_receive_xml", self._received_xml)
        offer_site_power_report(client, self._config, self._report_site_kw)
        offer_status_report(client, self._config)
        return client

    async def _register(self, client: OpenADRClient) -> bool:
        self._registrations.clear()
        self._asked_poll_s = None
        response_type, payload = await client.query_registration()
        if response_type is None:
            payload = self._salvage_registration(client) or {}
            if not payload:
                self._set_reachable(False)
                return False
        request_id = (payload.get("response") or {}).get("request_id")
        client.registration_id = None  # openleadr keeps an old one when the VTN refuses
        await self._create_registration(client, request_id)
        if client.registration_id is None and client.ven_id is not None:
            # a VTN that lost its registrations refuses the venID it gave us before (463):
            # register afresh, as a new VEN, and take the venID it assigns now
            log.warning("VTN %s refused venID %s: registering afresh without it",
                        self._config.vtn_url, client.ven_id)  # fmt: skip
            client.ven_id = None
            await self._create_registration(client, request_id)
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
        self._status.stop_all()  # the VTN asks afresh after a registration
        await client.register_reports(client.reports)
        if not client.scheduler.running:
            client.scheduler.start()  # runs only openleadr's report jobs; polling is ours
        if client.report_queue_task is None or client.report_queue_task.done():
            client.report_queue_task = asyncio.get_running_loop().create_task(
                client._report_queue_worker()
            )
        await self._sync_events(client)
        self.registered = True
        log.info(
            "registered with VTN %s as ven_id %s (registration %s), polling every %.1f s",
            self._config.vtn_url, client.ven_id, client.registration_id, self._poll_s(client),
        )  # fmt: skip
        return True

    async def _sync_events(self, client: OpenADRClient) -> None:
        """openleadr's sync_events (oadrRequestEvent after registering), with the same salvage
        as a poll: a schema-invalid event in the answer does not lose the valid ones."""
        self._distributions.clear()
        response_type, payload = await client.request_event()
        await self._take_events(client, None if response_type is None else payload)

    def _poll_s(self, client: OpenADRClient) -> float:
        if self._config.poll_interval_s is not None:
            return self._config.poll_interval_s
        if self._asked_poll_s is not None:
            return self._asked_poll_s
        # OpenADR 2.0b's xcal:duration has whole seconds only; a VTN that asks for PT0.5S
        # anyway is honoured above (openadr_salvage.salvage_registration), down to MIN_POLL_S
        frequency = client.poll_frequency
        if isinstance(frequency, timedelta) and frequency.total_seconds() >= 1:
            return frequency.total_seconds()
        return DEFAULT_POLL_S  # none given (or zero): openleadr's default

    async def _poll_forever(self, client: OpenADRClient) -> None:
        back_to_back = 0
        while True:
            self._distributions.clear()
            try:
                response_type, payload = await client.poll()
            except TypeError:  # openleadr returns a bare None for an empty HTTP body
                response_type, payload = "oadrResponse", {}
            await self._handle_poll(client, response_type, payload)
            if response_type != "oadrResponse" and back_to_back < _BACK_TO_BACK:
                back_to_back += 1  # the VTN had a message: it may have more queued
                continue
            back_to_back = 0
            await asyncio.sleep(self._poll_s(client))

    async def _handle_poll(
        self, client: OpenADRClient, response_type: str | None, payload: Mapping[str, Any]
    ) -> None:
        if response_type is None:
            if not await self._take_events(client, None):
                self._set_reachable(False)
                raise _Reregister
        elif response_type == "oadrDistributeEvent":
            await self._take_events(client, payload)
        elif response_type == "oadrCreateReport":
            await answer_report_request(client, payload, self._config, self._status)
        elif response_type == "oadrCancelReport":
            await answer_cancel(client, self._status, payload)
        elif response_type == "oadrRequestReregistration":
            log.info("VTN %s asked for re-registration", self._config.vtn_url)
            await client.send_response(service="EiRegisterParty")
            raise _Reregister
        elif response_type == "oadrCancelPartyRegistration":
            raise SignalAuthError(f"VTN {self._config.vtn_url} cancelled this VEN's registration")
        elif response_type == "oadrResponse":
            code = (payload.get("response") or {}).get("response_code")
            if code in _NOT_KNOWN:
                log.warning("VTN %s no longer knows venID %s (%s): registering afresh",
                            self._config.vtn_url, client.ven_id, code)  # fmt: skip
                client.ven_id, client.registration_id = None, None
                raise _Reregister
        else:
            log.debug("ignoring %s from the VTN", response_type)

    def _received_xml(self, content: str) -> None:
        if "oadrDistributeEvent" in content:
            self._distributions.append(content)
        elif "oadrCreatedPartyRegistration" in content:
            self._registrations.append(content)

    def _salvage_registration(self, client: OpenADRClient) -> dict[str, Any] | None:
        """A registration answer openleadr dropped for a sub-second oadrPollFreq, parsed; the
        interval asked for is kept (above MIN_POLL_S)."""
        for content in self._registrations:
            found = salvage_registration(content.encode(), client.vtn_fingerprint)
            if found is not None:
                payload, asked_s = found
                self._asked_poll_s = max(MIN_POLL_S, asked_s)
                log.info(
                    "VTN %s asked for polling every %s s (not a 2.0b duration): polling every %s s",
                    self._config.vtn_url, asked_s, self._asked_poll_s,
                )  # fmt: skip
                return payload
        return None

    async def _create_registration(self, client: OpenADRClient, request_id: str | None) -> None:
        """oadrCreatePartyRegistration, taking an answer openleadr dropped for its poll
        frequency as openleadr takes a valid one (registration id, venID)."""
        self._registrations.clear()
        await client.create_party_registration(ven_id=client.ven_id, request_id=request_id)
        if client.registration_id is not None:
            return
        payload = self._salvage_registration(client)
        response = (payload or {}).get("response") or {}
        if payload is not None and response.get("response_code") == 200:
            client.registration_id = payload.get("registration_id")
            client.ven_id = payload.get("ven_id") or client.ven_id

    async def _take_events(self, client: OpenADRClient, payload: Mapping[str, Any] | None) -> bool:
        """Follow a distribution's events: `payload` as openleadr parsed it, or None when it
        dropped the message (then its valid events are salvaged, if any can be trusted).
        False when nothing could be read."""
        if payload is None:
            salvaged = self._salvage(client)
            if salvaged is None:
                return False
            await self._on_salvaged(client, salvaged)
        elif payload.get("events"):
            await client._on_event(payload)
        return True

    def _salvage(self, client: OpenADRClient) -> Salvaged | None:
        """The valid events of a distribution openleadr dropped (its log says why), if any."""
        for content in self._distributions:
            salvaged = salvage_distribute_event(content.encode(), client.vtn_fingerprint)
            if salvaged is not None:
                return salvaged
        return None

    async def _on_salvaged(self, client: OpenADRClient, salvaged: Salvaged) -> None:
        """Follow the valid events of a distribution and answer each invalid one 454."""
        payload = salvaged.payload
        rejected_ids = {r.event_id for r in salvaged.rejected if r.event_id is not None}
        # an event whose new version is invalid is still listed: keep following the old one
        self._after_parse("oadrDistributeEvent", payload, also_listed=rejected_ids)
        if payload.get("events"):
            await client._on_event(payload)
        for rejected in salvaged.rejected:
            log.warning(
                "rejecting OpenADR event %s (modification %d): %s",
                rejected.event_id, rejected.modification_number, rejected.reason,
            )  # fmt: skip
            if rejected.event_id is None:
                continue
            plan = self._plans.get(rejected.event_id)
            still = "" if plan is None else (
                f"; still following modification {plan.modification_number}")  # fmt: skip
            self._decide(rejected.event_id, rejected.modification_number, "optOut",
                         f"rejected: {rejected.reason}{still}")  # fmt: skip
        request_id = str(payload.get("request_id") or "")
        responses = rejection_responses(request_id, salvaged.rejected)
        if responses:
            message = client._create_message(
                "oadrCreatedEvent",
                response={"response_code": 200, "response_description": "OK",
                          "request_id": request_id},
                event_responses=responses,
                ven_id=client.ven_id,
            )  # fmt: skip
            await client._perform_request("EiEvent", message)

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
        self._status.stop_all()
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

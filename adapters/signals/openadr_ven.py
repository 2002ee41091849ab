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
from agent.config import OpenAdrConfig
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
_REPORT_NOT_SUPPORTED = 461


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
        if client.registration_id is None and client.ven_id is not None:
            # a VTN that lost its registrations refuses the venID it gave us before (463):
            # register afresh, as a new VEN, and take the venID it assigns now
            log.warning("VTN %s refused venID %s: registering afresh without it",
                        self._config.vtn_url, client.ven_id)  # fmt: skip
            client.ven_id = None
            await client.create_party_registration(request_id=request_id)
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
        # OpenADR 2.0b's xcal:duration has whole seconds only (PT0.5S fails the schema and
        # the whole message is dropped), so a VTN asks for 1 s or more; a sub-second poll is
        # the site file's poll_interval_s, down to MIN_POLL_S
        frequency = client.poll_frequency
        if isinstance(frequency, timedelta) and frequency.total_seconds() >= 1:
            return frequency.total_seconds()
        return DEFAULT_POLL_S  # none given (or zero): openleadr's default

    async def _poll_forever(self, client: OpenADRClient) -> None:
        back_to_back = 0
        while True:
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
            self._set_reachable(False)
            raise _Reregister
        if response_type == "oadrDistributeEvent":
            if payload.get("events"):
                await client._on_event(payload)
        elif response_type == "oadrCreateReport":
            await self._answer_report_request(client, payload)
        elif response_type == "oadrCancelReport":
            await client.cancel_report(payload)
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

    async def _answer_report_request(
        self, client: OpenADRClient, payload: Mapping[str, Any]
    ) -> None:
        """Serve what the VEN offers (openleadr), send its metadata again on a METADATA request,
        and answer a request for a report it does not offer with an error: openleadr answers
        those "200, pending" and then never reports."""
        offered = {report.report_specifier_id for report in client.reports}
        served: list[Mapping[str, Any]] = []
        metadata: list[Mapping[str, Any]] = []
        unknown: list[Mapping[str, Any]] = []
        for request in payload.get("report_requests") or []:
            specifier = request["report_specifier"]["report_specifier_id"]
            if specifier in offered:
                served.append(request)
            else:
                (metadata if specifier == "METADATA" else unknown).append(request)
        if served:
            await client.create_report({**payload, "report_requests": served})
        if metadata:
            await _created_report(client, payload, metadata, 200, "OK")
            await client.register_reports(client.reports)  # the metadata, again
        if unknown:
            names = ", ".join(r["report_specifier"]["report_specifier_id"] for r in unknown)
            log.warning("VTN asked for report(s) %s, which this VEN does not offer", names)
            await _created_report(client, payload, [], _REPORT_NOT_SUPPORTED,
                                  f"not offered by this VEN: {names}")  # fmt: skip

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


async def _created_report(
    client: OpenADRClient,
    payload: Mapping[str, Any],
    pending: list[Mapping[str, Any]],
    code: int,
    description: str,
) -> None:
    """An oadrCreatedReport with our own response code (openleadr's always says 200)."""
    request_id = payload.get("request_id") or (payload.get("response") or {}).get("request_id")
    message = client._create_message(
        "oadrCreatedReport",
        response={"response_code": code, "response_description": description,
                  "request_id": request_id},
        ven_id=client.ven_id,
        pending_reports=[{"report_request_id": r["report_request_id"]} for r in pending],
    )  # fmt: skip
    await client._perform_request("EiReport", message)

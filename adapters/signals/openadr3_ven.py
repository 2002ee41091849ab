"""The agent as an OpenADR 3.0 VEN: a SignalSource on toadr3 (REST, OAuth 2 client credentials).

Each poll: the enrolled programs are looked up by programName once, then the events of each
are read twice: those targeted at this VEN_NAME, and the program's events without a target
filter, of which those with no targets (program-wide: a VTN asked by VEN_NAME does not list
them) are this site's too; events targeted at others are not. Each event is parsed alone: one
the VEN cannot read is refused with the reason and the others are followed as usual. Every
event becomes an obligation (openadr3_events.py)
pushed when it changes (a modification replaces it under the same id); an event the VTN no
longer lists, or one whose intervals have all passed, is released (ObligationCancel). A VTN
that cannot be reached, or refuses the token, is logged once and retried at the poll interval;
accepted obligations stay in force meanwhile (they carry their own end). 3.0 has no opt-in or
opt-out: an event the site cannot express is logged and audited (`on_refused`) and not applied.

Besides events (openadr3_enrol.py, openadr3_reports.py): the VEN keeps its own `ven` object
and resources on the VTN; with `callback_url` it subscribes to its programs' event changes and
polls at once when called back; and it answers each event's reportDescriptors, measuring the
site's load every few seconds and POSTing each report at the end of the interval it is due.
A report the VTN refuses is tried again at the next poll; one whose payload this VEN cannot
measure is refused once (logged and audited).

The token: the specification's clientCredentialResponse requires only `access_token` and
`token_type` (RFC 6749 only recommends `expires_in`), and the Alliance's reference VTN sends no
`expires_in`; toadr3 requires it. `_Client` asks for the token itself and takes a response
without it at TOKEN_LIFETIME_S; a request the VTN refuses (401, 403: a token it revoked or
forgot on a restart) drops the token, so the next poll logs in again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import aiohttp
import toadr3
from pydantic import ValidationError
from toadr3.models import Event

from adapters.signals.openadr3_enrol import Webhook, ensure_ven, subscribe
from adapters.signals.openadr3_events import interval_steps, not_for_ven, plan_event3
from adapters.signals.openadr3_reports import LoadLog, Window, due_reports, report_body, unsupported
from adapters.signals.openadr_events import EventPlan, UnsupportedEventError, obligation_at
from agent.config.openadr3 import OpenAdr3Config
from agent.domain.signals import Obligation, ObligationCancel
from agent.ports import SignalSink, SiteView

__all__ = ["SOURCE", "OpenAdr3Ven"]

log = logging.getLogger(__name__)

SOURCE = "openadr3"
_MAX_EVENTS = 1_000  # events read per program and query
# an event as listed: its id, the event (or why it cannot be read), whether it names targets
_Listed = tuple[str, Event | str, bool]
TOKEN_LIFETIME_S = 300  # a token whose lifetime the VTN does not say: asked again after 4 min
SAMPLE_S = 1.0  # the site's load is sampled this often while an event asks for reports


class _Client(toadr3.ToadrClient):
    """toadr3's client, with a token response read as the specification defines it."""

    async def _fetch_token(self) -> toadr3.AccessToken | None:
        oauth = self._oauth_config
        if oauth is None:
            return None
        form = {"grant_type": oauth.grant_type, "client_id": oauth.client_id or "",
                "client_secret": oauth.client_secret or "", **oauth.claims}  # fmt: skip
        async with self.client_session.post(oauth.url, data=form) as response:
            if response.status >= 400:
                raise toadr3.ToadrError("the VTN refused the token request", response.status,
                                        response.reason)  # fmt: skip
            body = await response.json(content_type=None)
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise toadr3.ToadrError("a token response without access_token", response.status)
        try:
            lifetime_s = int(float(body.get("expires_in", TOKEN_LIFETIME_S)))
        except (TypeError, ValueError):
            lifetime_s = TOKEN_LIFETIME_S
        return toadr3.AccessToken(token, max(lifetime_s, 0))

    def forget_token(self) -> None:
        """Log in again before the next request (the VTN refused this token)."""
        self._token = None


class OpenAdr3Ven:
    """`await OpenAdr3Ven(config, site).run(sink)` runs until cancelled."""

    def __init__(
        self,
        config: OpenAdr3Config,
        site: SiteView,
        *,
        on_refused: Callable[[str, str], None] | None = None,
    ) -> None:
        self._config = config
        self._site = site
        self._on_refused = on_refused
        self._programs: dict[str, str] = {}  # program id -> programName
        self._held: dict[str, Obligation] = {}
        self._versions: dict[str, tuple[datetime | None, int]] = {}  # modified at, revision
        self._refused: dict[str, str] = {}  # event id -> why (logged once per reason)
        self.reachable: bool | None = None
        self.released: dict[str, str] = {}
        self.ven_id: str | None = None  # this VEN's object on the VTN, once found or made
        self._subscribed = False
        self._enrol_failed: str | None = None  # logged once per reason
        self._load = LoadLog()
        self._reportable: dict[str, tuple[Event, list[Window]]] = {}  # events asking reports
        self._baselines: dict[str, float] = {}  # kept past the event's end, for its reports
        self.reported: set[tuple[str, str, int]] = set()  # (event, payload, due interval)
        self._bearer = secrets.token_urlsafe(24)
        self._webhook: Webhook | None = None

    def resume(self, held: Mapping[str, Obligation]) -> None:
        """The events the site already follows (from before a restart): the first poll keeps
        those the VTN still lists and releases the others."""
        self._held.update(held)

    def revision(self, event_id: str) -> int | None:
        version = self._versions.get(event_id)
        return None if version is None else version[1]

    async def run(self, sink: SignalSink) -> None:
        c = self._config
        oauth = toadr3.OAuthScopeConfig(
            token_url=c.token_url or f"{c.vtn_url.rstrip('/')}/auth/token",
            grant_type="client_credentials",
            scope=c.scope or "",
            client_id=c.client_id,
            client_secret=c.client_secret.get_secret_value(),
        )
        if c.callback_url is not None:
            self._webhook = Webhook(c.callback_url, c.callback_listen_host,
                                    c.callback_listen_port, self._bearer)  # fmt: skip
            await self._webhook.start()
        try:
            async with _Client(c.vtn_url, oauth) as client:
                measuring = asyncio.ensure_future(self._measure(client))
                try:
                    while True:
                        await self._poll_once(client, sink)
                        await self._until_next_poll()
                finally:
                    measuring.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await measuring  # its request, if one was under way, closed
        finally:
            if self._webhook is not None:
                await self._webhook.stop()

    async def _poll_once(self, client: _Client, sink: SignalSink) -> None:
        try:
            await self._poll(client, sink)
            self._set_reachable(True)
            await self._enrol(client)
        except toadr3.ToadrError as exc:
            if exc.status_code in {401, 403}:
                client.forget_token()
            self._set_reachable(False, exc)
        except (aiohttp.ClientError, ValueError, TimeoutError) as exc:
            self._set_reachable(False, exc)

    async def _until_next_poll(self) -> None:
        """The poll interval, cut short by a webhook call (a subscription's notification)."""
        if self._webhook is None:
            await asyncio.sleep(self._config.poll_interval_s)
            return
        wake = self._webhook.wake
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), self._config.poll_interval_s)
        wake.clear()

    async def _measure(self, client: _Client) -> None:
        """Every SAMPLE_S: the site's load into the intervals of the events that ask for
        reports, and each report that fell due POSTed (on time, whatever the poll interval)."""
        while True:
            now, site_kw = datetime.now(UTC), self._site.site_kw()
            for event_id, (_, windows) in self._reportable.items():
                self._load.add(event_id, windows, now, site_kw)
                baseline_kw = self._site.baseline_kw(event_id)
                if baseline_kw is not None:
                    self._baselines.setdefault(event_id, baseline_kw)
            await self._report(client)
            await asyncio.sleep(SAMPLE_S)

    async def _call(
        self, client: _Client, method: str, path: str, params: Sequence[tuple[str, str]] = (),
        body: Any = None,
    ) -> Any:  # fmt: skip
        """One request to the VTN with this VEN's token; the JSON answer (None if empty)."""
        token = await client.token
        headers = {} if token is None else {"Authorization": f"Bearer {token.token}"}
        url = f"{self._config.vtn_url.rstrip('/')}{path}"
        async with client.client_session.request(method, url, params=list(params), json=body,
                                                 headers=headers) as response:  # fmt: skip
            if response.status >= 400:
                raise toadr3.ToadrError(f"the VTN refused {method} {path}", response.status,
                                        response.reason)  # fmt: skip
            text = await response.text()
        return None if not text.strip() else json.loads(text)

    async def _enrol(self, client: _Client) -> None:
        """Once a session: this VEN's object and resources, and its subscriptions. A VTN
        that does not offer them is logged once; events are followed all the same."""
        c = self._config

        async def call(method: str, path: str, params: Sequence[tuple[str, str]],
                       body: Any) -> Any:  # fmt: skip
            return await self._call(client, method, path, params, body)

        try:
            if self.ven_id is None:
                self.ven_id = await ensure_ven(call, c.ven_name, c.resource_names)
            if c.callback_url is not None and not self._subscribed and self._programs:
                await subscribe(call, c.ven_name, list(self._programs), c.callback_url,
                                self._bearer)  # fmt: skip
                self._subscribed = True
                log.info("OpenADR 3: subscribed to event changes of %d program(s)",
                         len(self._programs))  # fmt: skip
            self._enrol_failed = None
        except (toadr3.ToadrError, aiohttp.ClientError, ValueError, KeyError) as exc:
            self._failed(client, exc, "VEN object or subscription not kept on the VTN")

    async def _report(self, client: _Client) -> None:
        """POST every report now due (at the end of its interval); a refused one is tried
        again at the next poll."""
        now = datetime.now(UTC)
        resources = self._config.resource_names
        resource = resources[0] if len(resources) == 1 else None
        for event_id, (event, windows) in list(self._reportable.items()):
            for descriptor in event.report_descriptors or []:
                for due, held in due_reports(descriptor, len(windows)):
                    key = (event_id, descriptor.payload_type, due)
                    end = windows[due].end_utc
                    if key in self.reported or end is None or end > now:
                        continue
                    body = report_body(event, descriptor, windows, held, log=self._load,
                                       baseline_kw=self._baselines.get(event_id),
                                       client_name=self._config.ven_name,
                                       resource_name=resource)  # fmt: skip
                    try:
                        await self._call(client, "POST", "/reports", (), body)
                    except (toadr3.ToadrError, aiohttp.ClientError, ValueError) as exc:
                        self._failed(client, exc, f"report {body['reportName']} not posted")
                        return
                    self.reported.add(key)
                    log.info("OpenADR 3 report %s posted", body["reportName"])

    def _failed(self, client: _Client, exc: BaseException, what: str) -> None:
        """A request besides the events' refused or failed: logged once per reason, tried
        again at the next poll (a refused token is dropped, so it logs in again)."""
        status = getattr(exc, "status_code", None)
        if status == 401:
            client.forget_token()
        why = f"{what}: {exc}" + ("" if status is None else f" ({status})")
        if why != self._enrol_failed:
            self._enrol_failed = why
            log.warning("OpenADR 3: %s; events are followed all the same", why)

    async def _poll(self, client: _Client, sink: SignalSink) -> None:
        if not self._programs:
            programs = await client.get_programs()
            self._programs = {p.id: p.program_name for p in programs
                              if p.id and p.program_name in self._config.programs}  # fmt: skip
            missing = set(self._config.programs) - set(self._programs.values())
            if missing:
                log.warning("OpenADR 3 programs not found on the VTN: %s", ", ".join(missing))
        listed: set[str] = set()
        now = datetime.now(UTC)
        for program_id, name in self._programs.items():
            targeted = await self._events(
                client,
                [
                    ("programID", program_id),
                    ("targetType", "VEN_NAME"),
                    ("targetValues", self._config.ven_name),
                ],
            )
            program_wide = await self._events(client, [("programID", program_id)])
            ours = {event_id for event_id, _, _ in targeted}
            for event_id, event, has_targets in targeted + program_wide:
                if event_id in listed:
                    continue
                if event_id not in ours and has_targets:
                    continue  # another VEN's event, read without the target filter
                listed.add(event_id)
                if isinstance(event, str):
                    self._refuse(event_id, f"cannot be read: {event}", now, sink)
                else:
                    self._follow(event, name, now, sink)
        for event_id in [e for e in self._held if e not in listed]:
            self._release(event_id, "no longer listed by the VTN", now, sink)
        for event_id in [e for e in self._reportable if e not in listed]:
            del self._reportable[event_id]  # deleted: nothing more to report on it
            self._baselines.pop(event_id, None)
            self._load.forget(event_id)
            self.reported = {key for key in self.reported if key[0] != event_id}

    async def _events(self, client: _Client, params: list[tuple[str, str]]) -> list[_Listed]:
        """GET /events, each event parsed alone: (id, the event or why it cannot be read,
        whether it names targets)."""
        token = await client.token
        headers = {} if token is None else {"Authorization": f"Bearer {token.token}"}
        url = f"{self._config.vtn_url.rstrip('/')}/events"
        async with client.client_session.get(url, params=params, headers=headers) as response:
            if response.status >= 400:
                raise toadr3.ToadrError("the VTN refused GET /events", response.status,
                                        response.reason)  # fmt: skip
            listed = await response.json(content_type=None)
        if not isinstance(listed, list):
            raise ValueError(f"GET /events answered a {type(listed).__name__}, not a list")
        out: list[_Listed] = []
        for raw in listed[:_MAX_EVENTS]:
            event_id = raw.get("id") if isinstance(raw, dict) else None
            if not isinstance(event_id, str) or not event_id:
                continue  # nothing to name it by: not an event this VEN can follow or refuse
            has_targets = bool(raw.get("targets"))
            try:
                out.append((event_id, Event.model_validate(raw), has_targets))
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                out.append((event_id[:128], f"{where}: {first['msg']}"[:200], has_targets))
        return out

    def _follow(self, event: Event, program: str, now: datetime, sink: SignalSink) -> None:
        assert event.id is not None
        why_not = not_for_ven(event, self._config.ven_name, self._config.resource_names)
        if why_not is not None:
            self._refuse(event.id, f"not for this site: {why_not}", now, sink)
            return
        try:
            plan = plan_event3(event, self._config, self._floor_kw, program,
                               self._revision_of(event))  # fmt: skip
        except UnsupportedEventError as exc:
            self._refuse(event.id, str(exc), now, sink)
            return
        self._refused.pop(event.id, None)
        self._keep_for_reports(event)
        self._push_at(plan, now, sink)

    def _keep_for_reports(self, event: Event) -> None:
        assert event.id is not None
        served = []
        for descriptor in event.report_descriptors or []:
            why = unsupported(descriptor)
            if why is None:
                served.append(descriptor)
            elif self._refused.get(f"{event.id}/report") != why:
                self._refused[f"{event.id}/report"] = why
                log.warning("OpenADR 3 event %s: report not made: %s", event.id, why)
                if self._on_refused is not None:
                    self._on_refused(event.id, why)
        if not served:
            self._reportable.pop(event.id, None)
            return
        steps = interval_steps(event, self._config, self._floor_kw)
        windows = [Window(k, step.start_utc, step.end_utc, step) for k, step in steps]
        self._reportable[event.id] = (event.model_copy(update={"report_descriptors": served}),
                                      windows)  # fmt: skip

    def _push_at(self, plan: EventPlan, now: datetime, sink: SignalSink) -> None:
        obligation, _wake = obligation_at(plan, now)  # the next poll looks again
        if obligation is not None:
            obligation = replace(obligation, source=SOURCE)  # the event book owns it by source
        if obligation is None:
            if plan.event_id in self._held:
                self._release(plan.event_id, "its intervals have passed", now, sink)
            return
        if self._held.get(plan.event_id) != obligation:
            self._held[plan.event_id] = obligation
            sink(obligation)

    def _revision_of(self, event: Event) -> int:
        """0 for the first version seen, + 1 for each new modificationDateTime."""
        assert event.id is not None
        modified = event.modification_date_time
        known = self._versions.get(event.id)
        if known is None:
            self._versions[event.id] = (modified, 0)
            return 0
        if modified != known[0]:
            self._versions[event.id] = (modified, known[1] + 1)
        return self._versions[event.id][1]

    def _release(self, event_id: str, why: str, now: datetime, sink: SignalSink) -> None:
        self.released[event_id] = why
        held = self._held.pop(event_id)
        self._versions.pop(event_id, None)
        log.info("OpenADR 3 event %s released: %s", event_id, why)
        if held.end_utc is None or held.end_utc > now:
            sink(ObligationCancel(event_id=event_id, at_utc=now, source=SOURCE))

    def _refuse(self, event_id: str, why: str, now: datetime, sink: SignalSink) -> None:
        if event_id in self._held:  # a modification the site cannot follow ends its obligation
            self._release(event_id, f"modified into one it cannot follow: {why}", now, sink)
        if self._refused.get(event_id) == why:
            return
        self._refused[event_id] = why
        log.warning("OpenADR 3 event %s not applied: %s", event_id, why)
        if self._on_refused is not None:
            self._on_refused(event_id, why)

    def _floor_kw(self, include_protected: bool) -> float:
        return self._site.floor_kw(include_protected=include_protected)

    def _set_reachable(self, reachable: bool, exc: BaseException | None = None) -> None:
        if reachable == self.reachable:
            return
        if reachable:
            log.info("OpenADR 3 VTN %s reachable", self._config.vtn_url)
        else:
            log.warning("OpenADR 3 VTN %s unreachable (%s): keeping %d event(s), retrying",
                        self._config.vtn_url, exc, len(self._held))  # fmt: skip
            self._programs = {}  # looked up again when it answers
            self._subscribed = False  # and subscribed again (a VTN may have restarted)
        self.reachable = reachable

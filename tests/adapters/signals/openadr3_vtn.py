"""An OpenADR 3.0 VTN for the tests, on aiohttp, written from the OpenADR 3.0.1 OpenAPI
definition (paths /auth/token, /programs, /events; the program, event, interval, intervalPeriod,
valuesMap and eventPayloadDescriptor schemas; OAuth 2 client credentials, Bearer tokens). No
Python OpenADR 3 VTN can be installed here from a package registry (the Alliance's reference
VTN is not published on PyPI), so this one stands in: it speaks the published JSON, and serves
only what the spec says a VEN may read (events filtered by programID and VEN_NAME target).
"""

from __future__ import annotations

import itertools
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

__all__ = ["Vtn3"]


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _duration(span: timedelta) -> str:
    return f"PT{int(span.total_seconds())}S"


@dataclass
class Vtn3:
    port: int
    client_id: str = "ven-client-1"
    client_secret: str = "ven-secret-of-some-length"
    programs: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)  # "GET /events?..." as received
    down: bool = False  # answers 503 to everything while set
    logins: int = 0  # tokens issued
    _tokens: set[str] = field(default_factory=set)
    _ids: itertools.count[int] = field(default_factory=itertools.count)
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/openadr3/3.0.1"

    async def start(self) -> None:
        app = web.Application()
        base = "/openadr3/3.0.1"
        app.router.add_post(f"{base}/auth/token", self._token)
        app.router.add_get(f"{base}/programs", self._programs)
        app.router.add_get(f"{base}/events", self._events)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # -- what a program operator does ----------------------------------------------------------
    def add_program(self, name: str) -> str:
        program_id = f"program-{next(self._ids)}"
        now = _iso(datetime.now(UTC))
        self.programs[program_id] = {
            "id": program_id, "createdDateTime": now, "modificationDateTime": now,
            "objectType": "PROGRAM", "programName": name,
        }  # fmt: skip
        return program_id

    def add_event(self, program_id: str, payload_type: str, values: list[float], *,
                  interval_s: float = 600, start: datetime | None = None,
                  targets: list[dict[str, Any]] | None = None,
                  units: str | None = None, duration: str | None = None) -> str:  # fmt: skip
        """`duration`: an ISO 8601 duration as sent (P9999Y, P1M, ...), else interval_s's."""
        event_id = f"event-{next(self._ids)}"
        now = datetime.now(UTC)
        start = start or now
        self.events[event_id] = {
            "id": event_id, "createdDateTime": _iso(now), "modificationDateTime": _iso(now),
            "objectType": "EVENT", "programID": program_id, "eventName": event_id,
            "priority": None, "targets": targets,
            "payloadDescriptors": [{"objectType": "EVENT_PAYLOAD_DESCRIPTOR",
                                    "payloadType": payload_type, "units": units,
                                    "currency": None}],
            "intervalPeriod": {"start": _iso(start),
                               "duration": duration or _duration(timedelta(seconds=interval_s))},
            "intervals": [{"id": k, "payloads": [{"type": payload_type, "values": [v]}]}
                          for k, v in enumerate(values)],
        }  # fmt: skip
        return event_id

    def modify(self, event_id: str, payload_type: str, values: list[float]) -> None:
        event = self.events[event_id]
        event["intervals"] = [{"id": k, "payloads": [{"type": payload_type, "values": [v]}]}
                              for k, v in enumerate(values)]  # fmt: skip
        event["modificationDateTime"] = _iso(datetime.now(UTC) + timedelta(milliseconds=1))

    def delete(self, event_id: str) -> None:
        del self.events[event_id]

    def forget_tokens(self) -> None:
        """Every token issued so far is refused from now on (a VTN restarted, keys rotated)."""
        self._tokens.clear()

    # -- the API ---------------------------------------------------------------------------------
    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if self.down:
            return web.json_response({"error": "unavailable"}, status=503)
        if form.get("grant_type") != "client_credentials":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        if (form.get("client_id"), form.get("client_secret")) != (
            self.client_id,
            self.client_secret,
        ):
            return web.json_response({"error": "invalid_client"}, status=403)
        token = secrets.token_hex(16)
        self._tokens.add(token)
        self.logins += 1
        # as the Alliance's reference VTN answers: the two fields clientCredentialResponse
        # requires, no expires_in (RFC 6749 only recommends it)
        return web.json_response({"access_token": token, "token_type": "Bearer"})

    def _authorised(self, request: web.Request) -> web.Response | None:
        self.requests.append(f"{request.method} {request.path_qs}")
        if self.down:
            return web.json_response(self._problem(503, "unavailable"), status=503)
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer ") or header[7:] not in self._tokens:
            return web.json_response(self._problem(403, "Forbidden"), status=403)
        return None

    @staticmethod
    def _problem(status: int, title: str) -> dict[str, Any]:
        return {"type": "about:blank", "title": title, "status": status, "detail": title}

    async def _programs(self, request: web.Request) -> web.Response:
        refused = self._authorised(request)
        return refused or web.json_response(list(self.programs.values()))

    async def _events(self, request: web.Request) -> web.Response:
        refused = self._authorised(request)
        if refused is not None:
            return refused
        program_id = request.query.get("programID")
        target_type = request.query.get("targetType")
        values = request.query.getall("targetValues", [])
        found = []
        for event in self.events.values():
            if program_id and event["programID"] != program_id:
                continue
            if target_type:
                # as the reference VTN filters: only events that carry a matching target (an
                # untargeted, program-wide event is not listed under a VEN_NAME filter)
                named = [t for t in event["targets"] or [] if t["type"] == target_type]
                if not any(v in values for t in named for v in t["values"]):
                    continue
            found.append(event)
        return web.json_response(found)

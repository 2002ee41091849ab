"""An OpenADR 3.0 VTN for the tests, on aiohttp, written from the OpenADR 3.0.1 OpenAPI
definition (paths /auth/token, /programs, /events, /vens and their resources, /reports,
/subscriptions; the program, event, interval, intervalPeriod, valuesMap, eventPayloadDescriptor,
reportDescriptor, ven, resource, report, subscription and notification schemas; OAuth 2 client
credentials, Bearer tokens). A subscription's callbackUrl is called, with its bearerToken, on
every event created, modified or deleted, as the reference VTN does. No
Python OpenADR 3 VTN can be installed here from a package registry (the Alliance's reference
VTN is not published on PyPI), so this one stands in: it speaks the published JSON, and serves
only what the spec says a VEN may read (events filtered by programID and VEN_NAME target).
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
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
    vens: dict[str, dict[str, Any]] = field(default_factory=dict)
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)
    reports: list[dict[str, Any]] = field(default_factory=list)
    subscriptions: dict[str, dict[str, Any]] = field(default_factory=dict)
    offers_subscriptions: bool = True  # False: /subscriptions answers 404, as a VTN without them
    notified: int = 0  # callbacks answered 2xx
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
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
        app.router.add_get(f"{base}/vens", self._get_vens)
        app.router.add_post(f"{base}/vens", self._post_ven)
        app.router.add_get(f"{base}/vens/{{ven_id}}/resources", self._get_resources)
        app.router.add_post(f"{base}/vens/{{ven_id}}/resources", self._post_resource)
        app.router.add_post(f"{base}/reports", self._post_report)
        app.router.add_get(f"{base}/subscriptions", self._get_subscriptions)
        app.router.add_post(f"{base}/subscriptions", self._post_subscription)
        app.router.add_put(f"{base}/subscriptions/{{sub_id}}", self._put_subscription)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # each callback's session closed
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
                  units: str | None = None, duration: str | None = None,
                  report_descriptors: list[dict[str, Any]] | None = None) -> str:  # fmt: skip
        """`duration`: an ISO 8601 duration as sent (P9999Y, P1M, ...), else interval_s's."""
        event_id = f"event-{next(self._ids)}"
        now = datetime.now(UTC)
        start = start or now
        self.events[event_id] = {
            "id": event_id, "createdDateTime": _iso(now), "modificationDateTime": _iso(now),
            "objectType": "EVENT", "programID": program_id, "eventName": event_id,
            "priority": None, "targets": targets, "reportDescriptors": report_descriptors,
            "payloadDescriptors": [{"objectType": "EVENT_PAYLOAD_DESCRIPTOR",
                                    "payloadType": payload_type, "units": units,
                                    "currency": None}],
            "intervalPeriod": {"start": _iso(start),
                               "duration": duration or _duration(timedelta(seconds=interval_s))},
            "intervals": [{"id": k, "payloads": [{"type": payload_type, "values": [v]}]}
                          for k, v in enumerate(values)],
        }  # fmt: skip
        self._notify("POST", self.events[event_id])
        return event_id

    def modify(self, event_id: str, payload_type: str, values: list[float]) -> None:
        event = self.events[event_id]
        event["intervals"] = [{"id": k, "payloads": [{"type": payload_type, "values": [v]}]}
                              for k, v in enumerate(values)]  # fmt: skip
        event["modificationDateTime"] = _iso(datetime.now(UTC) + timedelta(milliseconds=1))
        self._notify("PUT", event)

    def delete(self, event_id: str) -> None:
        self._notify("DELETE", self.events.pop(event_id))

    def _notify(self, operation: str, event: dict[str, Any]) -> None:
        """Call back every subscription to the event's program that asked for this operation."""
        asked = {"POST": "CREATE", "PUT": "UPDATE", "DELETE": "DELETE"}[operation]
        for sub in self.subscriptions.values():
            if sub["programID"] != event["programID"]:
                continue
            for op in sub["objectOperations"]:
                if "EVENT" in op["objects"] and asked in op["operations"]:
                    body = {"objectType": "EVENT", "operation": operation, "object": event}
                    task = asyncio.get_running_loop().create_task(
                        self._call_back(op["callbackUrl"], op.get("bearerToken"), body)
                    )
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)

    async def _call_back(self, url: str, bearer: str | None, body: dict[str, Any]) -> None:
        headers = {} if bearer is None else {"Authorization": f"Bearer {bearer}"}
        async with (
            aiohttp.ClientSession() as session,
            session.post(url, json=body, headers=headers) as response,
        ):
            if response.status < 300:
                self.notified += 1

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

    # -- what a VEN keeps on the VTN -----------------------------------------------------------
    def _created(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        now = _iso(datetime.now(UTC))
        return {**body, "id": f"{kind}-{next(self._ids)}", "createdDateTime": now,
                "modificationDateTime": now}  # fmt: skip

    async def _get_vens(self, request: web.Request) -> web.Response:
        refused = self._authorised(request)
        if refused is not None:
            return refused
        name = request.query.get("venName")
        return web.json_response([v for v in self.vens.values()
                                  if name is None or v["venName"] == name])  # fmt: skip

    async def _post_ven(self, request: web.Request) -> web.Response:
        refused = self._authorised(request)
        if refused is not None:
            return refused
        body = await request.json()
        if not body.get("venName") or body.get("objectType") != "VEN":
            return web.json_response(self._problem(400, "Bad Request"), status=400)
        if any(v["venName"] == body["venName"] for v in self.vens.values()):
            return web.json_response(self._problem(409, "Conflict"), status=409)
        ven = self._created("ven", body)
        self.vens[ven["id"]] = ven
        return web.json_response(ven, status=201)

    async def _get_resources(self, request: web.Request) -> web.Response:
        refused = self._authorised(request)
        if refused is not None:
            return refused
        ven_id = request.match_info["ven_id"]
        return web.json_response([r for r in self.resources.values() if r["venID"] == ven_id])

    async def _post_resource(self, request: web.Request) -> web.Response:
        refused = self._authorised(request)
        if refused is not None:
            return refused
        ven_id = request.match_info["ven_id"]
        body = await request.json()
        if ven_id not in self.vens or not body.get("resourceName"):
            return web.json_response(self._problem(400, "Bad Request"), status=400)
        resource = self._created("resource", {**body, "venID": ven_id})
        self.resources[resource["id"]] = resource
        return web.json_response(resource, status=201)

    async def _post_report(self, request: web.Request) -> web.Response:
        refused = self._authorised(request)
        if refused is not None:
            return refused
        body = await request.json()
        required = ("programID", "eventID", "clientName", "resources")
        if any(body.get(k) in (None, "") for k in required) or body.get("objectType") != "REPORT":
            return web.json_response(self._problem(400, "Bad Request"), status=400)
        report = self._created("report", body)
        self.reports.append(report)
        return web.json_response(report, status=201)

    async def _get_subscriptions(self, request: web.Request) -> web.Response:
        refused = self._authorised(request)
        if refused is not None:
            return refused
        if not self.offers_subscriptions:
            return web.json_response(self._problem(404, "Not Found"), status=404)
        return web.json_response(list(self.subscriptions.values()))

    async def _post_subscription(self, request: web.Request) -> web.Response:
        refused = self._authorised(request)
        if refused is not None:
            return refused
        if not self.offers_subscriptions:
            return web.json_response(self._problem(404, "Not Found"), status=404)
        body = await request.json()
        if not body.get("programID") or not body.get("objectOperations"):
            return web.json_response(self._problem(400, "Bad Request"), status=400)
        sub = self._created("subscription", body)
        self.subscriptions[sub["id"]] = sub
        return web.json_response(sub, status=201)

    async def _put_subscription(self, request: web.Request) -> web.Response:
        refused = self._authorised(request)
        if refused is not None:
            return refused
        sub_id = request.match_info["sub_id"]
        if sub_id not in self.subscriptions:
            return web.json_response(self._problem(404, "Not Found"), status=404)
        body = await request.json()
        self.subscriptions[sub_id] = {**self.subscriptions[sub_id], **body, "id": sub_id}
        return web.json_response(self.subscriptions[sub_id])

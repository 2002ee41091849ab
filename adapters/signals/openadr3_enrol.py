"""What an OpenADR 3.0 VEN keeps on its VTN besides reading events: its own `ven` object and
resources, and subscriptions whose webhook wakes it when an event changes.

- the VEN object: `GET /vens?venName=` finds it; absent, `POST /vens` creates it (the VTN's
  ven-role clients create their own); each of `openadr3.resource_names` missing from
  `/vens/{id}/resources` is created there. Done once a session with the VTN; a VTN that does
  not offer it (an error) is logged once and events are followed all the same.
- subscriptions (with `openadr3.callback_url` set): one per enrolled program, for events
  created, updated and deleted, calling back `callback_url` with a bearer token made at each
  start; a subscription of this VEN to the same program and URL is updated rather than doubled.
  The webhook only makes the VEN poll at once: the poll stays the source of truth, and goes on
  at its interval whether or not the VTN ever calls back (polling is the fallback).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

__all__ = ["Call", "Webhook", "ensure_ven", "subscribe"]

log = logging.getLogger("adapters.signals.openadr3_ven")

# (method, path under the VTN's base URL, query, JSON body) -> the decoded JSON answer
Call = Callable[[str, str, Sequence[tuple[str, str]], Any], Awaitable[Any]]
EVENT_OPERATIONS = ["CREATE", "UPDATE", "DELETE"]


async def ensure_ven(call: Call, ven_name: str, resource_names: Sequence[str]) -> str:
    """The id of this VEN's `ven` object, created with its resources where missing."""
    listed = await call("GET", "/vens", [("venName", ven_name)], None)
    ven = next((v for v in _objects(listed) if v.get("venName") == ven_name), None)
    if ven is None:
        ven = await call("POST", "/vens", (), {"objectType": "VEN", "venName": ven_name})
        log.info("OpenADR 3: VEN object %s created", ven_name)
    ven_id = str(ven["id"])
    have = {r.get("resourceName") for r in _objects(
        await call("GET", f"/vens/{ven_id}/resources", (), None))}  # fmt: skip
    for name in resource_names:
        if name not in have:
            body = {"objectType": "RESOURCE", "resourceName": name, "venID": ven_id}
            await call("POST", f"/vens/{ven_id}/resources", (), body)
            log.info("OpenADR 3: resource %s created", name)
    return ven_id


async def subscribe(
    call: Call, client_name: str, program_ids: Sequence[str], callback_url: str, bearer: str
) -> int:
    """Subscribe to every program's event changes; how many subscriptions were written."""
    mine = [s for s in _objects(await call("GET", "/subscriptions", (), None))
            if s.get("clientName") == client_name]  # fmt: skip
    written = 0
    for program_id in program_ids:
        body = {
            "objectType": "SUBSCRIPTION", "clientName": client_name, "programID": program_id,
            "objectOperations": [{"objects": ["EVENT"], "operations": EVENT_OPERATIONS,
                                  "callbackUrl": callback_url, "bearerToken": bearer}],
        }  # fmt: skip
        same = next((s for s in mine if s.get("programID") == program_id and any(
            op.get("callbackUrl") == callback_url for op in s.get("objectOperations") or []
            if isinstance(op, dict))), None)  # fmt: skip
        if same is not None and same.get("id"):
            await call("PUT", f"/subscriptions/{same['id']}", (), {**same, **body})
        else:
            await call("POST", "/subscriptions", (), body)
        written += 1
    return written


def _objects(answer: Any) -> list[dict[str, Any]]:
    return [o for o in answer if isinstance(o, dict)] if isinstance(answer, list) else []


class Webhook:
    """The HTTP endpoint the VTN's notifications arrive at: a call that shows the bearer token
    of this run sets `wake` (and is answered 200); any other is answered 403."""

    def __init__(self, callback_url: str, host: str, port: int, bearer: str) -> None:
        self.wake = asyncio.Event()
        self.calls = 0
        self._path = urlsplit(callback_url).path or "/"
        self._host, self._port, self._bearer = host, port, bearer
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application(client_max_size=1 << 20)
        app.router.add_post(self._path, self._notified)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self._host, self._port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _notified(self, request: web.Request) -> web.Response:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if not hmac.compare_digest(given.encode(), self._bearer.encode()):
            return web.Response(status=403)
        self.calls += 1
        self.wake.set()
        return web.Response(status=200)

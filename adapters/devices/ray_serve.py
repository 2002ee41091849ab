"""A GPU pool scheduled by Ray Serve, driven through Serve's REST API on the Ray dashboard.

The pool is one Serve instance with two applications: the inference service (its workers are
the pool's *serving* servers) and the flexible work that idle capacity is lent to (its workers
are the *lent* servers). A PoolPlan sets each application's deployment to that many replicas:

- `GET /api/serve/applications/` gives every application's deployed config and each
  deployment's `target_num_replicas` and replica states;
- `PUT /api/serve/applications/` takes the whole declarative config back. Every application is
  sent again (a PUT replaces the set: one left out is deleted), with the two deployments' counts
  changed. A deployment's `autoscaling_config` is dropped when the plan fixes its count: the plan
  is the limit, and the scheduler must not scale past it.
- Serve refuses `num_replicas: 0`, so a use with no workers is its application taken out of the
  config; its last config is kept here and deployed again when workers come back. An application
  gridflex has never seen cannot be brought back (DeviceRejectedError naming it).

No Ray in the agent: plain HTTP with `requests`, in a worker thread. Errors are translated to
the device errors (unreachable, timed out, refused), so a pool is handled like a device.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import requests

from agent.errors import DeviceRejectedError, DeviceTimeoutError, DeviceUnavailableError
from agent.ports import PoolPlan, PoolState, utc_now

__all__ = ["RayServePool", "RayServeSettings"]

_PATH = "/api/serve/applications/"


@dataclass(frozen=True, slots=True)
class RayServeSettings:
    dashboard_url: str  # http://<head>:8265
    inference_app: str
    inference_deployment: str
    flexible_app: str
    flexible_deployment: str
    timeout_s: float = 5.0


class RayServePool:
    """A GpuPoolScheduler for one Ray Serve instance (see the module doc)."""

    def __init__(
        self,
        pool_id: str,
        settings: RayServeSettings,
        *,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._pool_id = pool_id
        self._settings = settings
        self._clock = clock
        self._known: dict[str, dict[str, Any]] = {}  # last config seen, per application
        self._http = requests.Session()

    async def apply(self, plan: PoolPlan) -> None:
        await asyncio.to_thread(self._apply, plan)

    async def read(self) -> PoolState:
        current = await asyncio.to_thread(self._get)
        s = self._settings
        serving = _replicas(current, s.inference_app, s.inference_deployment)
        lent = _replicas(current, s.flexible_app, s.flexible_deployment)
        return PoolState(serving[0], serving[1], lent[0], lent[1], self._clock())

    # -- the REST API --------------------------------------------------------------------
    def _apply(self, plan: PoolPlan) -> None:
        current = self._get()
        configs = {name: app["deployed_app_config"]
                   for name, app in (current.get("applications") or {}).items()
                   if app.get("deployed_app_config")}  # fmt: skip
        self._known.update(copy.deepcopy(configs))
        s = self._settings
        for app, deployment, replicas in (
            (s.inference_app, s.inference_deployment, plan.serving),
            (s.flexible_app, s.flexible_deployment, plan.lent),
        ):
            if replicas == 0:
                configs.pop(app, None)
                continue
            known = configs.get(app) or self._known.get(app)
            if known is None:
                raise DeviceRejectedError(self._pool_id, f"Serve has no application {app!r} "
                                          "and gridflex never saw one: deploy it once")  # fmt: skip
            configs[app] = _with_replicas(known, deployment, replicas)
        body: dict[str, Any] = {"applications": list(configs.values())}
        http = current.get("http_options") or {}
        if http.get("port") is not None:
            body["http_options"] = {"host": http.get("host"), "port": http["port"]}
        if current.get("proxy_location"):
            body["proxy_location"] = current["proxy_location"]
        self._call("PUT", body)

    def _get(self) -> dict[str, Any]:
        answer: dict[str, Any] = self._call("GET", None)
        return answer

    def _call(self, method: str, body: dict[str, Any] | None) -> Any:
        url = self._settings.dashboard_url.rstrip("/") + _PATH
        try:
            response = self._http.request(method, url, json=body, timeout=self._settings.timeout_s)
        except requests.Timeout as exc:
            raise DeviceTimeoutError(self._pool_id, f"Ray Serve {method}: {exc}") from exc
        except requests.RequestException as exc:
            raise DeviceUnavailableError(self._pool_id, f"Ray Serve {method}: {exc}") from exc
        if response.status_code != 200:
            text = response.text.strip().splitlines()[:3]
            raise DeviceRejectedError(self._pool_id, f"Ray Serve {method} answered "
                                      f"{response.status_code}: {' / '.join(text)}")  # fmt: skip
        if method == "GET":
            try:
                return response.json()
            except ValueError as exc:
                raise DeviceRejectedError(self._pool_id, "Ray Serve: not JSON") from exc
        return None


def _with_replicas(app: dict[str, Any], deployment: str, replicas: int) -> dict[str, Any]:
    """The application's config with `deployment` fixed at `replicas` (autoscaling dropped)."""
    config = copy.deepcopy(app)
    deployments = config.setdefault("deployments", [])
    entry = next((d for d in deployments if d.get("name") == deployment), None)
    if entry is None:  # the config leaves it at its code's defaults: override it
        entry = {"name": deployment}
        deployments.append(entry)
    entry.pop("autoscaling_config", None)
    entry["num_replicas"] = replicas
    return config


def _replicas(current: dict[str, Any], app: str, deployment: str) -> tuple[int, int]:
    """(target, running) replicas of a deployment; an application not deployed has none."""
    details = ((current.get("applications") or {}).get(app) or {}).get("deployments") or {}
    found = details.get(deployment)
    if found is None:
        return 0, 0
    running = sum(1 for r in found.get("replicas") or [] if r.get("state") == "RUNNING")
    return int(found.get("target_num_replicas") or 0), running

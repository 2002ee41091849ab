"""The Ray Serve pool scheduler against a real local Ray (CPU only, on 127.0.0.1): an inference
application and a flexible-work application, their workers moved between the two and stopped,
as the REST API reports and as the inference endpoint answers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests

from adapters.devices.ray_serve import RayServePool, RayServeSettings
from agent.domain.fleet import (
    ControlMode,
    DeviceKind,
    DeviceSpec,
    Fleet,
    FleetState,
    LoadClass,
    Priority,
)
from agent.domain.hybrid import InferencePool
from agent.domain.settings import Policy
from agent.domain.signals import GpuDemand, PriceSignal, Signals
from agent.errors import DeviceRejectedError, DeviceUnavailableError
from agent.policy import Decision, Memory, decide
from agent.ports import PoolPlan, PoolState
from agent.service.pools import PoolSchedulers, ScheduledPool
from tests.helpers.peers import free_port

RAY = str(Path(sys.executable).with_name("ray"))  # the venv's (ray[serve] is a dev dependency)
# a Ray head takes seconds to start and each rescale a few more: in `make test-slow` (.ci/run)
pytestmark = pytest.mark.slow

# the site's two applications, as a site would write them (CPU-only here: num_cpus 0)
APPS = """
from ray import serve


@serve.deployment(ray_actor_options={"num_cpus": 0})
class Chat:
    def __call__(self, request):
        return "served"


@serve.deployment(ray_actor_options={"num_cpus": 0})
class Batch:
    def __call__(self, request):
        return "batch"


chat = Chat.bind()
batch = Batch.bind()
"""


@dataclass
class RayHead:
    dashboard: str
    serve_port: int


@pytest.fixture(scope="module")
def ray_head() -> Iterator[RayHead]:
    # a short temp dir: Ray's unix socket paths must fit in 107 characters
    folder = Path(tempfile.mkdtemp(prefix="gfray", dir="/tmp"))
    (folder / "site_apps.py").write_text(APPS)
    dashboard_port, serve_port = free_port(), free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(folder),
           "RAY_USAGE_STATS_ENABLED": "0"}  # fmt: skip
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1",
         f"--port={free_port()}", f"--dashboard-port={dashboard_port}",
         "--dashboard-host=127.0.0.1", "--include-dashboard=true", "--num-cpus=2",
         "--object-store-memory=200000000",  # 200 MB: a small /dev/shm (containers) suffices
         "--disable-usage-stats", f"--temp-dir={folder / 'ray'}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    dashboard = f"http://127.0.0.1:{dashboard_port}"
    try:
        _until(lambda: _answers(dashboard + "/api/serve/applications/"), 90, "Ray's dashboard")
        config = {
            "http_options": {"host": "127.0.0.1", "port": serve_port},
            "applications": [
                {"name": "chat", "route_prefix": "/chat", "import_path": "site_apps:chat",
                 "deployments": [{"name": "Chat", "num_replicas": 2}]},
                {"name": "batch", "route_prefix": "/batch", "import_path": "site_apps:batch",
                 "deployments": [{"name": "Batch", "autoscaling_config":
                                  {"min_replicas": 1, "max_replicas": 4}}]},
            ],
        }  # fmt: skip
        answer = requests.put(dashboard + "/api/serve/applications/", json=config, timeout=30)
        assert answer.status_code == 200, answer.text
        yield RayHead(dashboard, serve_port)
    finally:
        started = _descendants(head.pid)  # raylet's workers leave the process group
        os.killpg(head.pid, signal.SIGTERM)  # `ray start --block` stops what it started...
        try:
            head.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=10)
        for pid in started:  # ...and what is left of it goes too
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(folder, ignore_errors=True)


def _descendants(root: int) -> list[int]:
    """Every process below `root` now (Linux /proc)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [root]
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _serves(head: RayHead) -> bool:
    try:
        chat = requests.get(f"http://127.0.0.1:{head.serve_port}/chat", timeout=10)
    except requests.RequestException:
        return False
    return chat.status_code == 200 and chat.text == "served"


def _until(check: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.5)


def pool(head: RayHead) -> RayServePool:
    return RayServePool("pool-a", RayServeSettings(head.dashboard, "chat", "Chat", "batch",
                                                   "Batch", timeout_s=30))  # fmt: skip


async def settle(scheduler: RayServePool, plan: PoolPlan, timeout_s: float = 90) -> PoolState:
    deadline = time.monotonic() + timeout_s
    while True:
        state = await scheduler.read()
        if state.meets(plan) or time.monotonic() > deadline:
            return state
        await asyncio.sleep(0.5)


def test_workers_move_between_inference_and_flexible_work_and_stop(ray_head: RayHead) -> None:
    async def main() -> None:
        scheduler = pool(ray_head)
        for plan in (PoolPlan(serving=1, lent=3),   # idle capacity lent
                     PoolPlan(serving=3, lent=0),   # demand rises: every lent worker reclaimed
                     PoolPlan(serving=2, lent=1),   # lent again (the batch app comes back)
                     PoolPlan(serving=0, lent=0)):  # paused  # fmt: skip
            await scheduler.apply(plan)
            state = await settle(scheduler, plan)
            assert state.meets(plan), (plan, state)
            # the proxy's route table follows the applications a moment later
            serving = plan.serving > 0
            _until(lambda: _serves(ray_head) == serving, 60, f"/chat under {plan}")  # noqa: B023
        await scheduler.apply(PoolPlan(serving=2, lent=1))  # back to work for the next test
        assert (await settle(scheduler, PoolPlan(2, 1))).meets(PoolPlan(2, 1))

    asyncio.run(main())


def test_an_application_never_seen_cannot_be_brought_back(ray_head: RayHead) -> None:
    async def main() -> None:
        stranger = RayServePool("pool-b", RayServeSettings(ray_head.dashboard, "chat", "Chat",
                                                           "training", "Trainer"))  # fmt: skip
        with pytest.raises(DeviceRejectedError, match="'training'"):
            await stranger.apply(PoolPlan(serving=2, lent=1))
        state = await stranger.read()
        assert (state.lent_target, state.lent_running) == (0, 0)

    asyncio.run(main())


def test_a_dashboard_that_does_not_answer_is_unavailable() -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    settings = RayServeSettings(nowhere, "chat", "Chat", "batch", "Batch", timeout_s=1)
    nobody = RayServePool("pool-c", settings)
    with pytest.raises(DeviceUnavailableError):
        asyncio.run(nobody.read())


def test_a_plan_counts_workers() -> None:
    with pytest.raises(ValueError, match="counts workers"):
        PoolPlan(serving=-1, lent=0)


def test_the_engine_s_pool_decision_reaches_ray_serve(ray_head: RayHead) -> None:
    """decide() sizes a 4-server pool from its demand; the service's PoolSchedulers sends the
    plan to Ray Serve; a burst reclaims the lent worker; a dead dashboard is a fault, retried."""
    classes = [LoadClass("gpu", Priority.PROTECTED, 1500.0)]
    servers = [DeviceSpec(f"g{i}", "gpu", DeviceKind.GPU, 1.2, 0.5, ControlMode.POWER_LIMIT)
               for i in range(4)]  # fmt: skip
    fleet = Fleet.build(classes, servers)
    pool_spec = InferencePool("chat", "gpu", requests_per_server=10, service_level_s=2,
                              headroom_fraction=0, shrink_fraction=1.0,
                              lend_value_usd_per_mwh=500)  # fmt: skip
    policy = Policy(pools=(pool_spec,))
    now = datetime.now(UTC)
    cheap = PriceSignal(30.0, now - timedelta(minutes=1), now + timedelta(minutes=14), now)

    def decided(running: float) -> Decision:
        demand = GpuDemand("chat", now, 0.0, running, None, None, 1, 1)
        signals = Signals(price=cheap, gpu_demand=(demand,))
        state = FleetState.all_available(fleet)
        return decide(signals, state, policy, Memory.initial(fleet), now)

    async def main() -> None:
        scheduler = pool(ray_head)
        schedulers = PoolSchedulers({"chat": ScheduledPool(scheduler, timeout_s=60)})
        for running, plan in ((25.0, PoolPlan(3, 1)), (40.0, PoolPlan(4, 0))):
            await schedulers.after_cycle(decided(running))
            assert schedulers.sent["chat"] == plan
            assert (await settle(scheduler, plan)).meets(plan)
        nowhere = RayServeSettings(f"http://127.0.0.1:{free_port()}", "chat", "Chat", "batch",
                                   "Batch", timeout_s=1)  # fmt: skip
        broken = PoolSchedulers({"chat": ScheduledPool(RayServePool("chat", nowhere))})
        await broken.after_cycle(decided(25.0))
        assert "chat" in broken.faults
        assert "chat" not in broken.sent
        await scheduler.apply(PoolPlan(2, 1))  # as the tests before left it

    asyncio.run(main())

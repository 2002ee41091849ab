"""The Kueue pool against a Kubernetes API server that speaks Kueue's objects (kueue_fake.py:
no API server can run here). Lending sets GPU quota, reclaiming evicts the newest workloads,
no worker lent stops the queue, and what read() reports is what Kueue and the Deployment say."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from kubernetes.client import ApiClient, Configuration

from adapters.devices.kueue_pool import KueuePool, KueueSettings
from agent.app.pools import pool_schedulers
from agent.config import parse_config
from agent.domain.fleet import FleetState
from agent.domain.signals import GpuDemand, PriceSignal, Signals
from agent.errors import DeviceRejectedError, DeviceUnavailableError
from agent.policy import Memory, decide
from agent.ports import PoolPlan
from tests.adapters.devices.kueue_fake import FakeKube, fake_kube
from tests.helpers.hybrid_site import HYBRID
from tests.helpers.peers import free_port


def pool(kube_url: str, **settings: object) -> KueuePool:
    options = {
        "cluster_queue": "flex",
        "flavor": "h100",
        "namespace": "inference",
        "deployment": "chat",
        "gpus_per_worker": 2,
        "timeout_s": 5.0,
        **settings,
    }
    return KueuePool("pool-k", KueueSettings(**options),  # type: ignore[arg-type]
                     ApiClient(Configuration(host=kube_url)))  # fmt: skip


def _jobs(kube: FakeKube) -> None:
    for name in ("job-a", "job-b", "job-c"):
        kube.submit(name, 2)


def test_lending_sets_quota_and_kueue_admits_what_fits() -> None:
    with fake_kube() as kube:
        _jobs(kube)
        assert kube.admitted() == []  # no quota yet
        scheduler = pool(kube.url)
        asyncio.run(scheduler.apply(PoolPlan(serving=4, lent=2)))
        assert kube.admitted() == ["job-a", "job-b"]
        assert kube.queue["spec"]["stopPolicy"] == "None"
        assert {c for _, c in kube.patches} == {"application/merge-patch+json"}
        first = asyncio.run(scheduler.read())
        assert (first.serving_target, first.serving_running) == (4, 1)  # pods still starting
        assert not first.meets(PoolPlan(4, 2))
        state = asyncio.run(scheduler.read())
        assert state.meets(PoolPlan(4, 2)), state
        # the other resources of the queue are kept: a merge patch replaces the whole list
        (group,) = kube.queue["spec"]["resourceGroups"]
        assert group["flavors"][0]["resources"][0] == {"name": "cpu", "nominalQuota": "512"}


def test_a_reclaim_evicts_the_newest_workloads_until_the_rest_fit() -> None:
    with fake_kube(gpu_quota=6) as kube:
        _jobs(kube)
        assert kube.admitted() == ["job-a", "job-b", "job-c"]
        scheduler = pool(kube.url)
        asyncio.run(scheduler.apply(PoolPlan(serving=3, lent=1)))
        assert kube.admitted() == ["job-a"]  # the two admitted last gave way
        assert [w["spec"]["active"] for w in kube.workloads] == [True, False, False]
        asyncio.run(scheduler.read())
        assert asyncio.run(scheduler.read()).meets(PoolPlan(3, 1))


@pytest.mark.parametrize(("drain", "stop", "still_running"), [
    (True, "HoldAndDrain", []), (False, "Hold", ["job-a", "job-b"]),
])  # fmt: skip
def test_no_worker_lent_stops_the_queue(drain: bool, stop: str, still_running: list[str]) -> None:
    with fake_kube(gpu_quota=4) as kube:
        _jobs(kube)
        scheduler = pool(kube.url, drain=drain)
        asyncio.run(scheduler.apply(PoolPlan(serving=4, lent=0)))
        assert kube.queue["spec"]["stopPolicy"] == stop
        assert kube.admitted() == still_running
        asyncio.run(scheduler.read())
        state = asyncio.run(scheduler.read())
        # Hold lets admitted work finish: the plan is not in force until it has
        assert state.meets(PoolPlan(4, 0)) is (not still_running)
        assert state.lent_running == len(still_running)


def test_a_queue_without_the_flavor_is_refused_and_an_api_that_is_gone_is_unavailable() -> None:
    with fake_kube() as kube:
        with pytest.raises(DeviceRejectedError, match=r"no nvidia\.com/gpu quota in flavor 'a100'"):
            asyncio.run(pool(kube.url, flavor="a100").apply(PoolPlan(1, 1)))
        missing = KueuePool("pool-k", KueueSettings("other", "h100", "inference", "chat"),
                            ApiClient(Configuration(host=kube.url)))  # fmt: skip
        with pytest.raises(DeviceRejectedError, match="404"):
            asyncio.run(missing.read())
    with pytest.raises(DeviceUnavailableError):
        asyncio.run(pool(f"http://127.0.0.1:{free_port()}", timeout_s=1.0).read())


def test_a_site_file_s_kueue_scheduler_takes_the_engine_s_plan(tmp_path: Path) -> None:
    """From the site file (a kubeconfig) to the queue: decide() sizes the pool, the service's
    PoolSchedulers sends the plan, Kueue admits the lent work."""
    with fake_kube() as kube:
        _jobs(kube)
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(KUBECONFIG.format(url=kube.url))
        template = HYBRID.replace(
            "lend_value_usd_per_mwh: 100}}}}",
            "lend_value_usd_per_mwh: 100,\n                    scheduler: {{kind: kueue, "
            'kubeconfig: "{kc}", cluster_queue: flex, flavor: h100, gpus_per_worker: 2, '
            "namespace: inference, deployment: chat}}}}}}",
        )
        text = template.format(db=tmp_path / "db.sqlite3", a="http://10.0.4.11/metrics",
                               b="http://10.0.4.12/metrics", kc=kubeconfig)  # fmt: skip
        config = parse_config(text, env={})
        schedulers = pool_schedulers(config)
        fleet, policy = config.fleet(), config.decision_policy()
        now = datetime.now(UTC)
        signals = Signals(
            price=PriceSignal(30.0, now - timedelta(minutes=1), now + timedelta(minutes=14), now),
            gpu_demand=(GpuDemand("chat", now, 0.0, 100.0, None, None, 2, 2),),
        )  # 100 requests at 40 a server, 25 % headroom: 4 of 8 serve, 4 lent
        decision = decide(signals, FleetState.all_available(fleet), policy,
                          Memory.initial(fleet), now)  # fmt: skip
        asyncio.run(schedulers.after_cycle(decision))
        assert schedulers.sent["chat"] == PoolPlan(serving=4, lent=4)
        assert kube.deployment["spec"]["replicas"] == 4
        assert kube.queue["spec"]["resourceGroups"][0]["flavors"][0]["resources"][1] == {
            "name": "nvidia.com/gpu", "nominalQuota": "8"}  # fmt: skip
        assert kube.admitted() == ["job-a", "job-b", "job-c"]


KUBECONFIG = """
apiVersion: v1
kind: Config
clusters: [{{name: site, cluster: {{server: "{url}"}}}}]
users: [{{name: gridflex, user: {{token: test-token}}}}]
contexts: [{{name: site, context: {{cluster: site, user: gridflex}}}}]
current-context: site
"""

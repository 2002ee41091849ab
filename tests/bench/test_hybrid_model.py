"""The hybrid bench's site model against what queueing theory and the model's own rules say:
a simulator that is wrong would make bench/hybrid.py's ratios meaningless."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.hybrid_model import (
    CHECKPOINT_COST_S,
    InferenceQueue,
    InferenceTrace,
    JobCluster,
    JobsTrace,
    generate_jobs,
    speed,
)


def erlang_c_wait_s(servers: int, arrivals_per_s: float, service_s: float) -> float:
    """Mean wait in an M/M/c queue."""
    a = arrivals_per_s * service_s
    rho = a / servers
    top = a**servers / math.factorial(servers) / (1 - rho)
    p_wait = top / (sum(a**k / math.factorial(k) for k in range(servers)) + top)
    return p_wait / (servers / service_s - arrivals_per_s)


@pytest.mark.parametrize(("servers", "load"), [(4, 0.8), (10, 0.85)])
def test_the_queue_waits_as_an_mmc_queue_does(servers: int, load: float) -> None:
    rng = np.random.default_rng(3)
    service_s, rate = 10.0, load * servers / 10.0
    arrivals = np.cumsum(rng.exponential(1 / rate, 300_000))
    queue = InferenceQueue(InferenceTrace(arrivals, rng.exponential(service_s, len(arrivals))))
    step_s, t = 60.0, 0.0
    while t < arrivals[-1]:
        queue.advance(t, t + step_s, servers, 1.0)
        t += step_s
    measured = float(np.nanmean(queue.wait_s))
    assert measured == pytest.approx(erlang_c_wait_s(servers, rate, service_s), rel=0.1)


def test_servers_added_at_a_step_take_the_queue_at_once() -> None:
    queue = InferenceQueue(InferenceTrace(np.array([0.0, 1.0, 2.0]), np.full(3, 1000.0)))
    running, waiting, _ = queue.advance(0.0, 60.0, 1, 1.0)
    assert (running, waiting) == (1, 2)
    running, waiting, mean_wait_s = queue.advance(60.0, 120.0, 3, 1.0)
    assert (running, waiting) == (3, 0)
    assert list(queue.wait_s) == [0.0, 59.0, 58.0]
    assert mean_wait_s == pytest.approx(58.5)


def test_a_capped_server_runs_slower_by_the_documented_curve() -> None:
    assert speed(0.75) == pytest.approx(0.917, abs=1e-3)
    capped = InferenceQueue(InferenceTrace(np.array([0.0]), np.array([55.0])))
    full = InferenceQueue(InferenceTrace(np.array([0.0]), np.array([55.0])))
    assert capped.advance(0.0, 60.0, 1, speed(0.5))[0] == 1  # 55 s of work take 67.7 s
    assert full.advance(0.0, 60.0, 1, 1.0)[0] == 0


def test_a_preempted_job_pays_the_checkpoint_cost_and_resumes_first() -> None:
    jobs = JobCluster(JobsTrace(np.array([0.0, 10.0]), np.array([4, 4]), np.array([8.0, 8.0])))
    assert jobs.step(0.0, 3600.0, 8, 1.0) == 8
    assert jobs.step(3600.0, 7200.0, 4, 1.0) == 4  # the job started last gives way
    assert jobs.preemptions == 1
    for k in range(2, 5):
        jobs.step(k * 3600.0, (k + 1) * 3600.0, 8, 1.0)
    _queued, jct, unfinished = jobs.finished(5 * 3600.0)
    assert unfinished == 0
    assert jct[0] == pytest.approx(7200.0)
    # the second ran 3590 s of its 7200, then resumed at 7200 s with the rest and the cost
    assert jct[1] == pytest.approx(7200 + (7200 - 3590) + CHECKPOINT_COST_S - 10)


def test_a_job_that_does_not_fit_lets_a_smaller_one_behind_it_start() -> None:
    trace = JobsTrace(np.array([0.0, 1.0, 2.0]), np.array([4, 8, 2]), np.array([40.0, 8.0, 2.0]))
    jobs = JobCluster(trace)
    assert jobs.step(0.0, 60.0, 6, 1.0) == 6  # the 8-server job waits, the 2-server one runs


def test_generated_jobs_ask_the_load_they_were_sized_for() -> None:
    trace = generate_jobs(days=20, mean_gpus_busy=300.0, seed=1)
    offered = float(trace.gpu_hours.sum()) / (20 * 24)
    assert offered == pytest.approx(300.0, rel=0.1)

"""The hybrid site model of bench/hybrid.py: traces, the inference queue, the flexible-job cluster.

Traces (docs/hybrid.md has the formats):
- inference, CSV `arrival_s,gpu_s`: a request arriving at `arrival_s` that needs `gpu_s`
  GPU-seconds on one server at full power;
- jobs, CSV `arrival_s,gpus,gpu_hours`: a preemptible flexible job (batch inference, fine-tuning,
  training) that needs `gpus` servers at once for `gpu_hours` GPU-hours of work at full power.
Without files, seeded traces are generated: diurnal inference with bursts, and a Lyra-like job
mix (mostly small jobs, a heavy tail of long ones).

Power and speed: a server capped to a fraction f of its rating runs at `speed(f) = f ** 0.3` of
full speed (inference and fine-tuning are largely memory-bound: at 75 % of the power they keep
about 92 % of their throughput). A job preempted when its servers are reclaimed resumes from its
last checkpoint: with a checkpoint every 10 minutes it loses 5 minutes of work on average, plus
2 minutes to restore, so each preemption adds CHECKPOINT_COST_S of run time to the job.
"""

from __future__ import annotations

import csv
import heapq
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

SPEED_EXPONENT = 0.3
CHECKPOINT_COST_S = 420.0


def speed(fraction_of_rated: float) -> float:
    return float(max(fraction_of_rated, 1e-3) ** SPEED_EXPONENT)


# -- traces ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class InferenceTrace:
    arrival_s: FloatArray  # sorted
    gpu_s: FloatArray


@dataclass(frozen=True)
class JobsTrace:
    arrival_s: FloatArray  # sorted
    gpus: npt.NDArray[np.int64]
    gpu_hours: FloatArray


def read_inference(path: Path) -> InferenceTrace:
    rows = _rows(path, ("arrival_s", "gpu_s"))
    order = np.argsort(rows[:, 0], kind="stable")
    return InferenceTrace(rows[order, 0], rows[order, 1])


def read_jobs(path: Path) -> JobsTrace:
    rows = _rows(path, ("arrival_s", "gpus", "gpu_hours"))
    order = np.argsort(rows[:, 0], kind="stable")
    return JobsTrace(rows[order, 0], rows[order, 1].astype(np.int64), rows[order, 2])


def _rows(path: Path, columns: tuple[str, ...]) -> FloatArray:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or any(c not in reader.fieldnames for c in columns):
            raise SystemExit(f"{path}: a CSV with the columns {','.join(columns)} is expected")
        values = [[float(row[c]) for c in columns] for row in reader]
    rows = np.array(values, dtype=np.float64).reshape(-1, len(columns))
    if (rows < 0).any():
        raise SystemExit(f"{path}: negative values")
    return rows


def diurnal_load(t_s: FloatArray, mean_busy: float, rng: np.random.Generator, days: float
                 ) -> FloatArray:  # fmt: skip
    """Servers busy on average at each second: a daily swing (low at 04:00, high at 16:00
    site time) with three bursts a day of 20-45 minutes at 1.4-1.8x."""
    hour = (t_s / 3600.0) % 24
    load = mean_busy * (1.0 + 0.45 * np.sin(2 * np.pi * (hour - 10.0) / 24.0))
    for day in range(int(np.ceil(days))):
        for _ in range(3):
            start = (day + rng.uniform(0.25, 0.95)) * 86400.0
            length = rng.uniform(1200.0, 2700.0)
            factor = rng.uniform(1.4, 1.8)
            ramp = np.clip((t_s - start) / 120.0, 0.0, 1.0) * np.clip((start + length - t_s)
                                                                    / 120.0, 0.0, 1.0)  # fmt: skip
            load *= 1.0 + (factor - 1.0) * ramp
    return load


def generate_inference(days: float, mean_busy: float, mean_gpu_s: float, seed: int
                       ) -> InferenceTrace:  # fmt: skip
    rng = np.random.default_rng(seed)
    t = np.arange(0.0, days * 86400.0)
    rate = diurnal_load(t, mean_busy, rng, days) / mean_gpu_s  # requests per second
    counts = rng.poisson(rate)
    arrivals = np.repeat(t, counts) + rng.random(int(counts.sum()))
    arrivals.sort()
    sigma = 0.8  # lognormal spread of request sizes (long generations are the tail)
    work = rng.lognormal(np.log(mean_gpu_s) - sigma**2 / 2, sigma, len(arrivals))
    return InferenceTrace(arrivals, work)


def generate_jobs(days: float, mean_gpus_busy: float, seed: int) -> JobsTrace:
    """Lyra-like: 1-16 server jobs, most small; run times lognormal around 1.5 h, heavy-tailed."""
    rng = np.random.default_rng(seed + 1)
    sizes = np.array([1, 2, 4, 8, 16])
    weights = np.array([0.35, 0.25, 0.2, 0.15, 0.05])
    mean_hours, sigma = 1.5, 1.0
    mean_job_gpu_hours = float((sizes * weights).sum()) * mean_hours
    rate_per_s = mean_gpus_busy / (mean_job_gpu_hours * 3600.0)
    n = rng.poisson(rate_per_s * days * 86400.0)
    arrivals = np.sort(rng.uniform(0.0, days * 86400.0, n))
    gpus = rng.choice(sizes, n, p=weights)
    hours = rng.lognormal(np.log(mean_hours) - sigma**2 / 2, sigma, n)
    return JobsTrace(arrivals, gpus.astype(np.int64), gpus * hours)


# -- the inference queue ---------------------------------------------------------------------
class InferenceQueue:
    """First come, first served on the serving servers, event by event. The number serving
    may change at each control step; a server taken away finishes its request first."""

    def __init__(self, trace: InferenceTrace) -> None:
        self._arrival = trace.arrival_s.tolist()
        self._work = trace.gpu_s.tolist()
        self.wait_s = np.full(len(self._arrival), np.nan)
        self._busy: list[float] = []  # finish times
        self._queue: deque[int] = deque()
        self._next = 0
        self.busy_gpu_s = 0.0

    def advance(
        self, t0: float, t1: float, servers: int, speed_now: float
    ) -> tuple[int, int, float]:
        """Run from t0 to t1 with `servers` serving; returns (running, waiting, mean queue time
        of the requests started in the step)."""
        arrival, work, wait = self._arrival, self._work, self.wait_s
        busy, queue = self._busy, self._queue
        started, waited = 0, 0.0
        while queue and len(busy) < servers:
            i = queue.popleft()
            wait[i] = t0 - arrival[i]
            waited += t0 - arrival[i]
            started += 1
            heapq.heappush(busy, t0 + work[i] / speed_now)
        n = len(arrival)
        while True:
            ta = arrival[self._next] if self._next < n else np.inf
            tf = busy[0] if busy else np.inf
            if tf <= ta:
                if tf >= t1:
                    break
                heapq.heappop(busy)
                if queue and len(busy) < servers:
                    i = queue.popleft()
                    wait[i] = tf - arrival[i]
                    waited += tf - arrival[i]
                    started += 1
                    heapq.heappush(busy, tf + work[i] / speed_now)
            else:
                if ta >= t1:
                    break
                i = self._next
                self._next += 1
                if len(busy) < servers and not queue:
                    wait[i] = 0.0
                    started += 1
                    heapq.heappush(busy, ta + work[i] / speed_now)
                else:
                    queue.append(i)
        self.busy_gpu_s += len(busy) * (t1 - t0)  # servers busy at the step's end, for the step
        return len(busy), len(queue), (waited / started if started else 0.0)

    def busy_now(self) -> int:
        return len(self._busy)


# -- the flexible-job cluster ----------------------------------------------------------------
class JobCluster:
    """Preemptible gang-scheduled jobs on the servers lent to them, first come first served with
    backfill (a job that does not fit lets smaller ones behind it start). When servers are taken
    back, the jobs started last are preempted first and pay the checkpoint cost."""

    def __init__(self, trace: JobsTrace) -> None:
        self._arrival = trace.arrival_s
        self._gpus = trace.gpus
        self._left_gpu_s = trace.gpu_hours * 3600.0
        self.done_at = np.full(len(trace.arrival_s), np.nan)
        self.first_start = np.full(len(trace.arrival_s), np.nan)  # Lyra's queuing time ends
        self._next = 0
        self._queue: list[int] = []
        self._running: list[int] = []  # in start order
        self.preemptions = 0
        self.busy_gpu_s = 0.0

    def step(self, t0: float, t1: float, servers: int, speed_now: float) -> int:
        """Run from t0 to t1 on `servers`; returns the servers the jobs kept busy."""
        while self._next < len(self._arrival) and self._arrival[self._next] < t1:
            self._queue.append(self._next)
            self._next += 1
        used = sum(int(self._gpus[j]) for j in self._running)
        while used > servers and self._running:
            j = self._running.pop()
            used -= int(self._gpus[j])
            self._left_gpu_s[j] += CHECKPOINT_COST_S * self._gpus[j]
            self._queue.insert(0, j)
            self.preemptions += 1
        kept: list[int] = []
        for j in self._queue:
            if self._arrival[j] < t1 and used + self._gpus[j] <= servers:
                self._running.append(j)
                used += int(self._gpus[j])
                if np.isnan(self.first_start[j]):
                    self.first_start[j] = max(t0, float(self._arrival[j]))
            else:
                kept.append(j)
        self._queue = kept
        still: list[int] = []
        for j in self._running:
            start = max(t0, float(self._arrival[j]))
            rate = self._gpus[j] * speed_now
            need_s = self._left_gpu_s[j] / rate
            if start + need_s <= t1:
                self.done_at[j] = start + need_s
                self._left_gpu_s[j] = 0.0
                self.busy_gpu_s += self._gpus[j] * need_s
            else:
                self._left_gpu_s[j] -= rate * (t1 - start)
                self.busy_gpu_s += self._gpus[j] * (t1 - start)
                still.append(j)
        self._running = still
        return used

    def finished(self, end_s: float) -> tuple[FloatArray, FloatArray, int]:
        """Of the jobs that arrived before `end_s`: the queuing time (arrival to first start)
        and completion time of those that finished, and how many did not (reported apart,
        never counted as finished)."""
        arrived = self._arrival < end_s
        done = arrived & ~np.isnan(self.done_at)
        queued = self.first_start[done] - self._arrival[done]
        return queued, (self.done_at - self._arrival)[done], int((arrived & ~done).sum())

"""GPU power caps through NVML (nvidia-ml-py, imported as `pynvml`), for `gridflex node`.

A node's setpoint is the power of all its GPUs together; each GPU gets an equal share, clamped
to the board's own range (nvmlDeviceGetPowerManagementLimitConstraints, milliwatts), set with
nvmlDeviceSetPowerManagementLimit (not the `_v2` wrapper, which swallows errors), then read back
with nvmlDeviceGetEnforcedPowerLimit: the enforced limit, not our request, is what we report.
NVML errors are translated here: a refusal (no root, unsupported board) is DeviceRejectedError;
a lost GPU or a missing driver is DeviceUnavailableError.

When even the lowest caps exceed the setpoint (or the node is commanded off), a cap is not enough:
`GpuNode` then runs the configured pause command (e.g. drain the inference server), and the
resume command once the setpoint again covers the GPUs' minimum.
"""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pynvml

from agent.errors import DeviceRejectedError, DeviceUnavailableError

__all__ = ["GpuNode", "NodeState", "NvmlGpus"]

_UNAVAILABLE = (
    pynvml.NVMLError_GpuIsLost,
    pynvml.NVMLError_DriverNotLoaded,
    pynvml.NVMLError_LibraryNotFound,
    pynvml.NVMLError_Uninitialized,
)


@contextmanager
def _translated(device_id: str, what: str) -> Iterator[None]:
    try:
        yield
    except _UNAVAILABLE as exc:
        raise DeviceUnavailableError(device_id, f"{what}: {exc}") from exc
    except pynvml.NVMLError as exc:  # NoPermission, NotSupported, InvalidArgument, ...
        raise DeviceRejectedError(device_id, f"{what}: {exc}") from exc


class NvmlGpus:
    """All GPUs of this server. Blocking calls (NVML is a C library); run them in a thread."""

    def __init__(self, device_id: str) -> None:
        self._device_id = device_id
        with _translated(device_id, "nvmlInit"):
            pynvml.nvmlInit()
            self._handles = [
                pynvml.nvmlDeviceGetHandleByIndex(index)
                for index in range(pynvml.nvmlDeviceGetCount())
            ]

    @property
    def count(self) -> int:
        return len(self._handles)

    def limits_range_w(self) -> tuple[float, float]:
        """(sum of minimum caps, sum of maximum caps) in watts."""
        low = high = 0.0
        for index, handle in enumerate(self._handles):
            with _translated(self._device_id, f"GPU {index} constraints"):
                min_mw, max_mw = pynvml.nvmlDeviceGetPowerManagementLimitConstraints(handle)
            low, high = low + min_mw / 1000.0, high + max_mw / 1000.0
        return low, high

    def set_total_limit_w(self, total_w: float) -> float:
        """Cap every GPU at an equal share of `total_w` within its range; the enforced total (W)."""
        share_mw = total_w * 1000.0 / max(1, len(self._handles))
        enforced_mw = 0
        for index, handle in enumerate(self._handles):
            with _translated(self._device_id, f"GPU {index} power limit"):
                min_mw, max_mw = pynvml.nvmlDeviceGetPowerManagementLimitConstraints(handle)
                limit_mw = int(min(max(share_mw, min_mw), max_mw))
                pynvml.nvmlDeviceSetPowerManagementLimit(handle, limit_mw)
                enforced_mw += int(pynvml.nvmlDeviceGetEnforcedPowerLimit(handle))
        return enforced_mw / 1000.0

    def power_w(self) -> float:
        total_mw = 0
        for index, handle in enumerate(self._handles):
            with _translated(self._device_id, f"GPU {index} power usage"):
                total_mw += int(pynvml.nvmlDeviceGetPowerUsage(handle))
        return total_mw / 1000.0

    def close(self) -> None:
        with _translated(self._device_id, "nvmlShutdown"):
            pynvml.nvmlShutdown()


@dataclass(frozen=True, slots=True)
class NodeState:
    on: bool
    kw: float
    power_kw: float
    enforced_limit_kw: float
    jobs_paused: bool
    error: str | None = None

    def as_json(self) -> dict[str, object]:
        return {
            "on": self.on,
            "kw": self.kw,
            "power_kw": self.power_kw,
            "enforced_limit_kw": self.enforced_limit_kw,
            "jobs_paused": self.jobs_paused,
            "error": self.error,
        }


class GpuNode:
    """Applies a node setpoint: caps first, the pause command when caps cannot go low enough."""

    def __init__(
        self,
        device_id: str,
        gpus: NvmlGpus,
        *,
        pause_command: str | None = None,
        resume_command: str | None = None,
    ) -> None:
        self._device_id = device_id
        self._gpus = gpus
        self._pause = shlex.split(pause_command) if pause_command else None
        self._resume = shlex.split(resume_command) if resume_command else None
        self.jobs_paused = False

    async def apply(self, on: bool, kw: float) -> NodeState:
        low_w, high_w = await asyncio.to_thread(self._gpus.limits_range_w)
        wanted_w = kw * 1000.0 if on else 0.0
        enforced_w = await asyncio.to_thread(self._gpus.set_total_limit_w, min(wanted_w, high_w))
        cap_is_enough = wanted_w >= low_w
        if not cap_is_enough and not self.jobs_paused and self._pause:
            await self._run(self._pause)
            self.jobs_paused = True
        elif cap_is_enough and self.jobs_paused and self._resume:
            await self._run(self._resume)
            self.jobs_paused = False
        power_w = await asyncio.to_thread(self._gpus.power_w)
        return NodeState(on, kw, power_w / 1000.0, enforced_w / 1000.0, self.jobs_paused)

    async def _run(self, argv: list[str]) -> None:
        process = await asyncio.create_subprocess_exec(*argv)
        if await process.wait() != 0:
            raise DeviceRejectedError(self._device_id, f"{argv[0]} exited {process.returncode}")

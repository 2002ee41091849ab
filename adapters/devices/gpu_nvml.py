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
import logging
import re
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pynvml

from agent.errors import DeviceRejectedError, DeviceUnavailableError

__all__ = ["GpuNode", "NodeState", "NvmlGpus"]

_log = logging.getLogger("gridflex.node")
# "Instantaneous power reading:   512 Watts" (ipmitool dcmi power reading), "512 W", "512.5W"
_WATTS = re.compile(r"(\d+(?:\.\d+)?)\s*(?:Watts|W)\b")

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
    """`power_kw` is the whole server's: measured (`server_power_command`) where the server can
    say, else the GPUs' board power plus the declared overhead (CPUs, fans, NICs, PSU losses)."""

    on: bool
    kw: float
    power_kw: float
    enforced_limit_kw: float
    jobs_paused: bool
    error: str | None = None
    gpu_power_kw: float | None = None
    power_source: str = "gpu"

    def as_json(self) -> dict[str, object]:
        return {
            "on": self.on,
            "kw": self.kw,
            "power_kw": self.power_kw,
            "gpu_power_kw": self.gpu_power_kw,
            "power_source": self.power_source,
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
        overhead_kw: float = 0.0,
        server_power_command: str | None = None,
    ) -> None:
        self._device_id = device_id
        self._gpus = gpus
        self._pause = shlex.split(pause_command) if pause_command else None
        self._resume = shlex.split(resume_command) if resume_command else None
        self._overhead_w = overhead_kw * 1000.0
        self._server_power = shlex.split(server_power_command) if server_power_command else None
        self._server_power_failing = False
        self.jobs_paused = False

    async def apply(self, on: bool, kw: float) -> NodeState:
        """`kw` is for the whole server: the GPUs get what the overhead leaves of it."""
        low_w, high_w = await asyncio.to_thread(self._gpus.limits_range_w)
        wanted_w = max(0.0, kw * 1000.0 - self._overhead_w) if on else 0.0
        enforced_w = await asyncio.to_thread(self._gpus.set_total_limit_w, min(wanted_w, high_w))
        cap_is_enough = wanted_w >= low_w
        if not cap_is_enough and not self.jobs_paused and self._pause:
            await self._run(self._pause)
            self.jobs_paused = True
        elif cap_is_enough and self.jobs_paused and self._resume:
            await self._run(self._resume)
            self.jobs_paused = False
        gpu_w = await asyncio.to_thread(self._gpus.power_w)
        server_w = await self._measured_server_w()
        if server_w is None:
            server_w, source = gpu_w + self._overhead_w, "gpu+declared overhead"
        else:
            source = "server"
        return NodeState(on, kw, server_w / 1000.0, enforced_w / 1000.0, self.jobs_paused,
                         gpu_power_kw=gpu_w / 1000.0, power_source=source)  # fmt: skip

    async def _measured_server_w(self) -> float | None:
        """The server's own power reading (DCMI through ipmitool, a Redfish client, the
        server's PDU outlet: any command printing "<number> W" or "<number> Watts")."""
        if self._server_power is None:
            return None
        try:
            process = await asyncio.create_subprocess_exec(
                *self._server_power, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            out, _ = await asyncio.wait_for(process.communicate(), timeout=5.0)
            match = _WATTS.search(out.decode(errors="replace"))
            if process.returncode != 0 or match is None:
                raise ValueError(f"no power reading in {out[:80]!r}")
            watts = float(match.group(1))
        except (OSError, TimeoutError, ValueError) as exc:
            if not self._server_power_failing:
                _log.warning("server power reading failed (%s); reporting GPUs + overhead", exc)
            self._server_power_failing = True
            return None
        self._server_power_failing = False
        return watts

    async def _run(self, argv: list[str]) -> None:
        process = await asyncio.create_subprocess_exec(*argv)
        if await process.wait() != 0:
            raise DeviceRejectedError(self._device_id, f"{argv[0]} exited {process.returncode}")

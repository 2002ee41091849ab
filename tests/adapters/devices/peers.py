"""Peers of the device tests that other tests reuse: an MQTT device that echoes its state, and
NVML replaced at the library-function boundary (no GPU exists on these machines)."""

from __future__ import annotations

import asyncio
import json
import time

import pynvml
import pytest

from adapters.transport.mqtt_session import MqttSession

__all__ = ["FakeNvml", "echoing_device"]


async def echoing_device(
    session: MqttSession, command_topic: str, state_topic: str, *, power_lag_s: float = 0.0
) -> None:
    """A device that applies absolute setpoints and echoes its state (as firmware would). Its
    power follows `power_lag_s` later (a compressor or a fan winding down): the echo at once says
    the new setpoint with the old power, a second state the settled power."""

    pending: set[asyncio.Task[None]] = set()  # the loop holds tasks weakly: keep them alive
    power_kw = [0.0]

    async def report(on: bool, kw: float) -> None:
        target_kw = kw if on else 0.0
        if power_lag_s > 0:
            await session.publish(state_topic, json.dumps({"on": on, "kw": kw,
                                                           "power_kw": power_kw[0]}))  # fmt: skip
            await asyncio.sleep(power_lag_s)
        power_kw[0] = target_kw
        await session.publish(state_topic, json.dumps({"on": on, "kw": kw, "power_kw": target_kw}))

    def on_command(_topic: str, payload: bytes) -> None:
        data = json.loads(payload)
        task = asyncio.get_running_loop().create_task(report(data["on"], data["kw"]))
        pending.add(task)
        task.add_done_callback(pending.discard)

    session.subscribe(command_topic, on_command)
    await session.subscriptions_settled()  # a command sent sooner could pass us by


class FakeNvml:
    """Two 700 W boards that accept caps in [200, 700] W, as an H100 SXM reports. A new cap takes
    `power_lag_s` to show in the board power (the driver's clocks and the workload adjust)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, power_lag_s: float = 0.0) -> None:
        self.limits_mw = [700_000, 700_000]
        self.power_lag_s = power_lag_s
        self._before_mw = list(self.limits_mw)
        self._set_at = [0.0, 0.0]
        self.refuse_with: type[pynvml.NVMLError] | None = None
        self.set_calls: list[tuple[int, int]] = []
        for name in (
            "nvmlInit",
            "nvmlShutdown",
            "nvmlDeviceGetCount",
            "nvmlDeviceGetHandleByIndex",
            "nvmlDeviceGetPowerManagementLimitConstraints",
            "nvmlDeviceSetPowerManagementLimit",
            "nvmlDeviceGetEnforcedPowerLimit",
            "nvmlDeviceGetPowerUsage",
        ):
            monkeypatch.setattr(pynvml, name, getattr(self, name))

    def nvmlInit(self) -> None:  # noqa: N802 - NVML names
        pass

    def nvmlShutdown(self) -> None:  # noqa: N802 - NVML names
        pass

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802 - NVML names
        return 2

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:  # noqa: N802 - NVML names
        return index

    def nvmlDeviceGetPowerManagementLimitConstraints(self, handle: int) -> list[int]:  # noqa: N802 - NVML names
        return [200_000, 700_000]

    def nvmlDeviceSetPowerManagementLimit(self, handle: int, limit_mw: int) -> None:  # noqa: N802 - NVML names
        if self.refuse_with is not None:
            raise self.refuse_with()  # as pynvml builds its error classes: no argument
        self.set_calls.append((handle, limit_mw))
        if limit_mw != self.limits_mw[handle]:  # the same cap again changes nothing
            self._before_mw[handle] = self._drawn_cap_mw(handle)
            self._set_at[handle] = time.monotonic()
        self.limits_mw[handle] = limit_mw

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: int) -> int:  # noqa: N802 - NVML names
        return self.limits_mw[handle]

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:  # noqa: N802 - NVML names
        return int(self._drawn_cap_mw(handle) * 0.9)  # a loaded GPU runs just under its cap

    def _drawn_cap_mw(self, handle: int) -> int:
        settled = time.monotonic() - self._set_at[handle] >= self.power_lag_s
        return self.limits_mw[handle] if settled else self._before_mw[handle]

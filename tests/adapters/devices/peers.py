"""Peers of the device tests that other tests reuse: an MQTT device that echoes its state, and
NVML replaced at the library-function boundary (no GPU exists on these machines)."""

from __future__ import annotations

import asyncio
import json

import pynvml
import pytest

from adapters.transport.mqtt_session import MqttSession

__all__ = ["FakeNvml", "echoing_device"]


async def echoing_device(session: MqttSession, command_topic: str, state_topic: str) -> None:
    """A device that applies absolute setpoints and echoes its state (as firmware would)."""

    pending: set[asyncio.Task[None]] = set()  # the loop holds tasks weakly: keep them alive

    def on_command(_topic: str, payload: bytes) -> None:
        data = json.loads(payload)
        state = {"on": data["on"], "kw": data["kw"], "power_kw": data["kw"] if data["on"] else 0.0}
        task = asyncio.get_running_loop().create_task(
            session.publish(state_topic, json.dumps(state))
        )
        pending.add(task)
        task.add_done_callback(pending.discard)

    session.subscribe(command_topic, on_command)
    await session.subscriptions_settled()  # a command sent sooner could pass us by


class FakeNvml:
    """Two 700 W boards that accept caps in [200, 700] W, as an H100 SXM reports."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.limits_mw = [700_000, 700_000]
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
            raise self.refuse_with(0)
        self.set_calls.append((handle, limit_mw))
        self.limits_mw[handle] = limit_mw

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: int) -> int:  # noqa: N802 - NVML names
        return self.limits_mw[handle]

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:  # noqa: N802 - NVML names
        return int(self.limits_mw[handle] * 0.9)  # a loaded GPU runs just under its cap

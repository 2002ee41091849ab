"""Devices behind MQTT: an absolute setpoint goes out as JSON (QoS 1), the device echoes its state.

Never a delta: QoS 1 may deliver a command twice, and "set 40 kW" twice is still 40 kW.
The command counts as applied when the device's state echo matches it within `echo_timeout_s`.
Silence before the first command is no fault (many devices speak only when spoken to): the
reading is then unknown, so the service commands the device and learns. A command left without
an echo makes the device unavailable until it speaks again without reporting an error.

Wire format (also what `gridflex node` speaks):
  command topic  {"on": true, "kw": 40.0, "percent": 100.0}
  state topic    {"on": true, "kw": 40.0, "power_kw": 38.7}   (kw: the setpoint in force)
With the driver's `hmac_key` both carry issued_at, message_id and signature, and a state that is
unsigned, forged, stale or replayed is dropped (adapters.devices.node_protocol).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Callable
from datetime import datetime
from typing import Any

from adapters.devices.node_protocol import Freshness, node_topics, stamp
from adapters.transport.mqtt_session import MqttError, MqttSession
from agent.config.drivers import GpuNodeDriverConfig, MqttDriverConfig
from agent.errors import DeviceRejectedError, DeviceTimeoutError, DeviceUnavailableError
from agent.ports import Capability, DeviceCommand, DeviceReading, utc_now

__all__ = ["MqttDriver", "command_payload", "echo_matches", "node_topics"]

_log = logging.getLogger("gridflex.devices")

_KW_TOLERANCE = 0.01  # devices round setpoints (a GPU limit is whole watts per board)


def command_payload(command: DeviceCommand) -> dict[str, Any]:
    return {"on": command.on, "kw": command.kw, "percent": command.percent}


def _finite_number(value: Any) -> bool:
    """A JSON number that means one (true/false and NaN/Infinity do not)."""
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)


def echo_matches(command: DeviceCommand, state: dict[str, Any]) -> bool:
    """Whether a device's echoed state says it took the command ("on" must be a JSON bool and
    "kw" a finite number: anything else is no echo of ours)."""
    if state.get("on") is not command.on:
        return False
    if not command.on or "kw" not in state:
        return True
    kw = state["kw"]
    if not _finite_number(kw):
        return False
    return abs(float(kw) - command.kw) <= max(_KW_TOLERANCE, command.kw * _KW_TOLERANCE)


class MqttDriver:
    def __init__(
        self,
        device_id: str,
        config: MqttDriverConfig | GpuNodeDriverConfig,
        session: MqttSession,
        *,
        clock: Callable[[], datetime] = utc_now,
        prefix: str = "gridflex",
    ) -> None:
        if isinstance(config, GpuNodeDriverConfig):
            self._command_topic, self._state_topic = node_topics(prefix, config.node_id)
        else:
            self._command_topic, self._state_topic = config.command_topic, config.state_topic
        self._device_id = device_id
        self._echo_timeout_s = config.echo_timeout_s
        self._settle_s = config.settle_s
        self._session = session
        self._clock = clock
        self._state: dict[str, Any] | None = None
        self._observed_at: datetime | None = None
        self._changed = asyncio.Event()
        self._unanswered: str | None = None  # why the last command got no matching echo
        key = config.hmac_key
        self._key = None if key is None else key.get_secret_value().encode()
        self._freshness = None if self._key is None else Freshness(self._key, self._state_topic)
        self.refused_states = 0  # states dropped: unsigned, forged, stale or replayed
        self._refusing: str | None = None
        session.subscribe(self._state_topic, self._on_state)

    @property
    def device_id(self) -> str:
        return self._device_id

    @property
    def settle_s(self) -> float:
        return self._settle_s

    @property
    def capabilities(self) -> frozenset[Capability]:
        return frozenset({Capability.ON_OFF, Capability.POWER_LIMIT, Capability.POWER_READING})

    async def apply(self, command: DeviceCommand) -> None:
        try:
            # the echo comes on our state topic: the broker must route it to us first
            await self._session.subscriptions_settled()
            payload = stamp(command_payload(command), self._key, self._clock(),
                            self._command_topic)  # fmt: skip
            await self._session.publish(self._command_topic, payload, qos=1)
        except MqttError as exc:
            raise DeviceUnavailableError(self._device_id, str(exc)) from exc
        try:
            async with asyncio.timeout(self._echo_timeout_s):
                while self._state is None or not echo_matches(command, self._state):
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError as exc:
            self._unanswered = (
                f"no matching state on {self._state_topic} within {self._echo_timeout_s} s "
                f"(last: {self._state})"
            )
            raise DeviceTimeoutError(self._device_id, self._unanswered) from exc

    async def read(self) -> DeviceReading:
        if self._unanswered is not None:
            raise DeviceUnavailableError(self._device_id, self._unanswered)
        if self._state is None or self._observed_at is None:
            return DeviceReading(self._device_id, self._clock())  # not heard from yet: unknown
        power = self._state.get("power_kw")
        if power is not None and not _finite_number(power):
            raise DeviceRejectedError(
                self._device_id, f"state power_kw {str(power)[:40]!r} is not a finite number"
            )
        on = self._state.get("on")
        return DeviceReading(
            self._device_id,
            self._observed_at,
            power_kw=None if power is None else float(power),
            running=on if isinstance(on, bool) else None,  # "false" is not a state
        )

    def _on_state(self, _topic: str, payload: bytes) -> None:
        try:
            state = json.loads(payload)
        except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
            self.refused_states += 1
            return  # not ours to crash on; the echo wait times out and says what it last saw
        if isinstance(state, dict) and self._freshness is not None:
            refused = self._freshness.refuse(state, self._clock())
            if refused is not None:
                self.refused_states += 1
                if refused != self._refusing:  # once per reason, not per message
                    _log.warning("%s: state on %s refused: %s", self._device_id,
                                 self._state_topic, refused)  # fmt: skip
                self._refusing = refused
                return
            self._refusing = None
        if isinstance(state, dict):
            self._state, self._observed_at = state, self._clock()
            if not state.get("error"):  # `gridflex node` reports a refusal as state
                self._unanswered = None
            self._changed.set()

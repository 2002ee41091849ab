"""ASIC miners through their firmware API: the CGMiner-style JSON API on TCP 4028 (LuxOS dialect).

Choice: a direct client, not pyasic-rs. We evaluated pyasic-rs 0.8.6 (the asic-rs bindings that
replace the deprecated pyasic; `MinerFactory().get_miner(ip)`, `pause()`, `resume()`,
`set_power_limit(watts)`) from its wheel and type stubs:
  - `get_miner(ip)` takes an address only: firmware identification probes fixed ports (web UI and
    RPC) before any command, so every cold start costs several round trips per miner, and a
    site cannot put a miner behind a NAT'd or non-standard port;
  - control calls return a bare bool ("the firmware said OK"); failures surface as untyped
    exceptions from a 20 MB native (Rust/PyO3) extension, so timeouts, refusals and firmware
    errors cannot be told apart at our edge, and per-request deadlines are factory-wide whole
    seconds (`with_connectivity_timeout_secs(int)`);
  - its value is breadth (dozens of makes and firmwares); a curtailment site standardises on one
    or two firmwares and needs exactly three verbs: sleep, wake, power target, plus power.
The CGMiner API is one JSON object per TCP connection, answered by one JSON object ended by NUL;
LuxOS adds `logon`/`session` for a session id that write commands take as first parameter
(docs.luxor.tech/firmware/api): `curtail <sid>,sleep|wakeup` to stop and start hashing, and
`powertargetset <sid>,power=<W>` for a power limit, which the firmware's autotuner meets without
a restart. `profileset` is never sent: Luxor documents that a profile change re-ramps the boards
like a reboot, so it is a site engineer's choice, not a curtailment's. Power is read with the
documented `power` command (no session needed for reads). That is ~100 lines we can type, time
out per request, translate into our errors, and test against fake miners speaking the same bytes.

Miners are known to answer "OK" to sleep and keep hashing, so the reply proves nothing: the
service reads power afterwards and calls `drifted()` to decide whether to re-apply.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

from agent.config.drivers import MinerDriverConfig
from agent.errors import (
    DeviceRejectedError,
    DeviceTimeoutError,
    DeviceUnavailableError,
)
from agent.ports import Capability, DeviceCommand, DeviceReading, utc_now

__all__ = [
    "MinerBase",
    "MinerDriver",
    "cgminer_call",
    "drifted",
]

_MAX_REPLY_BYTES = 1 << 20
# STATUS letters of the CGMiner API: S success, I info, W warning, E error, F fatal
_OK_STATUS = frozenset({"S", "I"})


async def cgminer_call(
    device_id: str,
    host: str,
    port: int,
    command: str,
    parameter: str | None = None,
    *,
    timeout_s: float,
) -> dict[str, Any]:
    """One CGMiner-API request; library and socket errors become DeviceError subclasses."""
    request: dict[str, str] = {"command": command}
    if parameter is not None:
        request["parameter"] = parameter
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(json.dumps(request).encode())
                await writer.drain()
                raw = await reader.read(_MAX_REPLY_BYTES)
            finally:
                writer.close()
                await writer.wait_closed()
    except TimeoutError as exc:
        raise DeviceTimeoutError(device_id, f"{command}: no answer within {timeout_s} s") from exc
    except OSError as exc:
        raise DeviceUnavailableError(device_id, f"{host}:{port}: {exc}") from exc
    try:
        reply = json.loads(raw.rstrip(b"\x00").decode())
        status = reply["STATUS"][0]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise DeviceRejectedError(device_id, f"{command}: unreadable reply {raw[:80]!r}") from exc
    if status.get("STATUS") not in _OK_STATUS:
        raise DeviceRejectedError(device_id, f"{command}: {status.get('Msg', 'error')}")
    return dict(reply)


class MinerBase:
    """What every miner driver shares: its id, its config, the three verbs it offers."""

    def __init__(
        self,
        device_id: str,
        config: MinerDriverConfig,
        *,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._device_id = device_id
        self._config = config
        self._clock = clock

    @property
    def device_id(self) -> str:
        return self._device_id

    @property
    def capabilities(self) -> frozenset[Capability]:
        return frozenset({Capability.ON_OFF, Capability.POWER_LIMIT, Capability.POWER_READING})

    @property
    def settle_s(self) -> float:
        return self._config.settle_s


class MinerDriver(MinerBase):
    """A LuxOS miner: `curtail` sleeps/wakes it, `powertargetset` caps it, `power` reads it."""

    _session_id: str | None = None

    async def apply(self, command: DeviceCommand) -> None:
        session = await self._session()
        if not command.on:
            await self._call("curtail", f"{session},sleep")
            return
        if command.kw > 0:
            await self._call("powertargetset", f"{session},power={round(command.kw * 1000)}")
        await self._call("curtail", f"{session},wakeup")

    async def read(self) -> DeviceReading:
        reply = await self._call("power")
        try:
            watts = float(reply["POWER"][0]["Watts"])
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise DeviceRejectedError(self._device_id, f"power: unexpected reply {reply}") from exc
        return DeviceReading(
            self._device_id, self._clock(), power_kw=watts / 1000.0, running=watts > 0
        )

    async def _session(self) -> str:
        """LuxOS allows one session; reuse the open one, or log on."""
        if self._session_id is None:
            current = (await self._call("session")).get("SESSION", [{}])[0].get("SessionID", "")
            if not current:
                current = (await self._call("logon"))["SESSION"][0]["SessionID"]
            self._session_id = str(current)
        return self._session_id

    async def _call(self, command: str, parameter: str | None = None) -> dict[str, Any]:
        config = self._config
        try:
            return await cgminer_call(
                self._device_id,
                config.host,
                config.api_port,
                command,
                parameter,
                timeout_s=config.timeout_s,
            )
        except DeviceRejectedError:
            self._session_id = None  # an expired session is the usual cause; log on again next
            raise


# --- holding a curtailment ---------------------------------------------------------------------


def drifted(
    command: DeviceCommand,
    reading: DeviceReading,
    *,
    off_max_kw: float = 0.1,
    tolerance: float = 0.05,
) -> bool:
    """True when a miner no longer does what it was told: re-apply the command.

    Commanded off but drawing more than idle, or capped but drawing above the cap (firmware that
    reboots, or auto-tuning that forgets its target, returns to full power).
    """
    if reading.power_kw is None:
        return False  # nothing measured: availability handles silence, not drift
    if not command.on:
        return reading.power_kw > off_max_kw
    return command.kw > 0 and reading.power_kw > command.kw * (1.0 + tolerance)

"""Simulated LuxOS miners that speak the CGMiner JSON API on the wire (tests, demo).

Each fake listens on its own loopback address (127.0.0.0/8 all routes to lo on Linux), so a test
can stand up hundreds of "miners" on 127.0.x.y at one port, as a real site has them on one subnet.
Quirks seen in the field are options: `lies` (answers OK to sleep and keeps hashing) and
`drift_back()` (firmware reboots and returns to full power).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FakeMiner", "FakeMinerFleet"]


def _status(code: int, msg: str, ok: bool = True) -> list[dict[str, Any]]:
    return [{"STATUS": "S" if ok else "E", "Code": code, "Msg": msg, "Description": "LUXminer sim"}]


@dataclass
class FakeMiner:
    host: str
    port: int
    rated_w: float = 3250.0
    idle_w: float = 0.0
    lies: bool = False
    # a sleeping miner's hashboards and fans wind down over this long (0: at once)
    spin_down_s: float = 0.0
    sleeping: bool = False
    _slept_at: float | None = None
    target_w: float | None = None
    session_id: str = ""
    commands: list[str] = field(default_factory=list)
    ramps: int = 0  # profile changes: each re-ramps the hashboards, as a reboot would
    _server: asyncio.Server | None = None

    @property
    def power_w(self) -> float:
        awake_w = min(self.rated_w, self.target_w) if self.target_w is not None else self.rated_w
        if not self.sleeping or self.lies:
            return awake_w
        if self._slept_at is None or self.spin_down_s <= 0:
            return self.idle_w
        done = min(1.0, (time.monotonic() - self._slept_at) / self.spin_down_s)
        return awake_w + (self.idle_w - awake_w) * done

    def drift_back(self) -> None:
        """What a reboot does on some firmware: awake, default profile, full power."""
        self.sleeping, self.target_w = False, None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            raw = await reader.read(65536)
            reply = self._answer(raw)
            writer.write(json.dumps(reply).encode() + b"\x00")
            await writer.drain()
        finally:
            writer.close()

    def _answer(self, raw: bytes) -> dict[str, Any]:
        try:
            request = json.loads(raw)
            command, parameter = request["command"], str(request.get("parameter", ""))
        except (ValueError, KeyError, TypeError):
            return {"STATUS": _status(14, "Invalid command", ok=False), "id": 1}
        self.commands.append(command)
        handler = getattr(self, f"_cmd_{command}", None)
        if handler is None:
            return {"STATUS": _status(14, "Invalid command", ok=False), "id": 1}
        reply: dict[str, Any] = handler(parameter)
        reply["id"] = 1
        return reply

    def _cmd_session(self, _parameter: str) -> dict[str, Any]:
        return {"SESSION": [{"SessionID": self.session_id}], "STATUS": _status(8, "Session")}

    def _cmd_logon(self, _parameter: str) -> dict[str, Any]:
        if self.session_id:
            return {"STATUS": _status(360, "Another session is active", ok=False)}
        self.session_id = secrets.token_hex(4)
        return {"SESSION": [{"SessionID": self.session_id}], "STATUS": _status(7, "Logon")}

    def _authorized(self, parameter: str) -> tuple[bool, list[str]]:
        parts = parameter.split(",")
        return bool(self.session_id) and parts[0] == self.session_id, parts[1:]

    def _cmd_curtail(self, parameter: str) -> dict[str, Any]:
        ok, args = self._authorized(parameter)
        if not ok:
            return {"STATUS": _status(361, "Invalid session id", ok=False)}
        if args[:1] not in (["sleep"], ["wakeup"]):
            return {"STATUS": _status(334, "Invalid curtail action", ok=False)}
        if args[0] == "sleep" and not self.sleeping:
            self._slept_at = time.monotonic()
        self.sleeping = args[0] == "sleep"
        return {
            "CURTAIL": [{"Action": f"{args[0]} mode"}],
            "STATUS": _status(335, "Curtailment command sent"),
        }

    def _cmd_profileset(self, parameter: str) -> dict[str, Any]:
        ok, args = self._authorized(parameter)
        if not ok:
            return {"STATUS": _status(361, "Invalid session id", ok=False)}
        if not args or not args[0].endswith("W") or not args[0][:-1].isdigit():
            return {"STATUS": _status(322, "Invalid profile", ok=False)}
        self.target_w = float(args[0][:-1])
        self.ramps += 1
        return {"PROFILE": [{"Profile": args[0]}], "STATUS": _status(321, "Profile Set")}

    def _cmd_powertargetset(self, parameter: str) -> dict[str, Any]:
        """`powertargetset <sid>,power=<watts>`: the autotuner's target, met without a ramp."""
        ok, args = self._authorized(parameter)
        if not ok:
            return {"STATUS": _status(361, "Invalid session id", ok=False)}
        key, _, watts = (args[0] if args else "").partition("=")
        if key != "power" or not watts.isdigit():
            return {"STATUS": _status(343, "Invalid power target", ok=False)}
        self.target_w = float(watts)
        return {"POWERTARGET": [{"PowerTarget": int(watts)}],
                "STATUS": _status(342, "Power target set")}  # fmt: skip

    def _cmd_power(self, _parameter: str) -> dict[str, Any]:
        return {
            "POWER": [{"Watts": round(self.power_w), "PSU": True}],
            "STATUS": _status(99, "Power"),
        }


class FakeMinerFleet:
    """`count` fake miners on consecutive loopback addresses from `first_host`, one port."""

    def __init__(self, count: int, *, first_host: str, port: int, rated_w: float = 3250.0) -> None:
        first = ipaddress.IPv4Address(first_host)
        self.miners = [FakeMiner(str(first + k), port, rated_w=rated_w) for k in range(count)]

    async def __aenter__(self) -> FakeMinerFleet:
        await asyncio.gather(*(miner.start() for miner in self.miners))
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await asyncio.gather(*(miner.stop() for miner in self.miners))

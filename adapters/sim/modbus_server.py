"""A simulated Modbus TCP site (pymodbus server) whose devices obey their profile.

Each endpoint serves one profile on every unit id; each channel (outlet) draws `rated_w` while its
on/off register holds `on_value`, scaled by a percent setpoint or capped by a W/kW setpoint, and
nothing when off. Options make a channel *stuck* (accepts every write, its power never changes:
the miner that says "OK" and keeps hashing) or *rejecting* (answers writes with a Modbus exception).

Used by the demo, the service's end-to-end tests and bench/fanout.py. Run standalone:
    python -m adapters.sim.modbus_server --devices 1000 --first-host 127.0.1.1 --port 15020
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import sys
import time
from dataclasses import dataclass, field

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from adapters.devices.codec import decode, encode
from adapters.devices.profile import Profile, Register, Table, load_profile

__all__ = ["SimEndpoint", "SimModbusSite", "pdu_site"]

_READ_TABLE = {1: Table.COIL, 2: Table.DISCRETE, 3: Table.HOLDING, 4: Table.INPUT}
_WRITE_TABLE = {5: Table.COIL, 15: Table.COIL, 6: Table.HOLDING, 16: Table.HOLDING}


@dataclass
class SimEndpoint:
    """One simulated Modbus TCP endpoint serving `profile` (same state for every unit id)."""

    host: str
    port: int
    profile: Profile
    rated_w: float = 3250.0
    stuck_channels: frozenset[int] = frozenset()
    rejecting_channels: frozenset[int] = frozenset()
    # Real loads do not follow a command at once: after a write, a channel's power moves from
    # what it drew to its new value linearly over `power_lag_s` (a meter's refresh, a miner
    # spinning down, a tank ramping). 0: at once.
    power_lag_s: float = 0.0
    # engineering value (register unit) of each control register per channel: the device model
    controls: dict[tuple[str, int], float] = field(default_factory=dict)
    # per channel: (monotonic time of the last write, power drawn just before it)
    _moving: dict[int, tuple[float, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.reboot()

    def reboot(self) -> None:
        """What a power cycle of the device does: every relay closed, setpoints at maximum."""
        actions = self.profile.actions
        for channel in range(1, self.profile.channels + 1):
            if actions.on_off is not None:
                self.controls[(actions.on_off.ref, channel)] = float(actions.on_off.on_value)
            if actions.setpoint is not None:
                self.controls[(actions.setpoint.ref, channel)] = actions.setpoint.max_value
        self._moving.clear()

    def is_on(self, channel: int) -> bool:
        on_off = self.profile.actions.on_off
        if on_off is None:
            return True
        return self.controls[(on_off.ref, channel)] == on_off.on_value

    def power_w(self, channel: int) -> float:
        """What the channel draws now: on its way to what its controls ask for."""
        target = self._target_w(channel)
        moving = self._moving.get(channel)
        if moving is None or self.power_lag_s <= 0:
            return target
        since_s = time.monotonic() - moving[0]
        if since_s >= self.power_lag_s:
            return target
        start_w = moving[1]
        return start_w + (target - start_w) * since_s / self.power_lag_s

    def _target_w(self, channel: int) -> float:
        if channel in self.stuck_channels:
            return self.rated_w
        if not self.is_on(channel):
            return 0.0
        setpoint = self.profile.actions.setpoint
        if setpoint is None:
            return self.rated_w
        value = self.controls[(setpoint.ref, channel)]
        if setpoint.unit == "percent":
            return self.rated_w * value / 100.0
        return min(self.rated_w, value if setpoint.unit == "W" else value * 1000.0)

    # --- the pymodbus SimDevice action: runs on every request to this endpoint ---------------

    async def action(  # noqa: PLR0917 - the signature is pymodbus's SimAction
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        if set_values is not None and function_code in _WRITE_TABLE:
            return self._on_write(_WRITE_TABLE[function_code], address, list(set_values))
        table = _READ_TABLE.get(function_code)
        if table is not None and not table.is_bit:
            self._fill_readings(table, start_address, address, count, registers)
        elif table is not None:
            self._fill_bits(table, start_address, registers)
        return None

    def _on_write(
        self, table: Table, address: int, values: list[int] | list[bool]
    ) -> ExcCodes | None:
        for (name, channel), _ in list(self.controls.items()):
            register = self.profile.register(name)
            first = register.address_of(channel)
            if register.table is not table or not address <= first < address + len(values):
                continue
            if channel in self.rejecting_channels:
                return ExcCodes.DEVICE_FAILURE
            words = [int(v) for v in values[first - address : first - address + register.count]]
            if len(words) == register.count:
                drawing_w = self.power_w(channel)
                self.controls[(name, channel)] = decode(register, words)
                self._moving[channel] = (time.monotonic(), drawing_w)
        return None

    def _fill_readings(
        self, table: Table, start_address: int, address: int, count: int, registers: list[int]
    ) -> None:
        for register, channel in self._measured(table, address, count):
            value = self._measured_value(register, channel)
            offset = register.address_of(channel) - start_address
            registers[offset : offset + register.count] = encode(register, value)

    def _fill_bits(self, table: Table, start_register: int, registers: list[int]) -> None:
        # bit tables are packed 16 to a register; start_register is the block's first register
        for register, channel in self._measured(table, 0, 1 << 16):
            bit = register.address_of(channel) - start_register * 16
            index, mask = bit // 16, 1 << (bit % 16)
            on = self._measured_value(register, channel) > 0
            registers[index] = registers[index] | mask if on else registers[index] & ~mask

    def _measured(self, table: Table, address: int, count: int) -> list[tuple[Register, int]]:
        """(register, channel) of the derived readings (power, running) inside a request."""
        readings = self.profile.readings
        names = [r.ref for r in (readings.active_power, readings.state) if r is not None]
        out = []
        for name in names:
            register = self.profile.register(name)
            if register.table is not table or (name, 1) in self.controls:
                continue  # a control register (a relay coil read as state) holds what was written
            for channel in range(1, self.profile.channels + 1):
                first = register.address_of(channel)
                if first + register.count > address and first < address + count:
                    out.append((register, channel))
        return out

    def _measured_value(self, register: Register, channel: int) -> float:
        power = self.profile.readings.active_power
        if power is not None and register is self.profile.register(power.ref):
            return self.power_w(channel) / (1.0 if power.unit == "W" else 1000.0)
        return 1.0 if self.power_w(channel) > 0 else 0.0

    def sim_device(self) -> SimDevice:
        blocks: dict[Table, list[SimData]] = {table: [] for table in Table}
        for table in Table:
            registers = [r for r in self.profile.registers.values() if r.table is table]
            if not registers:
                # pymodbus needs every block; one unused cell keeps the others addressable
                kind = DataType.BITS if table.is_bit else DataType.REGISTERS
                blocks[table].append(
                    SimData(60000, values=[False] if table.is_bit else 0, datatype=kind)
                )
                continue
            low = min(r.address for r in registers)
            high = max(r.address_of(self.profile.channels) + r.count for r in registers)
            if table.is_bit:
                bits = [bool(word) for word in self._initial_words(table, low, high)]
                blocks[table].append(SimData(low, values=bits, datatype=DataType.BITS))
            else:
                blocks[table].append(
                    SimData(
                        low,
                        values=self._initial_words(table, low, high),
                        datatype=DataType.REGISTERS,
                    )
                )
        return SimDevice(
            0,
            simdata=(
                blocks[Table.COIL],
                blocks[Table.DISCRETE],
                blocks[Table.HOLDING],
                blocks[Table.INPUT],
            ),
            action=self.action,
        )

    def _initial_words(self, table: Table, low: int, high: int) -> list[int]:
        words = [0] * (high - low)
        for (name, channel), value in self.controls.items():
            register = self.profile.register(name)
            if register.table is table:
                first = register.address_of(channel) - low
                words[first : first + register.count] = encode(register, value)
        return words


class SimModbusSite:
    """Runs one pymodbus TCP server per endpoint in the current event loop."""

    def __init__(self, endpoints: list[SimEndpoint]) -> None:
        self.endpoints = endpoints
        self._servers: list[ModbusTcpServer] = []

    async def start(self) -> None:
        for endpoint in self.endpoints:
            server = ModbusTcpServer(endpoint.sim_device(), address=(endpoint.host, endpoint.port))
            await server.serve_forever(background=True)
            self._servers.append(server)

    async def stop(self) -> None:
        for server in self._servers:
            await server.shutdown()  # type: ignore[no-untyped-call]
        self._servers.clear()

    async def __aenter__(self) -> SimModbusSite:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()


def pdu_site(
    devices: int,
    *,
    first_host: str = "127.0.1.1",
    port: int = 15020,
    profile: str = "rack_pdu_switched",
    rated_w: float = 3250.0,
    stuck_devices: frozenset[int] = frozenset(),
) -> list[SimEndpoint]:
    """Endpoints for `devices` PDU outlets, filling each PDU's outlets, one PDU per address.

    Device k (0-based) sits on host first_host + k // outlets, outlet k % outlets + 1: the same
    layout as a modbus device group with `channels_per_host` equal to the profile's outlets.
    """
    loaded = load_profile(profile)
    per_host = loaded.channels
    endpoints = []
    for host_index in range((devices + per_host - 1) // per_host):
        stuck = frozenset(
            k - host_index * per_host + 1 for k in stuck_devices if k // per_host == host_index
        )
        host = str(ipaddress.IPv4Address(first_host) + host_index)
        endpoints.append(SimEndpoint(host, port, loaded, rated_w=rated_w, stuck_channels=stuck))
    return endpoints


async def _serve(args: argparse.Namespace) -> None:
    stuck = frozenset(int(k) for k in args.stuck.split(",") if k) if args.stuck else frozenset()
    site = SimModbusSite(
        pdu_site(
            args.devices,
            first_host=args.first_host,
            port=args.port,
            profile=args.profile,
            stuck_devices=stuck,
        )
    )
    await site.start()
    print(f"ready {len(site.endpoints)} endpoints", flush=True)  # the parent waits on this line
    try:
        await asyncio.Event().wait()
    finally:
        await site.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--devices", type=int, required=True)
    parser.add_argument("--first-host", default="127.0.1.1")
    parser.add_argument("--port", type=int, default=15020)
    parser.add_argument("--profile", default="rack_pdu_switched")
    parser.add_argument("--stuck", default="", help="comma-separated 0-based device indexes")
    args = parser.parse_args(argv)
    try:
        asyncio.run(_serve(args))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()

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
    # What the meter reports is kept apart from what the channels physically draw (`power_w`),
    # as a utility meter at the point of interconnection would see it, so a test can make the
    # meter lie: frozen at the values it had (`freeze_meter`), scaled (0.001: it sends kW where
    # its profile says W), or mute (its power registers answer with an exception while the
    # relays still work).
    meter_frozen_w: dict[int, float] | None = None
    meter_scale: float = 1.0
    meter_mute: bool = False
    # Relays that do not do as told: close again `reclose_after_s` after an off (a PDU's own
    # automatic re-close), or take every write and change nothing (`ignore_writes`; its read-back
    # says what the relay really is).
    reclose_after_s: float | None = None
    ignore_writes: bool = False
    # engineering value (register unit) of each control register per channel: the device model
    controls: dict[tuple[str, int], float] = field(default_factory=dict)
    # per channel: (monotonic time of the last write, power drawn just before it)
    _moving: dict[int, tuple[float, float]] = field(default_factory=dict)
    _reclosing: dict[int, float] = field(default_factory=dict)  # channel -> monotonic time
    # a channel's own rating where it differs from rated_w (one PDU feeding several loads)
    channel_rated_w: dict[int, float] = field(default_factory=dict)
    relay_writes: list[tuple[float, int]] = field(default_factory=list)  # (monotonic, channel)

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
        self._reclosing.clear()

    def freeze_meter(self, value_w: float | None = None) -> None:
        """The meter stops moving: at what it reports now, or at `value_w` on every channel."""
        channels = range(1, self.profile.channels + 1)
        self.meter_frozen_w = {c: self.reported_w(c) if value_w is None else value_w
                               for c in channels}  # fmt: skip

    def physical_kw(self) -> float:
        """What the endpoint's channels really draw together (the site meter's view)."""
        return sum(self.power_w(c) for c in range(1, self.profile.channels + 1)) / 1000.0

    def reported_w(self, channel: int) -> float:
        """What the meter says the channel draws."""
        if self.meter_frozen_w is not None:
            return self.meter_frozen_w[channel]
        return self.power_w(channel) * self.meter_scale

    def _reclose_due(self) -> None:
        on_off = self.profile.actions.on_off
        now = time.monotonic()
        for channel, at in list(self._reclosing.items()):
            if now >= at and on_off is not None:
                del self._reclosing[channel]
                self.controls[(on_off.ref, channel)] = float(on_off.on_value)

    def is_on(self, channel: int) -> bool:
        on_off = self.profile.actions.on_off
        if on_off is None:
            return True
        return self.controls[(on_off.ref, channel)] == on_off.on_value

    def power_w(self, channel: int) -> float:
        """What the channel physically draws now: on its way to what its controls ask for."""
        self._reclose_due()
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
        rated_w = self.channel_rated_w.get(channel, self.rated_w)
        if channel in self.stuck_channels:
            return rated_w
        if not self.is_on(channel):
            return 0.0
        setpoint = self.profile.actions.setpoint
        if setpoint is None:
            return rated_w
        value = self.controls[(setpoint.ref, channel)]
        if setpoint.unit == "percent":
            return rated_w * value / 100.0
        return min(rated_w, value if setpoint.unit == "W" else value * 1000.0)

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
        self._reclose_due()
        if set_values is not None and function_code in _WRITE_TABLE:
            return self._on_write(_WRITE_TABLE[function_code], address, list(set_values))
        table = _READ_TABLE.get(function_code)
        if table is not None and self.meter_mute and self._reads_power(table, address, count):
            return ExcCodes.DEVICE_FAILURE
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
                self._set(name, channel, decode(register, words))
        return None

    def _set(self, name: str, channel: int, value: float) -> None:
        on_off = self.profile.actions.on_off
        relay = on_off is not None and name == on_off.ref
        if relay:
            self.relay_writes.append((time.monotonic(), channel))
            if self.ignore_writes:
                return  # taken, and nothing changes
        drawing_w = self.power_w(channel)
        self.controls[(name, channel)] = value
        self._moving[channel] = (time.monotonic(), drawing_w)
        if relay and on_off is not None:
            if value != on_off.on_value and self.reclose_after_s is not None:
                self._reclosing[channel] = time.monotonic() + self.reclose_after_s
            else:
                self._reclosing.pop(channel, None)

    def _reads_power(self, table: Table, address: int, count: int) -> bool:
        power = self.profile.readings.active_power
        if power is None:
            return False
        register = self.profile.register(power.ref)
        first, last = register.address_of(1), register.address_of(self.profile.channels)
        return register.table is table and first < address + count and address <= last

    def _fill_readings(
        self, table: Table, start_address: int, address: int, count: int, registers: list[int]
    ) -> None:
        for name, register, channel in self._measured(table, address, count):
            value = self._measured_value(name, register, channel)
            offset = register.address_of(channel) - start_address
            registers[offset : offset + register.count] = encode(register, value)

    def _fill_bits(self, table: Table, start_register: int, registers: list[int]) -> None:
        # bit tables are packed 16 to a register; start_register is the block's first register
        for name, register, channel in self._measured(table, 0, 1 << 16):
            bit = register.address_of(channel) - start_register * 16
            index, mask = bit // 16, 1 << (bit % 16)
            on = self._measured_value(name, register, channel) > 0
            registers[index] = registers[index] | mask if on else registers[index] & ~mask

    def _measured(self, table: Table, address: int, count: int) -> list[tuple[str, Register, int]]:
        """(name, register, channel) of the readings inside a request: derived ones (power, running)
        and the controls, read back as the device holds them (after a reboot, a re-close or an
        ignored write, not what was last written)."""
        readings = self.profile.readings
        names = {r.ref for r in (readings.active_power, readings.state) if r is not None}
        names |= {name for name, _ in self.controls}
        out = []
        for name in sorted(names):
            register = self.profile.register(name)
            if register.table is not table:
                continue
            for channel in range(1, self.profile.channels + 1):
                first = register.address_of(channel)
                if first + register.count > address and first < address + count:
                    out.append((name, register, channel))
        return out

    def _measured_value(self, name: str, register: Register, channel: int) -> float:
        control = self.controls.get((name, channel))
        if control is not None:
            return control
        power = self.profile.readings.active_power
        if power is not None and register is self.profile.register(power.ref):
            return self.reported_w(channel) / (1.0 if power.unit == "W" else 1000.0)
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


@dataclass
class SimSiteMeter(SimEndpoint):
    """The point-of-interconnection meter (a read-only power analyser profile): it reports what
    the endpoints it feeds physically draw, plus loads no device reports (`other_w`), through
    the same meter faults as any endpoint."""

    feeds: list[SimEndpoint] = field(default_factory=list)
    other_w: float = 0.0

    def power_w(self, channel: int) -> float:
        del channel
        return sum(e.physical_kw() for e in self.feeds) * 1000.0 + self.other_w


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

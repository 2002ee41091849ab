"""The profile-driven Modbus TCP driver: one device = one channel of one unit on one endpoint.

apply() writes the absolute setpoint, reads every written register back (a mismatch raises
VerificationError), then reads measured power once and returns it, so the caller does not read
the device a second time. Power follows a command in the profile's `settle_s` (a relay's meter,
a load controller's ramp): the shell judges a device drawing more than commanded only after that
window (agent/service/devices.py), never on the first reading.
"""

from __future__ import annotations

from adapters.devices.codec import decode, encode
from adapters.devices.modbus_batch import ModbusEndpoint, proves_by_power
from adapters.devices.profile import Profile, Register, load_profile
from adapters.transport.modbus_pool import ModbusPool, ModbusTarget
from agent.config.drivers import ModbusDriverConfig
from agent.errors import DeviceError, DeviceRejectedError, VerificationError
from agent.ports import Capability, Clock, DeviceCommand, DeviceReading, utc_now

__all__ = ["ModbusDriver", "capabilities_of"]


def capabilities_of(profile: Profile) -> frozenset[Capability]:
    caps: set[Capability] = set()
    if profile.actions.on_off is not None:
        caps.add(Capability.ON_OFF)
    setpoint = profile.actions.setpoint
    if setpoint is not None:
        caps.add(Capability.PERCENT if setpoint.unit == "percent" else Capability.POWER_LIMIT)
    if profile.readings.active_power is not None:
        caps.add(Capability.POWER_READING)
    return frozenset(caps)


_CAPABILITIES: dict[int, tuple[Profile, frozenset[Capability]]] = {}


def _capabilities(profile: Profile) -> frozenset[Capability]:
    """capabilities_of, once per profile object (the devices of a site share a few)."""
    known = _CAPABILITIES.get(id(profile))
    if known is None or known[0] is not profile:
        known = _CAPABILITIES[id(profile)] = (profile, capabilities_of(profile))
    return known[1]


class ModbusDriver:
    """Implements agent.ports.DeviceDriver for any device described by a profile."""

    # a site may have tens of thousands of outlets: no per-instance dict
    __slots__ = ("_capabilities", "_channel", "_clock", "_device_id", "_pool", "_profile",
                 "_settle_s", "_target", "batch")  # fmt: skip

    def __init__(
        self,
        device_id: str,
        config: ModbusDriverConfig,
        pool: ModbusPool,
        *,
        profile: Profile | None = None,
        clock: Clock = utc_now,
        endpoint: ModbusEndpoint | None = None,
    ) -> None:
        self._profile = profile or load_profile(config.profile)
        if config.channel > self._profile.channels:
            raise DeviceRejectedError(
                device_id, f"channel {config.channel} > {self._profile.channels} in profile"
            )
        self._device_id = device_id
        self._channel = config.channel
        self._settle_s = (
            self._profile.verify.settle_s if config.settle_s is None else config.settle_s
        )
        self._pool = pool
        self._clock = clock
        self._target = ModbusTarget(
            device_id, config.host, config.port, config.unit_id, config.timeout_s
        )
        self._capabilities = _capabilities(self._profile)
        # the devices sharing this unit of this endpoint, commanded and read together
        self.batch = endpoint
        if endpoint is not None:
            endpoint.add(device_id, self._channel, self.plan)

    @property
    def device_id(self) -> str:
        return self._device_id

    @property
    def capabilities(self) -> frozenset[Capability]:
        return self._capabilities

    @property
    def settle_s(self) -> float:
        return self._settle_s

    async def read(self) -> DeviceReading:
        state = self._profile.readings.state
        power_fault = None
        try:
            power_kw = await self._read_power_kw()
        except DeviceError as exc:
            if state is None:
                raise
            power_kw, power_fault = None, str(exc).split(": ", 1)[-1]  # its relay may answer
        running = None
        if state is not None:
            raw = await self._read_raw(self._profile.register(state.ref))
            running = raw[0] in state.on_values
        return DeviceReading(self._device_id, self._clock(), power_kw=power_kw, running=running,
                             power_fault=power_fault)  # fmt: skip

    async def apply(self, command: DeviceCommand) -> DeviceReading | None:
        """Write, read back, prove by measured power where the command allows; the proving
        measurement (None when nothing could be proven yet: a load switched on ramps up)."""
        writes = self.plan(command)
        if not writes:
            raise DeviceRejectedError(self._device_id, "profile has no actions (read-only device)")
        for register, words in writes:
            await self._pool.write(
                self._target, register.table.value, register.address_of(self._channel), words
            )
        for register, words in writes:
            echoed = await self._read_raw(register)
            if echoed != words:
                raise VerificationError(
                    self._device_id,
                    f"{register.vendor_name} reads back {echoed} after writing {words}",
                )
        power_kw = await self._verify_power(command)
        if power_kw is None:
            return None
        return DeviceReading(self._device_id, self._clock(), power_kw=power_kw)

    def plan(self, command: DeviceCommand) -> list[tuple[Register, list[int]]]:
        """Register writes for an absolute command, setpoint before the run command
        (DeviceRejectedError when the profile cannot carry it)."""
        actions = self._profile.actions
        writes: list[tuple[Register, list[int]]] = []
        if actions.setpoint is not None and (command.on or actions.on_off is None):
            setpoint = actions.setpoint
            value = _setpoint_value(command, setpoint.unit) if command.on else 0.0
            if not setpoint.min_value <= value <= setpoint.max_value and command.on:
                raise DeviceRejectedError(
                    self._device_id,
                    f"setpoint {value} {setpoint.unit} outside "
                    f"[{setpoint.min_value}, {setpoint.max_value}] of the profile",
                )
            register = self._profile.register(setpoint.ref)
            writes.append((register, encode(register, value)))
        if actions.on_off is not None:
            register = self._profile.register(actions.on_off.ref)
            raw = actions.on_off.on_value if command.on else actions.on_off.off_value
            writes.append((register, [raw] if register.table.is_bit else encode(register, raw)))
        return writes

    async def _verify_power(self, command: DeviceCommand) -> float | None:
        """The power measured once the command is written, where the command allows a proof;
        None when there is nothing to prove yet (a load switched on ramps up in its own time).
        A reading still above the command is returned as it is: power takes `settle_s` to
        follow, and the shell judges the device over that window, not on one reading."""
        if not proves_by_power(self._profile, command):
            return None
        return await self._read_power_kw()

    async def _read_power_kw(self) -> float | None:
        reading = self._profile.readings.active_power
        if reading is None:
            return None
        register = self._profile.register(reading.ref)
        value = decode(register, await self._read_raw(register))
        return value / 1000.0 if reading.unit == "W" else value

    async def _read_raw(self, register: Register) -> list[int]:
        return await self._pool.read(
            self._target,
            register.table.value,
            register.address_of(self._channel),
            register.count,
        )


def _setpoint_value(command: DeviceCommand, unit: str) -> float:
    if unit == "percent":
        return command.percent
    return command.kw * 1000.0 if unit == "W" else command.kw

"""Devices that share a Modbus endpoint (a PDU's outlets, a controller's channels), commanded and
read together, as a skilled integrator would script it.

Per batch of commands to one unit: the registers each command writes are merged into runs of
contiguous addresses, each run written in one request (FC15 coils, FC16 registers), split at
the protocol's per-request limits; each run is read back in one request; then the power of every
device that the command can prove is read in as few requests as the register layout allows
(outlet power blocks next to each other: one request for a whole PDU). Verification stays per
device: a read-back that does not match fails only the devices whose words differ, and a request
that fails fails only the devices in its run.

Limits from the Modbus Application Protocol Specification v1.1b3: read coils 2000 bits (6.1),
write multiple coils 1968 bits (6.11), read holding/input registers 125 words (6.3, 6.4), write
multiple registers 123 words (6.12). A profile may declare lower ones for a device that accepts
less (`max_bits_per_request`, `max_registers_per_request`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from adapters.devices.codec import decode
from adapters.devices.profile import Profile, Register
from adapters.transport.modbus_pool import ModbusPool, ModbusTarget
from agent.errors import DeviceError, DeviceRejectedError, VerificationError
from agent.ports import Clock, DeviceCommand, DeviceReading, utc_now

__all__ = ["ModbusEndpoint", "Result", "proves_by_power"]

MAX_BITS_READ, MAX_BITS_WRITE = 2000, 1968
MAX_WORDS_READ, MAX_WORDS_WRITE = 125, 123

Result = DeviceReading | DeviceError | None
Planner = Callable[[DeviceCommand], list[tuple[Register, list[int]]]]


@dataclass(frozen=True, slots=True)
class _Span:
    """Words (or bits) at `address` that belong to the device at position `owner`."""

    address: int
    words: tuple[int, ...]
    owner: int


def runs(spans: Sequence[_Span], limit: int) -> list[list[_Span]]:
    """Spans of contiguous addresses merged, at most `limit` words or bits per run."""
    out: list[list[_Span]] = []
    for span in sorted(spans, key=lambda s: s.address):
        if out:
            run = out[-1]
            end = run[-1].address + len(run[-1].words)
            size = end - run[0].address + len(span.words)
            if span.address == end and size <= limit:
                run.append(span)
                continue
        out.append([span])
    return out


def proves_by_power(profile: Profile, command: DeviceCommand) -> bool:
    """Whether a power reading right after the command says something: an off, a percent or a
    power limit (the shell judges it against the command's kW after the settle window); a
    switch-on proves nothing yet, a load ramps up in its own time."""
    if profile.readings.active_power is None:
        return False
    setpoint = profile.actions.setpoint
    return not command.on or (setpoint is not None and setpoint.unit in ("W", "kW", "percent"))


class ModbusEndpoint:
    """The devices of one profile behind one unit id of one endpoint."""

    def __init__(
        self, pool: ModbusPool, target: ModbusTarget, profile: Profile, clock: Clock = utc_now
    ) -> None:
        self._pool = pool
        self._target = target
        self._profile = profile
        self._clock = clock
        self._channels: dict[str, int] = {}
        self._planners: dict[str, Planner] = {}

    @property
    def target(self) -> ModbusTarget:
        return self._target

    def add(self, device_id: str, channel: int, planner: Planner) -> None:
        """A device on `channel`; `planner` turns its command into register writes."""
        self._channels[device_id] = channel
        self._planners[device_id] = planner

    async def apply_many(self, commands: Sequence[DeviceCommand]) -> list[Result]:
        """Apply each command; per command: the proving reading, None when nothing could be
        proven yet, or the DeviceError that failed it."""
        results: list[Result] = [None] * len(commands)
        by_register: dict[tuple[str, int], tuple[Register, list[_Span]]] = {}
        for k, command in enumerate(commands):
            channel = self._channels[command.device_id]
            try:
                planned = self._planners[command.device_id](command)
            except DeviceError as exc:
                results[k] = exc
                continue
            for register, words in planned:
                key = (register.table.value, register.address)
                spans = by_register.setdefault(key, (register, []))[1]
                spans.append(_Span(register.address_of(channel), tuple(words), k))
        for register, spans in by_register.values():
            limit = self._write_limit(register)
            for run in runs(spans, limit):
                await self._write_run(register, run, results, commands)
        proving = [k for k, c in enumerate(commands)
                   if results[k] is None and proves_by_power(self._profile, c)]  # fmt: skip
        device_ids = [c.device_id for c in commands]
        now = self._clock()
        for k, kw in (await self._read_power(proving, device_ids, results)).items():
            results[k] = DeviceReading(device_ids[k], now, power_kw=kw)
        return results

    async def read_many(
        self, device_ids: Sequence[str], *, with_state: bool = True
    ) -> list[Result]:
        """Power and relay state of each device, the same few requests for all."""
        results: list[Result] = [None] * len(device_ids)
        state = self._profile.readings.state if with_state else None
        power_kw = await self._read_power(list(range(len(device_ids))), device_ids, results)
        # a meter that does not answer while the relays do (a mute meter) is a fault of the
        # reading, not of the device: its relays still switch, and are read below
        power_faults: dict[int, str] = {}
        if state is not None:
            for k, result in enumerate(results):
                if isinstance(result, DeviceError):
                    power_faults[k] = str(result).split(": ", 1)[-1]
                    results[k] = None
        states: dict[int, int] = {}
        if state is not None:
            register = self._profile.register(state.ref)
            spans = [_Span(register.address_of(self._channels[d]), (0,) * register.count, k)
                     for k, d in enumerate(device_ids) if results[k] is None]  # fmt: skip
            for run in runs(spans, self._read_limit(register)):
                words = await self._read_run(register, run, results, device_ids)
                for span in run:
                    if words is not None:
                        offset = span.address - run[0].address
                        states[span.owner] = words[offset]
        now = self._clock()
        for k, device_id in enumerate(device_ids):
            if results[k] is None:
                running = None if state is None or k not in states else (
                    states[k] in state.on_values)  # fmt: skip
                results[k] = DeviceReading(device_id, now, power_kw=power_kw.get(k),
                                           running=running,
                                           power_fault=power_faults.get(k))  # fmt: skip
        return results

    # -- requests ----------------------------------------------------------------------------
    async def _write_run(
        self, register: Register, run: list[_Span], results: list[Result],
        commands: Sequence[DeviceCommand],
    ) -> None:  # fmt: skip
        start = run[0].address
        words = [w for span in run for w in span.words]
        try:
            await self._pool.write(self._target, register.table.value, start, words)
            echoed = await self._pool.read(self._target, register.table.value, start, len(words))
        except DeviceError as exc:
            if isinstance(exc, DeviceRejectedError) and len(run) > 1:
                # the device refused the run: find out which channel, one by one
                for span in run:
                    await self._write_run(register, [span], results, commands)
                return
            for span in run:
                results[span.owner] = _for(exc, commands[span.owner].device_id)
            return
        for span in run:
            offset = span.address - start
            got = echoed[offset : offset + len(span.words)]
            if got != list(span.words) and results[span.owner] is None:
                results[span.owner] = VerificationError(
                    commands[span.owner].device_id,
                    f"{register.vendor_name} reads back {got} after writing {list(span.words)}",
                )

    async def _read_run(
        self, register: Register, run: list[_Span], results: list[Result],
        device_ids: Sequence[str],
    ) -> list[int] | None:  # fmt: skip
        start = run[0].address
        count = run[-1].address + len(run[-1].words) - start
        try:
            return await self._pool.read(self._target, register.table.value, start, count)
        except DeviceError as exc:
            for span in run:
                results[span.owner] = _for(exc, device_ids[span.owner])
            return None

    async def _read_power(
        self, owners: list[int], device_ids: Sequence[str], results: list[Result]
    ) -> dict[int, float]:
        """kW by position, for `owners`; a failed read sets their results to its error."""
        reading = self._profile.readings.active_power
        if reading is None or not owners:
            return {}
        register = self._profile.register(reading.ref)
        spans = [_Span(register.address_of(self._channels[device_ids[k]]),
                       (0,) * register.count, k) for k in owners]  # fmt: skip
        power_kw: dict[int, float] = {}
        for run in runs(spans, self._read_limit(register)):
            words = await self._read_run(register, run, results, device_ids)
            if words is None:
                continue
            for span in run:
                offset = span.address - run[0].address
                value = decode(register, words[offset : offset + register.count])
                kw = value / 1000.0 if reading.unit == "W" else value
                power_kw[span.owner] = kw
        return power_kw

    # -- what the profile allows -------------------------------------------------------------
    def _write_limit(self, register: Register) -> int:
        limits = self._profile.limits
        if register.table.is_bit:
            return min(MAX_BITS_WRITE, limits.max_bits_per_request)
        return min(MAX_WORDS_WRITE, limits.max_registers_per_request)

    def _read_limit(self, register: Register) -> int:
        limits = self._profile.limits
        if register.table.is_bit:
            return min(MAX_BITS_READ, limits.max_bits_per_request)
        return min(MAX_WORDS_READ, limits.max_registers_per_request)


def _for(exc: DeviceError, device_id: str) -> DeviceError:
    """The request's error, said of one device of the run."""
    kind = type(exc)
    try:
        return kind(device_id, str(exc).split(": ", 1)[-1])
    except TypeError:  # an error type with another signature: keep it as it is
        return DeviceRejectedError(device_id, str(exc))

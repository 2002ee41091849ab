"""Shadow mode (`service.mode: shadow`): every device is read, nothing is written.

The service runs as in control (signals, obligations, decide(), the audit, acks), but every
driver it holds is wrapped here, so a write is refused at the driver whatever asks for it: the
cycle, a re-sent command, the shutdown posture, a miner's drift check. The cycle does not ask
(agent.service.cycle records what it would have commanded instead); the wrapper is the guard
that makes "no device was written" true by construction, not by the shell's good behaviour.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from agent.errors import DeviceError, DeviceRejectedError
from agent.ports import Capability, DeviceCommand, DeviceDriver, DeviceReading, EndpointBatch

__all__ = ["REFUSED", "ReadOnlyBatch", "ReadOnlyDriver", "read_only"]

REFUSED = "shadow mode: gridflex writes to no device"


class ReadOnlyBatch:
    """An endpoint's devices read together; every command refused."""

    def __init__(self, batch: EndpointBatch) -> None:
        self._batch = batch

    async def apply_many(
        self, commands: Sequence[DeviceCommand]
    ) -> list[DeviceReading | DeviceError | None]:
        return [DeviceRejectedError(c.device_id, REFUSED) for c in commands]

    async def read_many(
        self, device_ids: Sequence[str], *, with_state: bool = True
    ) -> list[DeviceReading | DeviceError | None]:
        return await self._batch.read_many(device_ids, with_state=with_state)


class ReadOnlyDriver:
    """A driver that reads as the one it wraps and refuses every command."""

    def __init__(self, driver: DeviceDriver, batch: ReadOnlyBatch | None = None) -> None:
        self._driver = driver
        self.batch = batch  # shared by the devices of one endpoint, as the original is

    @property
    def device_id(self) -> str:
        return self._driver.device_id

    @property
    def capabilities(self) -> frozenset[Capability]:
        return self._driver.capabilities

    @property
    def settle_s(self) -> float:
        return self._driver.settle_s

    async def apply(self, command: DeviceCommand) -> DeviceReading | None:
        raise DeviceRejectedError(command.device_id, REFUSED)

    async def read(self) -> DeviceReading:
        return await self._driver.read()


def read_only(drivers: Mapping[str, DeviceDriver]) -> dict[str, DeviceDriver]:
    """Every driver wrapped; the devices of one endpoint keep sharing one (read-only) batch."""
    batches: dict[int, ReadOnlyBatch] = {}
    out: dict[str, DeviceDriver] = {}
    for device_id, driver in drivers.items():
        batch = getattr(driver, "batch", None)
        shared = None
        if batch is not None:
            shared = batches.setdefault(id(batch), ReadOnlyBatch(batch))
        out[device_id] = ReadOnlyDriver(driver, shared)
    return out
